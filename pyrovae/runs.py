"""The run layer: ``Config`` → data and model → :func:`~pyrovae.fit.fit` → evaluation → figures,
in a run directory. The command line only parses options and calls this; :mod:`pyrovae.loaded`
reads a run back.

A run directory holds ``config.json``, ``metrics.csv``, ``checkpoint.pt``, ``best.pt``,
``eval.json``, ``samples.png`` and ``reconstructions.png``; :func:`train` writes all of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pyro

from . import checkpoint, distributed
from .build import build_model, resolve_device
from .config import Config, ConfigError
from .data import Dataset, data_root
from .evaluate import summary
from .fit import EpochHook, fit
from .loaded import (  # a run read back lived here: its names stay importable from this module
    EVAL_BINARIZE_SEED,  # noqa: F401
    Run,
    _moved_mnist,
    default_dtype,
    evaluate_run,  # noqa: F401
    finish,
    load_data,
    load_run,  # noqa: F401
    saved_dtype,
    write_json,  # noqa: F401
)

#: Options that may change when a run is resumed; every other option must match the saved one.
RESUMABLE = {"epochs", "patience", "device", "deterministic", "eval_k", "eval_n_test", "data_dir", "data_file",
             "labels_file", "on_nan", "step", "tensorboard"}  # fmt: skip
#: Options :func:`load_data` reads: runs that agree on them train and validate on the same data.
DATA_OPTIONS = ("dataset", "data_dir", "data_file", "labels_file", "val_size", "train_size", "split_seed",
                "classes", "exclude_classes", "semi_supervised", "labeled", "binarize", "likelihood",
                "batch_size")  # fmt: skip
RUN_FILES = ["config.json", "metrics.csv", "checkpoint.pt", "best.pt", "eval.json", "samples.png",
             "reconstructions.png"]  # fmt: skip
#: Files other commands write into a run about its model (``disentanglement``); ``inspect``'s
#: ``figures/`` goes with them, as far as its ``index.md`` names its files.
DESCRIBING_FILES = ["disentanglement.json", "traversal.png"]


# -- the run directory ----------------------------------------------------------------------
def resumed_config(out: Path, given: dict) -> Config:
    """The saved config of the run in ``out`` with ``given`` options on top; refuses options that
    contradict the saved run (only those in :data:`RESUMABLE` may change)."""
    if not (out / "config.json").exists():
        raise ConfigError(f"resume: {out} holds no run (no config.json); start a new run instead", "resume")
    saved = dataclasses.asdict(Config.load(out / "config.json"))
    clash = {k: (saved[k], v) for k, v in given.items() if k not in RESUMABLE and saved.get(k) != v}
    if "prior" in clash and Config.from_dict({**saved, "prior": given["prior"]}).prior_family == \
            Config.from_dict(saved).prior_family:  # fmt: skip
        del clash["prior"]  # "auto" and the family it stands for build the same prior
        given = {k: v for k, v in given.items() if k != "prior"}
    if clash:
        detail = ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in clash.items())
        err = ConfigError(
            f"resume with options that contradict the saved run ({detail}); drop them to continue the "
            "run as configured, or start a new run", next(iter(clash)),
        )  # fmt: skip
        err.options = list(clash)  # each named by its flag on the command line
        raise err
    return Config.from_dict({**saved, **given})


def _open_run_dir(out: Path, cfg: Config, resume: bool, overwrite: bool, saved: dict | None) -> bool:
    """Check and prepare ``out`` (``saved``: its checkpoint, when resumed); returns whether it is a
    fresh run (so a failed start can be cleaned up)."""
    if resume:
        resumed_config(out, dataclasses.asdict(cfg))
        trained = saved["state"]["epoch"] if saved else 0
        if trained > cfg.epochs:  # else its config.json would claim fewer epochs than its model had
            raise ConfigError(
                f"resume: epochs {cfg.epochs} is fewer than the {trained} the run in {out} has trained; ask for "
                f"at least {trained}, or start a new run", "epochs",
            )  # fmt: skip
        checkpoint.write_text(out / "config.json", cfg.to_json())  # resumable options may change
        return False
    _refuse_occupied(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _remove_run_files(out)
    checkpoint.write_text(out / "config.json", cfg.to_json())
    return True


def refuse_resume_and_overwrite(resume: bool, overwrite: bool) -> None:
    """Refuse both at once: one keeps the run in the folder, the other deletes it."""
    if resume and overwrite:
        raise ConfigError(
            "--resume (resume=True) continues the run in the folder and --overwrite (overwrite=True) "
            "replaces it: give one of them"
        )


def refuse_lost_checkpoint(out: Path) -> None:
    """Refuse to resume a run whose ``checkpoint.pt`` is gone while its ``best.pt`` and trained
    epochs (``metrics.csv``, written after ``checkpoint.pt``) are there: resuming would silently
    train it anew from epoch 0 over that ``best.pt``. A ``best.pt`` without ``metrics.csv`` is the
    first epoch's writes cut short, and resumes from scratch as a ``config.json`` alone does."""
    if (
        all((out / name).exists() for name in ("best.pt", "metrics.csv"))
        and not (out / "checkpoint.pt").exists()
    ):
        raise checkpoint.CheckpointError(
            f"resume: {out} holds no checkpoint.pt (its best.pt can still be evaluated or sampled: "
            "--checkpoint best); the run cannot be resumed without checkpoint.pt, so train it again "
            "with --overwrite (overwrite=True)"
        )


def _refuse_occupied(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out} already holds files: continue its run with --resume (resume=True in Python) or "
            "replace it with --overwrite (overwrite=True)", "out",
        )  # fmt: skip


def _remove_run_files(out: Path) -> None:
    """The files a run writes, TensorBoard's event files included, and those other commands wrote
    into it about its model (``inspect``'s figures, ``disentanglement``'s); nothing else of the folder."""
    for name in RUN_FILES + DESCRIBING_FILES:
        (out / name).unlink(missing_ok=True)
    for events in out.glob("events.out.tfevents.*"):
        events.unlink()
    figures = out / "figures"
    if (figures / "index.md").is_file():  # inspect's: it names each figure it wrote
        for name in re.findall(r"^!\[[^\]]*\]\(([^)/.][^)/]*)\)$", (figures / "index.md").read_text(), re.M):
            (figures / name).unlink(missing_ok=True)
        (figures / "index.md").unlink()
        if not any(figures.iterdir()):  # files of the user's own are kept, and the folder with them
            figures.rmdir()


def _clean_failed_start(out: Path) -> None:
    """Remove what a run that never finished an epoch wrote, so it can simply be started again."""
    if (out / "checkpoint.pt").exists():
        return
    _remove_run_files(out)
    if out.exists() and not any(out.iterdir()):
        out.rmdir()


# -- train ----------------------------------------------------------------------------------
def train(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool | None = None,
    data: Dataset | None = None,
    on_epoch: EpochHook | None = None,
) -> Run:
    """Train the VAE ``cfg`` describes and write its run directory ``out``: the same files as
    ``pyrovae train`` (config, metrics, checkpoints, then ``eval.json`` and the sample and
    reconstruction figures unless ``evaluate`` is false; by default a new run is evaluated and a
    resumed one as it was started).

    Everything is checked before ``out`` is touched, and a run that fails before its first
    checkpoint leaves nothing behind. With ``resume`` the run continues from its checkpoint; a
    run with nothing left to train (all its epochs, or stopped early) is not trained, and keeps
    the results of its ``eval.json`` when that is newer than ``best.pt`` and made at the run's
    ``eval_k`` and ``eval_n_test`` (``run.complete`` is then true; :func:`evaluate_run`, or
    ``pyrovae evaluate``, recomputes them).

    With ``cfg.tensorboard`` the run also writes TensorBoard event files to ``out`` (see
    :mod:`pyrovae.tracking`).

    :param on_epoch: called after each epoch with its ``metrics.csv`` row (see
        :data:`pyrovae.fit.EpochHook`); an exception it raises stops training there.
    :returns: the :class:`Run`: its model holds the best validation ELBO's parameters (in eval
        mode); ``results`` holds the test figures of ``eval.json`` when evaluated.
    """
    out = Path(out)
    cfg.validate()
    refuse_resume_and_overwrite(resume, overwrite)
    if resume:
        refuse_lost_checkpoint(out)
    before = Config.load(out / "config.json") if resume and (out / "config.json").exists() else None
    if before is not None and cfg.data_dir == before.data_dir:  # not given anew: found as load_run finds it,
        cfg.data_dir = _moved_mnist(cfg)  # in $PYROVAE_DATA where the saved folder lost MNIST
    for name in ("data_dir", "data_file", "labels_file"):  # so the run can be used from any folder
        if getattr(cfg, name):
            setattr(cfg, name, str(Path(getattr(cfg, name)).resolve()))
    if cfg.dataset == "mnist" and not cfg.data_dir and os.environ.get("PYROVAE_DATA"):
        cfg.data_dir = str(data_root()[0].resolve())  # stored, so a shell without the variable finds it
    rank0 = distributed.rank() == 0  # under torchrun only rank 0 writes files
    distributed.check_devices(resolve_device(cfg.device))
    if rank0 and not resume:
        _refuse_occupied(out, overwrite)  # before the data is loaded
    saved = checkpoint.load(out / "checkpoint.pt") if resume and (out / "checkpoint.pt").exists() else None
    with default_dtype(saved_dtype(saved["model"]) if saved else None):  # a float64 run resumes as float64
        data = data if data is not None else load_data(cfg)
        if progress and rank0:
            print(data.describe())
        pyro.set_rng_seed(cfg.seed)  # the model's initial parameters
        vae = build_model(cfg, data.x_shape, data.num_classes)
    if cfg.init_bias and hasattr(vae, "init_output_bias"):  # optional for a model variant
        vae.init_output_bias(data.train.x.mean(0))
    board = None
    if cfg.tensorboard and rank0:
        from .tracking import require_tensorboard

        require_tensorboard()  # before out is touched
    fresh = _open_run_dir(out, cfg, resume, overwrite, saved) if rank0 else False
    complete = _trained_epochs(saved, cfg) if resume else None
    if evaluate is None:  # a resumed run keeps the choice it was started with (--no-eval)
        evaluate = saved.get("evaluate", True) if saved else True
    hooks = [on_epoch]
    if cfg.tensorboard and rank0:
        from .tracking import TensorBoard

        board = TensorBoard(out, vae)
        hooks.append(board.on_epoch)
    try:
        vae = fit(vae, data, out, cfg, resume=resume, progress=progress, on_epoch=_chain(hooks),
                  on_step=board.on_step if board else None, meta={"evaluate": evaluate, "made_by": "train"})  # fmt: skip
    except BaseException:  # Ctrl-C before the first checkpoint too: the same command can run again
        if fresh:
            _clean_failed_start(out)
        raise
    finally:
        if board is not None:
            board.close()
    run = Run(out, cfg, vae.eval(), data, complete=complete is not None)
    kept = _current_results(run) if complete is not None and evaluate else None
    if complete is not None and progress and rank0:
        if kept is not None:
            then = "kept the results of eval.json, which is newer than best.pt (`pyrovae evaluate` recomputes them)"
        else:
            then = "evaluating best.pt" if evaluate else "not evaluated (no evaluation asked for)"
        print(f"{out} is already complete ({complete}): nothing to train; {then}")
    if kept is not None:
        run.results, run.results_kept = kept, True
    elif evaluate and rank0:
        run.results = finish(run, progress=progress)
    if run.results is not None and progress and rank0:
        print(summary(run.results))
    return run


def _chain(hooks: list) -> EpochHook | None:
    hooks = [h for h in hooks if h is not None]
    if not hooks:
        return None

    def call(row: dict) -> None:
        for h in hooks[::-1]:  # tracking first, so a pruned trial's last epoch is logged too
            h(row)

    return call


def _trained_epochs(saved: dict | None, cfg: Config) -> str | None:
    """How a run ended, if its checkpoint ``saved`` leaves nothing to train under ``cfg``: all its
    epochs, or stopped early; ``None`` when there is training left (or no checkpoint)."""
    if saved is None:
        return None
    state = saved["state"]
    if state["epoch"] >= cfg.epochs:
        return f"{state['epoch']} of {cfg.epochs} epochs"
    if cfg.patience and state["bad_epochs"] >= cfg.patience:
        return f"stopped early after {state['epoch']} epochs"
    return None


def _current_results(run: Run) -> dict | None:
    """``eval.json`` of a complete run when it still holds: written after ``best.pt``, of the best
    checkpoint with the default seed, at the run's ``eval_k`` and ``eval_n_test``, with its figures
    present. ``None`` when the run must be evaluated again."""
    path, cfg = run.path, run.config
    files = [path / name for name in ("eval.json", "best.pt", "samples.png", "reconstructions.png")]
    if not all(f.exists() for f in files):
        return None
    if files[0].stat().st_mtime_ns < files[1].stat().st_mtime_ns:
        return None  # the checkpoint changed since
    try:
        res = json.loads(files[0].read_text())
    except ValueError:
        return None
    n_test = len(run.data.test) if cfg.eval_n_test is None else min(cfg.eval_n_test, len(run.data.test))
    expected = {"checkpoint": "best", "seed": 0, "k": cfg.eval_k, "n_ll_images": n_test}
    if any(res.get(key, value) != value for key, value in expected.items()) or "checkpoint" not in res:
        return None
    return res
