"""Hyperparameter search with Optuna: every trial an ordinary run directory, pruned on the
per-epoch validation ELBO, the best trial evaluated on the test set.

The search space is a TOML file with one table per :class:`~pyrovae.config.Config` option
(format and checks: :mod:`pyrovae.space`), checked before any trial starts.

The study lives in ``OUT/study.db`` (SQLite) unless ``storage`` names another database: several
processes, on one machine or many, pointed at the same storage URL run one study together
(Optuna's distributed mode; each trial is taken by exactly one process). What a finished sweep
writes (``trials.csv``, ``best.json``, its figures) is :mod:`pyrovae.sweep_results`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from . import checkpoint
from .config import Config, ConfigError
from .fit import Interrupted, TrainingError
from .schedules import settled_epoch, settled_rows
from .space import OBJECTIVES, load_space, suggest
from .sweep_results import report


def _storage(url: str, tries: int = 5):
    import time

    import optuna
    import sqlalchemy.exc

    # SQLite serializes writers; wait for the lock instead of failing when workers commit at once
    kw = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kw)
        except sqlalchemy.exc.SQLAlchemyError:
            # workers starting together race to create the schema; the loser finds it made
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def sweep(
    space_file: str | Path,
    trials: int,
    out: str | Path,
    base: Config,
    *,
    objective: str = "elbo",
    resume: bool = False,
    storage: str | None = None,
    study_name: str | None = None,
    sampler_seed: int | None = None,
    prune: bool = True,
    progress: bool = True,
) -> dict:
    """Run (or join, or continue) a study of ``trials`` trials and write its results to ``out``.

    Each trial trains a run in ``out/trials/NNNN`` with :func:`pyrovae.runs.train` (no test
    evaluation); the trial's value is the run's best validation ELBO (``objective="elbo"``) or
    the importance-sampled log p(x) of the first ``eval_n_test`` validation images with
    ``eval_k`` samples (``"ll"``), in nats per image. With ``prune``, Optuna's median pruner
    stops a trial whose validation ELBO after an epoch is below the median of earlier trials'
    at that epoch (after 5 complete trials; never after its last epoch). A trial that fails to
    train (:class:`~pyrovae.fit.TrainingError`: a non-finite loss, say) is recorded as failed,
    with its reason, and the study goes on. The study stops once it holds ``trials`` finished
    trials; a process still training its trial then finishes it.

    At the end the best trial's run is evaluated on the test set (its ``eval.json`` and figures)
    and ``out`` receives ``trials.csv``, ``best.json``, ``trials.png`` and, with two or more
    searched options, ``importances.png``.

    :param storage: an Optuna storage URL shared by several processes (default: a SQLite file
        ``out/study.db``, which ``resume`` continues).
    :returns: the contents of ``best.json``.
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "sweeps run on Optuna, which is not installed: pip install 'pyrovae[sweep]'"
        ) from None
    from .distributed import world_size

    if world_size() > 1:  # every rank would open the same study and sweep folder, racing
        raise ConfigError(
            "a sweep runs each trial in one process and is not started under torchrun; to run trials "
            "in parallel, start several `pyrovae sweep` workers sharing one --storage (docs/operations.md)"
        )
    out = Path(out)
    base.validate()
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}", "objective"
        )
    if trials < 1:
        raise ConfigError(f"trials must be a positive integer, got {trials}", "trials")
    space = load_space(space_file, base)
    if base.tensorboard:
        from .tracking import require_tensorboard

        require_tensorboard()
    setup = {"space": space, "base": dataclasses.asdict(base), "objective": objective}
    _open_sweep(out, setup, resume, storage is not None)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    if not progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name or out.resolve().name, storage=_storage(url), direction="maximize",
        pruner=optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )  # fmt: skip
    # a resumed study's sampler starts afresh: offset its seed so it does not repeat trial 0's draw
    study.sampler = optuna.samplers.TPESampler(
        seed=None if sampler_seed is None else (sampler_seed + len(study.get_trials(deepcopy=False))) % 2**32
    )
    _resume_interrupted(study)
    left = trials - _finished(study)
    if left > 0:
        with _quiet_tracebacks():
            try:
                study.optimize(
                    _Objective(space, base, out, objective, progress), n_trials=left, catch=(ConfigError, TrainingError),
                    callbacks=[lambda study, _: _finished(study) >= trials and study.stop()],
                )  # fmt: skip
            except (Interrupted, KeyboardInterrupt):
                raise Interrupted(
                    f"sweep in {out} stopped by a signal; the trial it was training keeps its checkpoint "
                    "and is continued first when the sweep is resumed"
                ) from None
    return report(study, out, objective, progress)


def _finished(study) -> int:
    """Trials that count towards the study's total: complete, pruned, or failed other than by an
    interruption (an interrupted trial is continued, see :func:`_resume_interrupted`)."""
    import optuna

    S = optuna.trial.TrialState
    return sum(t.state in (S.COMPLETE, S.PRUNED) or (t.state == S.FAIL and not t.user_attrs.get("interrupted"))
               for t in study.get_trials(deepcopy=False))  # fmt: skip


def _resume_interrupted(study) -> None:
    """Queue each interrupted trial not yet continued, with its options and run folder, so the
    next trial taken continues its run from its checkpoint."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs.get("resumes") for t in trials}
    for t in trials:
        if (
            t.state == optuna.trial.TrialState.FAIL
            and t.user_attrs.get("interrupted")
            and t.number not in taken
        ):
            study.enqueue_trial(t.params, user_attrs={"resumes": t.number, "run": t.user_attrs["run"]})


class _quiet_tracebacks:
    """Optuna logs a failed trial's traceback, then its value; an interruption or a trial that
    fails to train (:class:`~pyrovae.fit.TrainingError`) is no failure of the code, and the
    command line says what happened in one line. (A filter on Optuna's handlers: records of its
    child loggers pass no logger's filter but their own.)"""

    def __enter__(self):
        import logging

        self.handlers, self.dropped = list(logging.getLogger("optuna").handlers), False
        for h in self.handlers:
            h.addFilter(self._keep)
        return self

    def _keep(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, Interrupted | KeyboardInterrupt | TrainingError):
            self.dropped = True
            return False
        return not (self.dropped and "failed with value" in record.getMessage())

    def __exit__(self, *exc) -> None:
        for h in self.handlers:
            h.removeFilter(self._keep)


def _open_sweep(out: Path, setup: dict, resume: bool, shared: bool) -> None:
    """Check ``out`` and record the sweep's setup; a resumed or joined sweep must match it."""
    saved = out / "sweep.json"
    if saved.exists():
        if not (resume or shared):
            raise ConfigError(
                f"{out} already holds a sweep; continue it with --resume, or choose another --out", "out"
            )
        old, new = json.loads(saved.read_text()), json.loads(json.dumps(setup))
        if old != new:
            changed = [k for k in new["base"] if old.get("base", {}).get(k) != new["base"][k]]
            raise ConfigError(
                f"{_differences(old, new)} differ from the sweep saved in {saved}; give the same ones "
                "to continue it, or start a new sweep in another --out", changed[0] if changed else "space",
            )  # fmt: skip
        return
    if resume:
        raise ConfigError(
            f"resume: {out} holds no sweep (no sweep.json); start one without --resume", "resume"
        )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(saved, json.dumps(setup, indent=2) + "\n")


def _differences(old: dict, new: dict) -> str:
    """What changed between two sweep setups, named: ``options (z_dim: saved 2, given 3)``."""
    parts = []
    if old.get("objective") != new["objective"]:
        parts.append(f"the objective (saved {old.get('objective')!r}, given {new['objective']!r})")
    base, given = old.get("base", {}), new["base"]
    changed = [
        f"{k}: saved {base.get(k)!r}, given {given.get(k)!r}" for k in given if base.get(k) != given.get(k)
    ]
    if changed:
        parts.append(f"the options ({'; '.join(changed)})")
    space, now = old.get("space", {}), new["space"]
    names = sorted(k for k in set(space) | set(now) if space.get(k) != now.get(k))
    if names:
        parts.append(f"the space's {', '.join(names)}")
    return " and ".join(parts) or "the setup"


class _Objective:
    """One trial: a run of the base config with the trial's options, its value a validation figure."""

    def __init__(self, space: dict, base: Config, out: Path, objective: str, progress: bool) -> None:
        self.space, self.base, self.out, self.objective, self.progress = space, base, out, objective, progress
        self._data: dict = {}

    def __call__(self, trial) -> float:
        import optuna

        from .runs import DATA_OPTIONS, load_data, train

        params = suggest(trial, self.space)
        cfg = Config.from_dict({**dataclasses.asdict(self.base), **params}).validate()
        same = _same_options(trial)
        if same is not None:  # the same options train the same run: reuse it, do not train it again
            trial.set_user_attr("run", same.user_attrs["run"])
            trial.set_user_attr("same_as", same.number)
            if self.progress:
                print(f"trial {trial.number}: {params} as trial {same.number}: its run reused")
            if same.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(f"the same options as trial {same.number}, which was pruned")
            if same.state == optuna.trial.TrialState.FAIL:
                self._failed(
                    trial, f"the same options as trial {same.number}: {same.user_attrs['fail_reason']}"
                )
            return same.value
        name = trial.user_attrs.get("run", f"trials/{trial.number:04d}")  # an interrupted trial's own
        run_dir = self.out / name
        trial.set_user_attr("run", name)  # relative to the sweep folder, so it can move
        key = json.dumps({f: getattr(cfg, f) for f in DATA_OPTIONS})
        if key not in self._data:  # the data set once per sweep, unless the space changes it
            self._data = {key: load_data(cfg)}

        curve: list[dict] = []
        resume = "resumes" in trial.user_attrs and (run_dir / "checkpoint.pt").exists()
        for row in _metrics(run_dir) if resume else []:  # the epochs trained before the interruption
            curve.append(row)
            trial.report(float(row["val_elbo"]), int(row["epoch"]))

        def report(row: dict) -> None:
            curve.append(row)
            trial.report(float(row["val_elbo"]), int(row["epoch"]))
            if int(row["epoch"]) < cfg.epochs and trial.should_prune():  # a finished run is kept
                raise optuna.TrialPruned(
                    f"validation ELBO {float(row['val_elbo']):.2f} at epoch {row['epoch']}"
                )

        if self.progress:
            again = (
                f", continuing trial {trial.user_attrs['resumes']}" if "resumes" in trial.user_attrs else ""
            )
            print(f"trial {trial.number}: {params}{again}")
        try:
            run = train(cfg, run_dir, resume=resume, overwrite=not resume, progress=False, evaluate=False,
                        data=self._data[key], on_epoch=report)  # fmt: skip
        except (Interrupted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)  # its run is resumable: the next resume continues it
            raise
        except TrainingError as e:
            self._failed(trial, str(e))
        if self.objective == "elbo":  # best.pt's: the best of the epochs after any warm-up or rise of C
            settled = settled_epoch(cfg)
            return max(float(r["val_elbo"]) for r in settled_rows(curve, settled))
        return _validation_ll(run)

    @staticmethod
    def _failed(trial, reason: str) -> None:
        """Record why ``trial`` failed to train, say so in one line, and fail it (Optuna catches
        the error and goes on with the next trial)."""
        import sys

        reason = " ".join(reason.splitlines())
        trial.set_user_attr("fail_reason", reason)
        print(
            f"warning: trial {trial.number} failed to train and is recorded as FAIL: {reason}",
            file=sys.stderr,
        )
        raise TrainingError(reason)


def _same_options(trial):
    """An earlier complete, pruned or failed (to train) trial with ``trial``'s options, if any: the
    same options and seed would train the same run again."""
    import optuna

    S = optuna.trial.TrialState
    for t in trial.study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED, S.FAIL)):
        if t.state == S.FAIL and "fail_reason" not in t.user_attrs:
            continue  # an interruption, continued by its own trial
        if t.number != trial.number and t.params == trial.params and "run" in t.user_attrs:
            return t
    return None


def _metrics(run_dir: Path) -> list[dict]:
    if not (run_dir / "metrics.csv").exists():
        return []
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _validation_ll(run) -> float:
    import pyro
    import torch

    from .evaluate import log_likelihood

    cfg, val = run.config, run.data.val.to(run.device)
    n = len(val) if cfg.eval_n_test is None else min(cfg.eval_n_test, len(val))
    x, y = val.x[:n], val.y[:n] if run.model.num_classes else None
    pyro.set_rng_seed(0)
    lls = [log_likelihood(run.model, x[i : i + 100], None if y is None else y[i : i + 100], cfg.eval_k)
           for i in range(0, n, 100)]  # fmt: skip
    return torch.cat(lls).mean().item()
