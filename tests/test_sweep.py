"""``pyrovae sweep``: Optuna trials as ordinary runs, the best one tested, resumable, shared by workers."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from pyrovae import load_run  # noqa: E402
from pyrovae.cli import main  # noqa: E402
from pyrovae.evaluate import elbo_terms, log_likelihood  # noqa: E402

SPACE = """
[z_dim]
low = 2
high = 4
[lr]
low = 1e-3
high = 3e-2
log = true
[hidden]
choices = [[8], [6, 6]]
"""


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, tiny_data_file):
    return tiny_data_file(tmp_path_factory.mktemp("data"), n=60, shape=(1, 8, 8))


def _args(space, out, data_file, trials, *more):
    return ["sweep", "--space", str(space), "--trials", str(trials), "--out", str(out), "--dataset", "file",
            "--data-file", str(data_file), "--val-size", "6", "--batch-size", "16", "--epochs", "2",
            "--eval-k", "20", "--quiet", *more]  # fmt: skip


def _rows(out):
    return list(csv.DictReader(open(out / "trials.csv")))


def test_sweep_best_trial_resume(tmp_path, data_file, capsys, monkeypatch):
    import optuna

    evaluators = []  # importances.png says fANOVA: the evaluator must be it, whatever Optuna's default
    importances = optuna.importance.get_param_importances
    monkeypatch.setattr(optuna.importance, "get_param_importances",
                        lambda study, **kw: evaluators.append(kw.get("evaluator")) or importances(study, **kw))  # fmt: skip
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "sweep"
    assert main(_args(space, out, data_file, 4, "--sampler-seed", "0")) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best trial")]
    rows = _rows(out)
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best_row = max(complete, key=lambda r: float(r["value"]))
    best = json.loads((out / "best.json").read_text())
    assert best["trial"] == int(best_row["number"]) and best["value"] == pytest.approx(
        float(best_row["value"])
    )
    run = out / best_row["run"]
    # the value is the run's best validation ELBO, its options those trials.csv lists
    val = [float(r["val_elbo"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert best["value"] == pytest.approx(max(val))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["z_dim"] == int(best_row["z_dim"]) == best["params"]["z_dim"]
    assert cfg["hidden"] == json.loads(best_row["hidden"]) == best["params"]["hidden"]
    assert cfg["lr"] == pytest.approx(float(best_row["lr"]))
    # the best trial, and only it, was evaluated on the test set
    assert best["test"] == json.loads((run / "eval.json").read_text())
    assert best["test"]["elbo"] <= best["test"]["log_likelihood"] + 1
    assert [p.name for p in (out / "trials").iterdir() if (p / "eval.json").exists()] == [run.name]
    assert (out / "trials.png").exists() and (out / "importances.png").exists()
    assert evaluators and all(isinstance(e, optuna.importance.FanovaImportanceEvaluator) for e in evaluators)
    # one line says it all: the best trial, its test figures (those of best.json) and the files
    assert len(said) == 1 and f"best trial {best['trial']} of {out}" in said[0], said
    assert f"test: {best['test']['elbo']:.2f} ELBO, {best['test']['log_likelihood']:.2f} log p(x)" in said[0]
    assert str(out / "trials.png") in said[0]

    # starting it again is refused; --resume continues the same study to 6 trials
    assert main(_args(space, out, data_file, 6)) == 2
    assert main(_args(space, out, data_file, 6, "--resume")) == 0
    again = _rows(out)
    assert [int(r["number"]) for r in again] == list(range(6))
    assert again[:4] == rows[:4]
    # a different space cannot continue it
    space.write_text(SPACE.replace("high = 4", "high = 5"))
    assert main(_args(space, out, data_file, 8, "--resume")) == 2


def test_a_trial_under_a_rising_capacity_is_worth_its_best_pt(tmp_path, data_file):
    """C rising to 30 nats over two epochs makes the validation ELBO worse by design; a trial's
    value is then the best of the epochs trained at C_max, the ELBO of the best.pt it keeps, as
    ``pyrovae runs`` lists it."""
    from pyrovae import checkpoint
    from pyrovae.listing import list_runs

    space = tmp_path / "space.toml"
    space.write_text("[z_dim]\nchoices = [4]\n")
    out = tmp_path / "sweep"
    more = [
        "--epochs",
        "4",
        "--capacity",
        "30",
        "--capacity-epochs",
        "2",
        "--gamma",
        "50",
    ]  # the last --epochs holds
    assert main(_args(space, out, data_file, 1, *more)) == 0
    run = out / _rows(out)[0]["run"]
    val = [float(r["val_elbo"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    best_epoch = checkpoint.load(run / "best.pt")["state"]["epoch"]
    value = json.loads((out / "best.json").read_text())["value"]
    assert val[0] > max(val[1:])  # epoch 1, at C = 15, has the best ELBO, but is no model at C_max
    assert best_epoch >= 2 and value == pytest.approx(val[best_epoch - 1]) == pytest.approx(max(val[1:]))
    listed = {r["run"]: r for r in list_runs(out)}[str(run.relative_to(out))]
    assert listed["val_elbo"] == pytest.approx(value)


def test_objective_validation_log_likelihood(tmp_path, data_file):
    space = tmp_path / "space.toml"
    space.write_text("[z_dim]\nchoices = [2, 3]\n")
    out = tmp_path / "sweep"
    assert main(_args(space, out, data_file, 2, "--objective", "ll", "--no-prune", "--eval-n-test", "4")) == 0
    best = json.loads((out / "best.json").read_text())
    run = load_run(best["run"])
    import pyro

    # log p(x) of the first --eval-n-test validation images with --eval-k samples, seed 0
    x = run.data.val.x[:4]
    pyro.set_rng_seed(0)
    ll = log_likelihood(run.model, x, None, k=20).mean().item()
    assert best["objective"] == "ll" and best["value"] == pytest.approx(ll, abs=1e-4)
    pyro.set_rng_seed(0)
    assert best["value"] != pytest.approx(
        log_likelihood(run.model, run.data.test.x[:4], None, k=20).mean().item()
    )
    elbo = (lambda r, k: (r - k).mean().item())(*elbo_terms(run.model, x))
    assert elbo < best["value"] + 1  # a bound below it


BAD = {
    "unknown name": ("[z_dims]\nlow = 2\nhigh = 4\n", "Did you mean 'z_dim'"),
    "range of a probability": ("[dropout]\nlow = 0.0\nhigh = 1.5\n", "dropout must be a probability"),
    "non-positive integer": ("[z_dim]\nlow = 0\nhigh = 4\n", "z_dim must be a positive integer"),
    "unknown choice": ('[prior]\nchoices = ["normal", "gauss"]\n', "unknown prior 'gauss'"),
    "empty range": ("[lr]\nlow = 0.1\nhigh = 0.01\n", "must be below high"),
    "float bounds for an integer": ("[z_dim]\nlow = 2.0\nhigh = 4\n", "must be integers"),
    "log of zero": ("[weight_decay]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "low > 0"),
    "fixed option": ('[device]\nchoices = ["cpu"]\n', "fixed for the whole sweep"),
    "malformed": ("z_dim = 3\n", "needs a table"),
    "step of zero": ("[lr]\nlow = 1e-4\nhigh = 1e-2\nstep = 0\n", "lr: step must be a positive number"),
    "negative step": ("[z_dim]\nlow = 2\nhigh = 9\nstep = -1\n", "z_dim: step must be a positive integer"),
    "float step of an integer": ("[z_dim]\nlow = 2\nhigh = 9\nstep = 1.5\n", "integer option"),
    "log not a boolean": ('[lr]\nlow = 1e-4\nhigh = 1e-2\nlog = "yes"\n', "log must be true or false"),
    "a word among numbers": ('[z_dim]\nchoices = [2, "x"]\n', "z_dim = 'x' is refused: z_dim takes int"),
    "a number among lists": ("[hidden]\nchoices = [[64], 32]\n", "hidden takes a list of integers"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_refused_before_any_trial(tmp_path, data_file, capsys, case):
    text, message = BAD[case]
    space = tmp_path / "space.toml"
    space.write_text(text)
    out = tmp_path / "sweep"
    assert main(_args(space, out, data_file, 2)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_two_workers_share_one_study(tmp_path, data_file):
    """Two processes on one SQLite study: every trial is run by exactly one of them."""
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "sweep"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    cmd = [sys.executable, "-m", "pyrovae", *_args(space, out, data_file, 6, "--storage", storage)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]  # fmt: skip
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    rows = _rows(out)
    numbers = [int(r["number"]) for r in rows]
    # nothing lost, nothing repeated: trial numbers 0..n-1 once each, each with its own run
    # directory holding the options the study recorded (each worker finishes the trial it began)
    assert numbers == list(range(len(rows))) and 6 <= len(rows) <= 7
    assert all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    for r in rows:
        cfg = json.loads((out / r["run"] / "config.json").read_text())
        assert cfg["z_dim"] == int(r["z_dim"]) and cfg["lr"] == pytest.approx(float(r["lr"]))
    params = {(r["z_dim"], r["lr"], r["hidden"]) for r in rows}
    assert len(params) == len(rows)
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{n:04d}" for n in numbers]


def test_the_largest_sampler_seed_resumes(tmp_path, data_file):
    """A resumed study offsets its sampler's seed by the trials it has; near 2**32 that must wrap,
    as Optuna refuses larger seeds."""
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out, seed = tmp_path / "sweep", str(2**32 - 1)
    assert main(_args(space, out, data_file, 1, "--sampler-seed", seed, "--no-prune")) == 0
    assert main(_args(space, out, data_file, 2, "--sampler-seed", seed, "--no-prune", "--resume")) == 0
    assert [r["state"] for r in _rows(out)] == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_sweep_under_torchrun_is_refused_at_once(tmp_path, data_file, capsys, monkeypatch, rank):
    """torchrun's ranks would each open the same study and folder; one line (from rank 0) says
    how a sweep uses several processes instead, and nothing is written."""
    for name, value in {"WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "sweep"
    assert main(_args(space, out, data_file, 2)) == 2
    err = capsys.readouterr().err
    if rank == "0":
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "not started under torchrun" in err and "--storage" in err
    else:
        assert err == ""
    assert not out.exists()


def test_a_trial_that_fails_to_train_is_recorded_and_the_sweep_goes_on(
    tmp_path, data_file, capsys, monkeypatch, optuna_to_stderr
):
    """lr 1e6 diverges (a TrainingError): that trial is FAIL with its reason, the others go on and
    the best comes from them; if none completes, one error line says why. No traceback, --quiet."""
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nchoices = [1e6, 1e-3]\n")
    out = tmp_path / "sweep"
    assert main(_args(space, out, data_file, 4, "--sampler-seed", "0", "--no-prune")) == 0
    err = capsys.readouterr().err
    rows = _rows(out)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(rows) == 4 and failed and all(float(r["lr"]) == 1e6 for r in failed)
    assert all("non-finite" in r["reason"] for r in failed)
    complete = [r for r in rows if float(r["lr"]) == 1e-3]
    assert all(r["state"] == "COMPLETE" for r in complete)  # the first trained, the others reuse its run
    assert not complete[0]["reason"] and all("its run reused" in r["reason"] for r in complete[1:])
    best = json.loads((out / "best.json").read_text())
    assert best["params"]["lr"] == 1e-3 and best["trials"]["fail"] == len(failed)
    assert "Traceback" not in err
    assert [line.split(" failed")[0] for line in err.strip().splitlines()] == [
        f"warning: trial {r['number']}" for r in failed
    ]

    space.write_text("[lr]\nchoices = [1e6]\n")
    out = tmp_path / "diverges"
    assert main(_args(space, out, data_file, 2, "--no-prune")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no trial of the sweep" in errors[0] and "non-finite" in errors[0]
    assert [r["state"] for r in _rows(out)] == ["FAIL", "FAIL"] and not (out / "best.json").exists()
