"""Runs a user can trust: honest data splits, portable runs, samples as asked, resumable sweeps
that never train the same options twice, readable files and quiet logs."""

import csv
import importlib
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch

from pyrovae import Config, checkpoint, load_run
from pyrovae.cli import main
from pyrovae.config import ConfigError

R = importlib.import_module("pyrovae.runs")


def _train(data, out, *extra):
    return main(["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
                 "--batch-size", "16", "--val-size", "10", "--eval-k", "3", "--eval-n-test", "5", "--quiet",
                 "--out", str(out), *extra])  # fmt: skip


def _rows(path):
    return list(csv.DictReader(open(path)))


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_data_file):
    return tiny_data_file(tmp_path_factory.mktemp("data"), n=90, classes=3)


# -- honest data ----------------------------------------------------------------------------
def test_the_test_set_is_one_tensor_whatever_the_validation_split_or_classes(tmp_path, tiny_data_file):
    grey = tiny_data_file(tmp_path, n=200, classes=3, binary=False)
    base = dict(dataset="file", data_file=str(grey), batch_size=8)
    tests = [
        R.load_data(Config(**base, **kw)).test.x for kw in ({}, {"classes": [0, 1]}, {"exclude_classes": [2]})
    ]
    assert not R.load_data(Config(**base)).val.x.equal(R.load_data(Config(**base, classes=[0, 1])).val.x)
    assert all(t.equal(tests[0]) for t in tests) and ((tests[0] == 0) | (tests[0] == 1)).all()


def test_mnist_test_set_is_the_same_for_every_validation_size_and_classes(mnist_dir):
    sets = [R.load_data(Config(data_dir=str(mnist_dir), **kw)).test.x
            for kw in ({"val_size": 1000}, {"val_size": 5000}, {"classes": [0, 1, 2]})]  # fmt: skip
    assert sets[0].shape == (10000, 1, 28, 28)
    assert all(s.equal(sets[0]) for s in sets)


def test_a_run_trained_through_pyrovae_data_finds_mnist_in_any_shell(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    monkeypatch.setenv("PYROVAE_DATA", os.path.relpath(mnist_dir))  # even given as a relative path
    run = tmp_path / "run"
    assert main(["train", "--train-size", "256", "--val-size", "100", "--z-dim", "2", "--hidden", "8",
                 "--epochs", "1", "--no-eval", "--quiet", "--out", str(run)]) == 0  # fmt: skip
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(mnist_dir)
    monkeypatch.delenv("PYROVAE_DATA")  # a new shell
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--k", "2", "--n-test", "10", "--quiet"]) == 0
    assert json.loads((run / "eval.json").read_text())["n_images"] == 10000
    # copied to a machine where MNIST lives elsewhere: found again through PYROVAE_DATA, or a clear error
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "data_dir": str(tmp_path / "moved")}))
    assert main(["evaluate", str(run), "--k", "2", "--n-test", "10", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST files missing from") and "--data-dir" in err
    monkeypatch.setenv("PYROVAE_DATA", str(mnist_dir))
    assert load_run(run).data.test.x.equal(R.load_data(Config(data_dir=str(mnist_dir))).test.x)


def test_a_resumed_run_finds_moved_mnist_through_pyrovae_data_as_evaluate_does(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    gone = tmp_path / "gone" / "MNIST" / "raw"
    gone.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").iterdir():
        (gone / f.name).symlink_to(f)
    monkeypatch.delenv("PYROVAE_DATA")
    run = str(tmp_path / "run")
    assert main(["train", "--data-dir", str(tmp_path / "gone"), "--train-size", "256", "--val-size", "100",
                 "--z-dim", "2", "--hidden", "8", "--epochs", "1", "--no-eval", "--quiet", "--out", run]) == 0  # fmt: skip
    shutil.rmtree(tmp_path / "gone")
    resume = ["train", "--out", run, "--resume", "--epochs", "2", "--quiet"]
    assert main(resume) == 2
    assert capsys.readouterr().err.startswith("error: MNIST files missing from")
    monkeypatch.setenv("PYROVAE_DATA", str(mnist_dir))
    assert main(resume) == 0
    assert len(_rows(tmp_path / "run" / "metrics.csv")) == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"] == str(mnist_dir)


# -- samples as asked -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("c") / "run"
    assert _train(data, out, "--conditional", "--classes", "0,1", "--epochs", "1") == 0
    return out


def test_sample_draws_n_images_of_the_trained_classes_in_the_format_asked(
    conditional_run, tmp_path, monkeypatch
):
    P = importlib.import_module("pyrovae.posterior")
    importlib.import_module("pyrovae.inspect_run")  # bound to the real sample_prior, restored after
    drawn, real = [], P.sample_prior
    monkeypatch.setattr(
        P, "sample_prior", lambda vae, n, y=None: drawn.append((n, y.tolist())) or real(vae, n, y)
    )
    assert main(["sample", str(conditional_run), "-n", "5", "-o", str(tmp_path / "s.png")]) == 0
    assert drawn[-1] == (6, [0, 0, 0, 1, 1, 1])  # five rounded up to whole rows of the classes it learned
    assert main(["sample", str(conditional_run), "-o", str(tmp_path / "s.png")]) == 0
    assert drawn[-1][0] == 64 and set(drawn[-1][1]) == {0, 1}
    assert (
        main(["sample", str(conditional_run), "--label", "1", "-n", "3", "-o", str(tmp_path / "x.jpg")]) == 0
    )
    assert drawn[-1] == (3, [1, 1, 1])
    assert (tmp_path / "x.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG, not PNG bytes
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    # the run's own samples.png and inspect's figures draw the trained classes too
    R.finish(load_run(conditional_run), progress=False)
    assert drawn[-1] == (64, [0] * 32 + [1] * 32)
    drawn.clear()
    spy = P.sample_prior
    monkeypatch.setattr(importlib.import_module("pyrovae.inspect_run"), "sample_prior", spy)
    assert main(["inspect", str(conditional_run), "--n", "20", "--k", "2"]) == 0
    assert drawn[0] == (16, [0] * 8 + [1] * 8)


def test_evaluate_refuses_k_0_instead_of_using_the_runs_k(conditional_run):
    run = load_run(conditional_run)
    with pytest.raises(ConfigError, match="positive"):
        R.evaluate_run(run, k=0)
    with pytest.raises(ConfigError, match="seed must be an integer from 0 to 2"):  # not NumPy's ValueError
        R.evaluate_run(run, k=2, seed=-1)


# -- resume ---------------------------------------------------------------------------------
def test_no_eval_is_kept_on_resume_and_eval_asks_for_it(data, tmp_path):
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1", "--no-eval") == 0
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    assert len(_rows(out / "metrics.csv")) == 2 and not (out / "eval.json").exists()
    assert main(["train", "--resume", "--out", str(out), "--eval", "--quiet"]) == 0
    assert json.loads((out / "eval.json").read_text())["k"] == 3


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """``interrupt_after_epoch(n)``: a Ctrl-C (SIGINT) arrives after epoch ``n`` of the next run."""

    def arm(n):
        real = R.fit

        def fit(*a, on_epoch=None, **k):
            def hook(row):
                if on_epoch is not None:
                    on_epoch(row)
                if int(row["epoch"]) == n:
                    os.kill(os.getpid(), signal.SIGINT)

            monkeypatch.setattr(R, "fit", real)  # once
            return real(*a, on_epoch=hook, **k)

        monkeypatch.setattr(R, "fit", fit)

    return arm


def test_ctrl_c_hint_can_be_followed_literally(data, tmp_path, capsys, interrupt_after_epoch):
    out = tmp_path / "run"
    interrupt_after_epoch(1)
    assert _train(data, out, "--epochs", "3") == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: stopped by signal") and "Traceback" not in err
    command = err[err.index("pyrovae train --resume") : -1].split()
    assert command == ["pyrovae", "train", "--resume", "--out", str(out)]
    assert main([*command[1:], "--quiet"]) == 0
    assert [int(r["epoch"]) for r in _rows(out / "metrics.csv")] == [1, 2, 3]


@pytest.mark.parametrize("where", ["load_data", "fit"])
def test_ctrl_c_before_the_first_checkpoint_says_to_run_the_same_command_again(
    data, tmp_path, capsys, monkeypatch, where
):
    """The hint said ``continue with: pyrovae train --resume``, which was then refused: the folder
    held no run (Ctrl-C while loading the data) or a config.json the command refused."""

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, where, ctrl_c)
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1", "--no-eval") == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: stopped by Ctrl-C (nothing was trained: run the same command again)"
    monkeypatch.undo()
    assert _train(data, out, "--epochs", "1", "--no-eval") == 0, capsys.readouterr().err
    assert len(_rows(out / "metrics.csv")) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_last_validation_stops_the_run_before_its_evaluation(
    data, tmp_path, capsys, monkeypatch, sig
):
    """The flag a signal sets was read between steps only: after the last epoch's steps nothing
    read it, and the run went on to be evaluated, exiting 0."""
    R = importlib.import_module("pyrovae.records")
    real = R.epoch_row

    def validate(vae, val, prepare, training, ctx, epoch, *a, **k):
        if epoch + 1 == 2:
            os.kill(os.getpid(), sig)
        return real(vae, val, prepare, training, ctx, epoch, *a, **k)

    monkeypatch.setattr(R, "epoch_row", validate)
    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "2") == 130
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"interrupted: stopped by signal {int(sig)} after epoch 2") and "Traceback" not in err
    )
    assert not (out / "eval.json").exists() and len(_rows(out / "metrics.csv")) == 2
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0  # nothing left but the evaluation
    assert "already complete" in capsys.readouterr().out and (out / "eval.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_evaluation_ends_in_one_interrupted_line(data, tmp_path, sig):
    """Outside training SIGTERM killed the command silently (status 143) where SIGINT said
    ``interrupted:`` and exited 130; run as a process of its own, since an unhandled SIGTERM ends it."""
    import subprocess
    import sys

    out = tmp_path / "run"
    assert _train(data, out, "--epochs", "1", "--no-eval") == 0
    script = ("import os, sys, pyrovae.loaded as L; from pyrovae.cli import main\n"
              f"L.evaluate = lambda *a, **k: os.kill(os.getpid(), {int(sig)}) or os.pause()\n"
              "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script, "evaluate", str(out), "--k", "2", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert res.returncode == 130, res.stderr
    assert (
        res.stderr.strip() == f"interrupted: stopped by {'Ctrl-C' if sig == signal.SIGINT else 'signal 15'}"
    )
    assert not (out / "eval.json").exists()


# -- sweeps ---------------------------------------------------------------------------------
def _sweep(space, out, data, trials, *more):
    return main(["sweep", "--space", str(space), "--trials", str(trials), "--out", str(out), "--dataset", "file",
                 "--data-file", str(data), "--val-size", "10", "--batch-size", "16", "--epochs", "2", "--z-dim",
                 "2", "--hidden", "8", "--eval-k", "3", "--quiet", *more])  # fmt: skip


def test_sweep_trials_train_on_their_own_classes_and_never_twice(data, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    trained, real = [], R.train

    def spy(cfg, out, **k):
        trained.append((cfg.exclude_classes, sorted(set(k["data"].train.y.tolist()))))
        return real(cfg, out, **k)

    monkeypatch.setattr(R, "train", spy)
    space = tmp_path / "space.toml"
    space.write_text("[exclude_classes]\nchoices = [[0], [1]]\n")
    out = tmp_path / "sweep"
    assert _sweep(space, out, data, 4, "--sampler-seed", "1", "--no-prune") == 0
    # each trial's data is its own: the class it excludes is absent (main trained all on trial 0's)
    assert sorted(map(tuple, (t[0] for t in trained))) == [(0,), (1,)]
    for excluded, labels in trained:
        assert labels == [c for c in (0, 1, 2) if c not in excluded]
    # four trials over two choices: two runs trained, the others reuse the finished run of their options
    rows = _rows(out / "trials.csv")
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    by_option = {}
    for r in rows:
        by_option.setdefault(r["exclude_classes"], set()).add((r["run"], r["value"]))
    assert all(len(v) == 1 for v in by_option.values()) and len(by_option) == 2
    # a reused row shows the epochs and ELBO of the run it reused, and says whose it is
    first = {}
    for r in rows:
        source = first.setdefault(r["run"], r)
        assert (
            (r["epochs"], r["best_val_elbo"])
            == (source["epochs"], source["best_val_elbo"])
            == ("2", r["value"])
        )
        said = f"the same options as trial {source['number']}: its run reused" if r is not source else ""
        assert r["reason"] == said


def test_resumed_sweep_draws_new_options_and_names_a_changed_one(data, tmp_path, capsys):
    pytest.importorskip("optuna")
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 1e-3\nhigh = 1e-2\nlog = true\n")
    out = tmp_path / "sweep"
    assert _sweep(space, out, data, 1, "--sampler-seed", "0") == 0
    assert _sweep(space, out, data, 2, "--sampler-seed", "0", "--resume") == 0
    rows = _rows(out / "trials.csv")
    assert len(rows) == 2 and rows[0]["lr"] != rows[1]["lr"]  # main re-ran trial 0's options
    assert _sweep(space, out, data, 3, "--resume", "--epochs", "3") == 2
    assert "--epochs: saved 2, given 3" in capsys.readouterr().err


def test_an_interrupted_sweep_continues_its_trial(
    data, tmp_path, capsys, interrupt_after_epoch, optuna_to_stderr
):
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 1e-3\nhigh = 1e-2\n")
    out = tmp_path / "sweep"
    interrupt_after_epoch(1)
    assert _sweep(space, out, data, 1, "--epochs", "3") == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: sweep in") and "Traceback" not in err and len(err.splitlines()) == 1
    assert f"pyrovae sweep --resume --out {out}" in err
    first = _rows(out / "trials" / "0000" / "metrics.csv")
    assert len(first) == 1
    assert _sweep(space, out, data, 1, "--epochs", "3", "--resume") == 0
    rows = _rows(out / "trials.csv")
    assert [r["state"] for r in rows] == ["INTERRUPTED", "COMPLETE"]
    assert rows[0]["lr"] == rows[1]["lr"] and rows[1]["run"] == "trials/0000"
    metrics = _rows(out / "trials" / "0000" / "metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [1, 2, 3] and metrics[0] == first[0]  # continued, not redone
    assert float(rows[1]["value"]) == max(float(r["val_elbo"]) for r in metrics)
    assert not (out / "trials" / "0001").exists()


# -- everyday comfort -----------------------------------------------------------------------
def test_run_files_respect_the_umask(data, tmp_path):
    old = os.umask(0o027)
    try:
        assert _train(data, tmp_path / "run", "--epochs", "1") == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").iterdir()]
    assert {"checkpoint.pt", "best.pt", "config.json", "metrics.csv", "eval.json", "samples.png"} <= {
        p.name for p in files
    }
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}  # main: 0o600, a temporary file's


def test_progress_bars_stay_out_of_a_log_file(data, tmp_path, capsys):
    from pyrovae import train

    train(Config(dataset="file", data_file=str(data), z_dim=2, hidden=[8], batch_size=8, val_size=10, epochs=2,
                 eval_k=3, eval_n_test=5), tmp_path / "run", progress=True)  # fmt: skip
    out, err = capsys.readouterr()  # captured: not a terminal, as a log file
    assert "epoch 1: train loss" in out and "epoch 2: train loss" in out
    assert "epoch 1/2" not in err and "step/s" not in err and "log p(x), K=3" not in err


def test_a_run_made_by_fit_opens_with_load_run_and_evaluate(data, tmp_path):
    from pyrovae import fit
    from pyrovae.build import build_model

    cfg = Config(dataset="file", data_file=str(data), z_dim=2, hidden=[8], batch_size=16, val_size=10, epochs=1,
                 eval_k=3, eval_n_test=5)  # fmt: skip
    d = R.load_data(cfg)
    vae = fit(build_model(cfg, d.x_shape, d.num_classes), d, tmp_path / "fit", cfg, progress=False)
    run = load_run(tmp_path / "fit")
    for k, v in vae.state_dict().items():
        assert torch.equal(v, run.model.state_dict()[k])
    assert main(["evaluate", str(tmp_path / "fit"), "--quiet"]) == 0
    assert json.loads((tmp_path / "fit" / "eval.json").read_text())["k"] == 3


def test_fit_checks_its_options_before_writing_anything(data, tmp_path):
    from pyrovae import fit
    from pyrovae.build import build_model

    cfg = Config(
        dataset="file", data_file=str(data), z_dim=2, hidden=[8], batch_size=16, val_size=10, epochs=1
    )
    d = R.load_data(cfg)
    for bad, says in [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr": -1}, "lr must be positive"),
    ]:
        with pytest.raises(ConfigError, match=says):
            fit(
                build_model(cfg, d.x_shape),
                d,
                tmp_path / "bad",
                Config(**{**vars(cfg), **bad}),
                progress=False,
            )
        assert not (tmp_path / "bad").exists()


def test_fit_refuses_a_folder_holding_another_run_as_train_does(data, tmp_path):
    from pyrovae import fit
    from pyrovae.build import build_model

    def cfg(**kw):
        return Config(**{**dict(dataset="file", data_file=str(data), hidden=[8], batch_size=16, val_size=10,
                                epochs=1), **kw})  # fmt: skip

    d, out = R.load_data(cfg()), tmp_path / "fit"
    fit(build_model(cfg(z_dim=4), d.x_shape), d, out, cfg(z_dim=4), progress=False)
    with pytest.raises(ConfigError, match="already holds files: continue its run with .*overwrite=True"):
        fit(build_model(cfg(z_dim=8), d.x_shape), d, out, cfg(z_dim=8), progress=False)
    assert load_run(out).model.z_dim == 4  # the run is as it was
    with pytest.raises(ConfigError, match="contradict the saved run \\(z_dim: saved 4, given 8\\)"):
        fit(build_model(cfg(z_dim=8), d.x_shape), d, out, cfg(z_dim=8, epochs=2), resume=True, progress=False)
    fit(build_model(cfg(z_dim=4), d.x_shape), d, out, cfg(z_dim=4, epochs=2), resume=True, progress=False)
    assert len(_rows(out / "metrics.csv")) == 2 and load_run(out).config.epochs == 2
    fit(build_model(cfg(z_dim=8), d.x_shape), d, out, cfg(z_dim=8), overwrite=True, progress=False)
    assert load_run(out).model.z_dim == 8 and len(_rows(out / "metrics.csv")) == 1


def test_a_run_fit_made_of_a_users_components_says_how_to_load_it(data, tmp_path, capsys):
    import math

    from torch import nn

    from pyrovae import VAE, fit

    class LinearDecoder(nn.Module):  # as docs/python-api.md writes it
        def __init__(self, z_dim, x_shape=(1, 8, 8)):
            super().__init__()
            self.x_shape = tuple(x_shape)
            self.linear = nn.Linear(z_dim, math.prod(self.x_shape))

        def forward(self, z, y=None):
            return self.linear(z).reshape(*z.shape[:-1], *self.x_shape)

    cfg = Config(dataset="file", data_file=str(data), z_dim=16, batch_size=16, val_size=10, epochs=1)
    d, out = R.load_data(cfg), tmp_path / "lin"
    vae = fit(VAE(d.x_shape, 16, decoder=LinearDecoder(16)), d, out, cfg, progress=False)
    assert main(["evaluate", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "made by fit() on a model config.json does not describe" in err and "edited" not in err
    again = VAE(d.x_shape, 16, decoder=LinearDecoder(16))  # what the message says to do
    again.load_state_dict(checkpoint.load(out / "best.pt")["model"])
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in vae.state_dict().items())


# -- pyrovae runs ---------------------------------------------------------------------------
def test_runs_marks_a_point_estimate_runs_figure_as_no_elbo_and_sorts_it_last(data, tmp_path, capsys):
    """--guide delta: its validation figure is log p(x, z*), higher than any ELBO of the data, so an
    unmarked column would rank it first by "best val ELBO"."""
    folder = tmp_path / "runs"
    assert _train(data, folder / "vae", "--epochs", "2") == 0
    assert _train(data, folder / "point", "--epochs", "2", "--guide", "delta") == 0
    capsys.readouterr()
    assert main(["runs", str(folder), "--sort", "val"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    point_val = max(float(r["val_elbo"]) for r in _rows(folder / "point" / "metrics.csv"))
    # evaluated, it has no test ELBO, log p(x) or K: "-" said "not evaluated"
    assert rows["point"][3] == f"{point_val:.2f}*" and rows["point"][4:7] == ["n/a", "n/a", "n/a"]
    assert [line.split()[0] for line in lines[1:3]] == ["vae", "point"]
    assert "*: a point-estimate guide (--guide delta)" in lines[-1] and "not an ELBO" in lines[-1]
    assert "no test ELBO or log p(x) (n/a once evaluated)" in lines[-1]


def test_runs_shows_the_validation_elbo_of_best_pt_under_monitor_accuracy(data, tmp_path, capsys):
    """--monitor accuracy picks best.pt by accuracy: the column, which says it is best.pt's, showed
    the best ELBO of metrics.csv, of another epoch."""
    folder = tmp_path / "runs"
    assert _train(data, folder / "m2", "--epochs", "4", "--semi-supervised", "--labeled", "6",
                  "--monitor", "accuracy", "--no-eval") == 0  # fmt: skip
    rows = _rows(folder / "m2" / "metrics.csv")
    epoch = checkpoint.load(folder / "m2" / "best.pt")["state"]["epoch"]
    best_pt_val = float(rows[epoch - 1]["val_elbo"])
    assert best_pt_val < max(float(r["val_elbo"]) for r in rows)  # the case: the ELBO improved after
    capsys.readouterr()
    assert main(["runs", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[3] == f"{best_pt_val:.2f}"


def test_runs_shows_the_alpha_an_m2_run_trained_with(data, tmp_path, capsys):
    """The objective column said ``α=0.1·N/6``, a formula without its N, where training used a number."""
    from pyrovae.semisupervised import default_alpha

    folder = tmp_path / "runs"
    assert (
        _train(data, folder / "m2", "--epochs", "1", "--semi-supervised", "--labeled", "6", "--no-eval") == 0
    )
    assert _train(data, folder / "set", "--epochs", "1", "--semi-supervised", "--labeled", "6", "--no-eval",
                  "--aux-weight", "0.5") == 0  # fmt: skip
    capsys.readouterr()
    assert main(["runs", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    alpha = default_alpha(len(load_run(folder / "m2").data.train), 6)  # as training computes it
    assert lines[1].split()[0] == "m2" and lines[1].endswith(f"y enumerated; α={alpha:g}")
    assert lines[2].split()[0] == "set" and lines[2].endswith("y enumerated; α=0.5")
    assert "N/" not in "\n".join(lines)


def test_runs_marks_test_figures_of_the_last_checkpoint(data, tmp_path, capsys):
    """After ``evaluate --checkpoint last`` the row put checkpoint.pt's test figures beside best.pt's
    validation ELBO, unmarked."""
    folder = tmp_path / "runs"
    assert _train(data, folder / "a", "--epochs", "2", "--no-eval") == 0
    assert main(["evaluate", str(folder / "a"), "--checkpoint", "last", "--k", "3", "--n-test", "5"]) == 0
    capsys.readouterr()
    assert main(["runs", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = lines[1].split()
    assert not row[3].endswith("+") and row[4].endswith("+") and row[5].endswith("+")
    assert "+: test figures of another checkpoint than best.pt" in lines[-1]
    assert main(["evaluate", str(folder / "a"), "--k", "3", "--n-test", "5"]) == 0  # best.pt again: unmarked
    capsys.readouterr()
    assert main(["runs", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "+" not in out.splitlines()[1] and "+:" not in out


def test_runs_marks_a_conditional_runs_figures_as_given_the_label_and_ranks_them_after(
    data, tmp_path, capsys
):
    """A conditional run's ELBO and log p(x) are of p(x | y): the label is given, so they are not
    comparable with an unconditional run's log p(x), and "best first" would mix the two."""
    folder = tmp_path / "runs"
    assert _train(data, folder / "cvae", "--epochs", "2", "--conditional") == 0
    assert _train(data, folder / "vae", "--epochs", "1", "--lr", "1e-5") == 0  # poor, so it would rank last
    capsys.readouterr()
    figures = {
        n: json.loads((folder / n / "eval.json").read_text())["log_likelihood"] for n in ("cvae", "vae")
    }
    assert figures["cvae"] > figures["vae"]  # ranked by the number alone, the conditional run would be first
    assert main(["runs", str(folder), "--sort", "ll"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["vae", "cvae"]
    cvae = lines[2].split()
    assert cvae[5] == f"{figures['cvae']:.2f}^" and cvae[4].endswith("^") and cvae[3].endswith("^")
    assert "^" not in lines[1]
    assert "^: a conditional run (--conditional)" in lines[-1] and "log p(x | y)" in lines[-1]


def test_runs_lists_each_run_with_its_key_figures(data, tmp_path, capsys, interrupt_after_epoch):
    folder = tmp_path / "runs"
    assert _train(data, folder / "a", "--epochs", "2", "--beta", "4") == 0
    assert _train(data, folder / "b", "--epochs", "2", "--lr", "0.02", "--eval-k", "4", "--elbo", "iwae",
                  "--num-particles", "3") == 0  # fmt: skip
    interrupt_after_epoch(1)
    assert _train(data, folder / "group" / "c", "--epochs", "3") == 130
    shutil.copytree(folder / "a", folder / "broken")
    (folder / "broken" / "config.json").write_text("{")
    capsys.readouterr()
    assert main(["runs", str(folder), "--sort", "ll"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0].split(), {line.split()[0]: line for line in lines[1:5]}
    assert header[:3] == ["run", "status", "epochs"] and "log" in header and "K" in header
    assert set(rows) == {"a", "b", "group/c", "broken"}
    for name in ("a", "b"):
        res = json.loads((folder / name / "eval.json").read_text())
        best_val = max(float(r["val_elbo"]) for r in _rows(folder / name / "metrics.csv"))
        assert rows[name].split()[1:7] == ["complete", "2/2", f"{best_val:.2f}", f"{res['elbo']:.2f}",
                                           f"{res['log_likelihood']:.2f}", str(res["k"])]  # fmt: skip
    assert rows["group/c"].split()[1:6] == ["incomplete", "1/3", rows["group/c"].split()[3], "-", "-"]
    assert "unreadable" in rows["broken"]
    assert (
        header[-1] == "objective" and rows["a"].endswith("  trace β=4") and rows["b"].endswith("  iwae k=3")
    )
    assert rows["group/c"].endswith("  trace β=1")
    ll = {n: json.loads((folder / n / "eval.json").read_text())["log_likelihood"] for n in ("a", "b")}
    order = [line.split()[0] for line in lines[1:5]]
    assert order[:2] == sorted(ll, key=ll.get, reverse=True)  # best log p(x) first, unevaluated last
    assert lines[-1].startswith("4 runs in") and "nats per image" in lines[-1]


def test_an_occupied_run_folder_is_refused_before_the_data_is_read(tmp_path, data, capsys, monkeypatch):
    assert _train(data, tmp_path / "run", "--epochs", "1", "--no-eval") == 0
    capsys.readouterr()
    monkeypatch.setattr(R, "load_data", lambda cfg: pytest.fail("data loaded for a refused run"))
    assert main(["train", "--dataset", "file", "--data-file", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err


def test_every_contradicting_option_of_a_resume_is_named_by_its_flag(tmp_path, data, capsys):
    assert _train(data, tmp_path / "run", "--epochs", "1", "--no-eval") == 0
    capsys.readouterr()
    code = main(["train", "--out", str(tmp_path / "run"), "--resume", "--activation", "tanh", "--z-dim", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--activation: saved" in err and "--z-dim: saved" in err, err


def test_a_label_for_an_unconditional_run_names_the_flag(tmp_path, data, capsys):
    assert _train(data, tmp_path / "run", "--epochs", "1") == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "run"), "--label", "1", "-o", str(tmp_path / "s.png")]) == 2
    assert "trained with --conditional" in capsys.readouterr().err
