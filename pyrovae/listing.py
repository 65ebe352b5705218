"""``pyrovae runs DIR``: the runs in a folder (and below it, sweeps' trials included), each with
its key figures, read from the files a run writes (``config.json``, ``metrics.csv``,
``checkpoint.pt``, ``eval.json``) without loading a model.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from . import checkpoint
from .config import Config, ConfigError
from .guides import GUIDES
from .objectives import describe_objective
from .schedules import settled_epoch, settled_rows
from .semisupervised import default_alpha

#: Columns of :func:`table`, with their headers.
COLUMNS = {
    "run": "run",
    "status": "status",
    "epochs": "epochs",
    "val_elbo": "best val ELBO",
    "elbo": "test ELBO",
    "log_likelihood": "log p(x)",
    "k": "K",
    "model": "model",
    "objective": "objective",
}
SORT_KEYS = {"path": None, "elbo": "elbo", "ll": "log_likelihood", "val": "val_elbo"}


def list_runs(folder: str | Path) -> list[dict]:
    """One dict per run directory under ``folder`` (a folder holding ``config.json``), sorted by
    path: ``run`` (its path relative to ``folder``), ``status``, ``epochs`` ("done/asked"),
    ``val_elbo`` (``best.pt``'s validation ELBO: the best, or that of the epoch with the best
    ``monitor``), ``elbo`` and ``log_likelihood`` (test, nats per image, from ``eval.json``),
    ``k`` (importance samples of that log p(x)), ``n_ll_images`` and
    ``model`` (the model variant, then what it says of itself: prior/guide/likelihood and z for a
    VAE) and ``objective`` (what it trains on: the ELBO, its particles, β and its schedule, or the
    objective that reshapes the KL term), ``point`` (a point-estimate guide: ``val_elbo`` is then
    log p(x, z*), not an ELBO, and it has no test ELBO or log p(x)), ``evaluated`` (it has an
    ``eval.json``), ``eval_checkpoint`` (the checkpoint ``eval.json`` tested: ``best``, ``last``
    or a file name) and ``conditional`` (a conditional VAE: its figures bound or estimate
    log p(x | y) given the true label, not log p(x)). Figures a run does not have yet are ``None``.

    ``status`` is ``complete`` (all its epochs), ``stopped early`` (patience), ``incomplete``
    (a checkpoint short of its epochs: interrupted, or training now), ``not started`` (no
    checkpoint) or ``unreadable: ...`` (a damaged ``config.json``).

    :raises ConfigError: when ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; give the folder that holds your runs")
    paths = sorted(p.parent for p in folder.rglob("config.json"))
    return [_describe(p, folder) for p in paths]


def _describe(path: Path, folder: Path) -> dict:
    row = dict.fromkeys(COLUMNS)
    row["run"] = str(path.relative_to(folder)) if path != folder else "."
    try:
        cfg = Config.load(path / "config.json")
    except (ConfigError, OSError, TypeError) as e:
        row["status"] = f"unreadable: {str(e).split(';')[0][:60]}"
        return row
    rows = _metrics(path / "metrics.csv")
    done = len(rows)
    settled = settled_epoch(cfg)
    # best.pt is the first settled epoch with the best monitored figure (--monitor accuracy, say):
    # its validation ELBO is shown, which need not be the best of metrics.csv
    key = "val_elbo" if cfg.monitor == "elbo" else f"val_{cfg.monitor}"
    scored = [r for r in settled_rows(rows, settled) if r.get(key) not in (None, "")]
    vals = [float(r[key]) for r in scored]
    best = scored[max(range(len(vals)), key=vals.__getitem__)] if vals else None
    row["val_elbo"] = float(best["val_elbo"]) if best and best.get("val_elbo") not in (None, "") else None
    guide = GUIDES.get(cfg.guide)
    # a point-estimate guide's validation figure is log p(x, z*), which no ELBO compares with
    row["point"] = bool(getattr(guide, "point_estimate", False))
    row["conditional"] = bool(cfg.conditional)
    row["epochs"] = f"{done}/{cfg.epochs}"
    row["model"], row["objective"] = _model_and_objective(_with_default_alpha(cfg, path / "checkpoint.pt"))
    if not (path / "checkpoint.pt").exists():
        row["status"] = "not started"
    elif done >= cfg.epochs:
        row["status"] = "complete"
    elif cfg.patience and _stopped_early(vals, cfg.patience):
        row["status"] = "stopped early"
    else:
        row["status"] = "incomplete"
    res = _eval(path / "eval.json")
    row["evaluated"] = res is not None
    if res is not None:
        for key in ("elbo", "log_likelihood", "k", "n_ll_images"):
            row[key] = res.get(key)
        row["eval_checkpoint"] = res.get("checkpoint")
    return row


def _model_and_objective(cfg: Config) -> tuple[str, str]:
    """The run's model variant with what its variant says of it (its prior, guide, likelihood and
    z for a VAE), and what it trains on, as its variant says; a variant not registered in this
    process is named alone, its objective in the ELBO's words."""
    from .variants import MODELS

    variant = MODELS.get(cfg.model)
    if variant is None:
        return cfg.model, describe_objective(cfg)
    return f"{cfg.model} {variant.describe(cfg)}", variant.describe_objective(cfg)


def _with_default_alpha(cfg: Config, path: Path) -> Config:
    """``cfg`` with the α an M2 run trained with where it took the default, 0.1·N/labeled, N the
    training images its checkpoint records (before it has one, the formula is shown)."""
    if cfg.model != "semisupervised" or cfg.aux_weight is not None or not cfg.labeled:
        return cfg
    try:
        n = checkpoint.load(path).get("train_images")
    except (checkpoint.CheckpointError, OSError):
        return cfg
    return dataclasses.replace(cfg, aux_weight=default_alpha(n, cfg.labeled)) if isinstance(n, int) else cfg


def _stopped_early(vals: list[float], patience: int) -> bool:
    best = max(range(len(vals)), key=vals.__getitem__) if vals else 0
    return len(vals) - 1 - best >= patience


def _metrics(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []


def _eval(path: Path) -> dict | None:
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) else None


def table(runs: list[dict], folder: str | Path, sort: str = "path") -> str:
    """``runs`` as an aligned text table, best first when sorted by a figure (runs without that
    figure last), with a line saying what the figures are."""
    if not runs:
        return f"no runs in {folder} (a run is a folder holding config.json)"
    key = SORT_KEYS[sort]
    if key is not None:  # log p(x, z*) is no ELBO, log p(x | y) no log p(x): such runs are ranked after
        runs = sorted(runs, key=lambda r: (2, 0) if not _number(r[key]) or r.get("point")
                      else (int(bool(r.get("conditional"))), -r[key]))  # fmt: skip
    cells = [list(COLUMNS.values())]
    for r in runs:
        cells.append([_NONE if _has_none(r, c) else _cell(r[c]) + _mark(r, c) for c in COLUMNS])
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    note = ("figures in nats per image: best validation ELBO from metrics.csv, best.pt's (of the epochs from the "
            "end of a KL warm-up or the capacity's rise); test ELBO and importance-sampled log p(x) with K samples "
            "from eval.json (- : not evaluated)")  # fmt: skip
    if any(r.get("conditional") for r in runs):
        note += ("; ^: a conditional run (--conditional), whose figures bound or estimate log p(x | y) given "
                 "the true label, which no unconditional run's log p(x) compares with: ranked after them")  # fmt: skip
    if any(r.get("eval_checkpoint") not in (None, "best") for r in runs):
        note += ("; +: test figures of another checkpoint than best.pt, whose validation ELBO is shown "
                 "(evaluate --checkpoint last, say; eval.json names it)")  # fmt: skip
    if any(r.get("point") for r in runs):
        note += ("; *: a point-estimate guide (--guide delta), whose validation figure is log p(x, z*) at "
                 f"its code, not an ELBO, and which has no test ELBO or log p(x) ({_NONE} once evaluated)")  # fmt: skip
    return "\n".join([*lines, "", f"{len(runs)} runs in {folder}; {note}"])


#: The cell of a figure an evaluated run cannot have: "-" says "not evaluated".
_NONE = "n/a"


def _has_none(r: dict, column: str) -> bool:
    """An evaluated autoencoder's test ELBO, log p(x) and K: figures it has none of."""
    return bool(r.get("point") and r.get("evaluated")) and column in ("elbo", "log_likelihood", "k")


def _mark(r: dict, column: str) -> str:
    """The mark of a figure that is not what its column's header says."""
    if r[column] is None:
        return ""
    mark = ""
    if column == "val_elbo" and r.get("point"):
        mark += "*"
    if column in ("val_elbo", "elbo", "log_likelihood") and r.get("conditional"):
        mark += "^"
    if column in ("elbo", "log_likelihood") and r.get("eval_checkpoint") not in (None, "best"):
        mark += "+"  # beside best.pt's validation ELBO, of another checkpoint
    return mark


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
