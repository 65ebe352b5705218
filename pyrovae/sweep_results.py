"""A finished sweep's results: ``trials.csv`` (one row per trial), the best trial evaluated on
the test set into ``best.json``, and the figures ``trials.png`` (validation curves, objective per
trial) and ``importances.png`` (Optuna's hyperparameter importances, two options or more)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path

from . import checkpoint
from .config import ConfigError
from .space import OBJECTIVES


def report(study, out: Path, objective: str, progress: bool = True) -> dict:
    """Write ``trials.csv``, evaluate the best trial on the test set, write ``best.json`` and the
    figures; returns the contents of ``best.json``."""
    import optuna

    from .loaded import finish, load_run, write_json

    trials = study.get_trials(deepcopy=False)
    checkpoint.write_text(out / "trials.csv", trials_csv(trials))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        failed = [t for t in trials if "fail_reason" in t.user_attrs]
        why = f" ({len(failed)} failed to train; trial {failed[0].number}: {failed[0].user_attrs['fail_reason']})"
        raise ConfigError(
            f"no trial of the sweep in {out} completed{why if failed else ''}; see trials.csv for their states"
        )
    best = study.best_trial
    run = load_run(out / best.user_attrs["run"])
    test = finish(run, progress=progress)
    result = {
        "objective": objective, "meaning": OBJECTIVES[objective], "value": best.value,
        "trial": best.number, "params": {name: getattr(run.config, name) for name in best.params},
        "run": str(out / best.user_attrs["run"]),
        "config": dataclasses.asdict(run.config), "test": test,
        "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState},
    }  # fmt: skip
    write_json(out / "best.json", result)
    _figures(study, trials, out, objective)
    return result


def trials_csv(trials) -> str:
    """One row per trial: number, state, value (complete trials), epochs reported, best validation
    ELBO, options, run folder (relative to the sweep folder), seconds and a reason: why a trial
    failed to train, or which trial's run it reused (its epochs and ELBO are that run's)."""
    import optuna

    names = sorted({p for t in trials for p in t.params})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", "value", "epochs", "best_val_elbo", *names, "run", "seconds", "reason"])
    by_number = {t.number: t for t in trials}
    for t in trials:
        same = by_number.get(t.user_attrs.get("same_as"))
        curve = (
            same.intermediate_values if same is not None else t.intermediate_values
        )  # a reused run's epochs
        seconds = t.duration.total_seconds() if t.duration is not None else ""
        value = (
            t.value if t.state == optuna.trial.TrialState.COMPLETE else ""
        )  # Optuna gives pruned ones their last report
        state = "INTERRUPTED" if t.state.name == "FAIL" and t.user_attrs.get("interrupted") else t.state.name
        w.writerow([t.number, state, value, len(curve),
                    max(curve.values()) if curve else "", *[t.params.get(n, "") for n in names],
                    t.user_attrs.get("run", ""), seconds, _reason(t)])  # fmt: skip
    return buf.getvalue()


def _reason(trial) -> str:
    """Why a trial failed to train, or whose run it reused (it trained nothing itself)."""
    if "fail_reason" in trial.user_attrs:
        return trial.user_attrs["fail_reason"]
    if "same_as" in trial.user_attrs:
        return f"the same options as trial {trial.user_attrs['same_as']}: its run reused"
    return ""


def _figures(study, trials, out: Path, objective: str) -> None:
    import optuna

    from . import plots

    fig, (curves, values) = plots.plt.subplots(1, 2, figsize=(11, 4))
    best = study.best_trial.number
    for t in trials:
        if not t.intermediate_values:
            continue
        epochs, elbo = zip(*sorted(t.intermediate_values.items()), strict=True)
        style = "x--" if t.state == optuna.trial.TrialState.PRUNED else ".-"  # a 1-epoch trial: a dot
        curves.plot(epochs, elbo, style, lw=2.5 if t.number == best else 1, alpha=1 if t.number == best else 0.6,
                    label=f"trial {t.number} (best)" if t.number == best else None)  # fmt: skip
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation ELBO, nats/image")
    curves.set_title("Validation ELBO per trial (dashed, x: pruned)")
    curves.xaxis.get_major_locator().set_params(integer=True)
    values.xaxis.get_major_locator().set_params(integer=True)
    curves.legend()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and math.isfinite(t.value)]
    values.plot([t.number for t in done], [t.value for t in done], "o", label="trial")
    running = [max(t.value for t in done if t.number <= n.number) for n in done]
    values.plot([t.number for t in done], running, "-", label="best so far")
    values.set_xlabel("trial")
    values.set_ylabel(f"{OBJECTIVES[objective]}, nats/image")
    values.set_title("Objective per complete trial")
    values.legend()
    plots.save(fig, out / "trials.png")
    if len({p for t in done for p in t.params}) >= 2 and len(done) >= 2:
        # named, not Optuna's default (PED-ANOVA since Optuna 4), so the axis label below stays true
        fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=fanova)
        fig, ax = plots.plt.subplots(figsize=(6, 1.5 + 0.4 * len(importances)))
        ax.barh(list(importances)[::-1], list(importances.values())[::-1])
        ax.set_xlabel("importance for the objective (Optuna, fANOVA)")
        ax.set_title("Hyperparameter importances")
        plots.save(fig, out / "importances.png")
