"""The training loop: exact resume, signals and kill -9, non-finite losses, early stopping."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyrovae import TrainingError, checkpoint, train


def _params(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path, tiny_data_file, tiny_config):
    data = tiny_data_file(tmp_path)
    full = train(tiny_config(data), tmp_path / "a", progress=False, evaluate=False).model
    full_last = checkpoint.load(tmp_path / "a" / "checkpoint.pt")["model"]
    train(tiny_config(data, epochs=1), tmp_path / "b", progress=False, evaluate=False)
    resumed = train(tiny_config(data), tmp_path / "b", resume=True, progress=False, evaluate=False).model
    last = checkpoint.load(tmp_path / "b" / "checkpoint.pt")["model"]
    assert full_last.keys() == last.keys()
    for k in last:
        assert torch.equal(full_last[k], last[k]), k
    for k, v in _params(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    strip = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # noqa: E731 (seconds differ)
    assert strip(a) == strip(b)


def test_nan_loss_stops_at_its_step_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch, tiny_data_file, poison_decoder, tiny_config
):
    """The eager step reads every step's loss, so it names the step (the decoder's Python runs at
    every eager step; tests/test_steps.py poisons the graphed step)."""
    cfg = tiny_config(tiny_data_file(tmp_path), epochs=3, step="eager")
    poison_decoder(11)
    with pytest.raises(TrainingError, match=r"epoch 2, step \d+"):
        train(cfg, tmp_path / "r", progress=False)
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nan_rollback_continues_with_lower_lr(
    tmp_path, monkeypatch, tiny_data_file, poison_decoder, tiny_config
):
    data = tiny_data_file(tmp_path)
    poison_decoder(11)
    train(tiny_config(data, epochs=3, on_nan="rollback", step="eager"), tmp_path / "r", progress=False,
          evaluate=False)  # fmt: skip
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 3 and ck["state"]["rollbacks"] == 1 and ck["state"]["lr_factor"] == 0.5


def test_early_stopping(tmp_path, tiny_data_file, tiny_config):
    cfg = tiny_config(
        tiny_data_file(tmp_path), epochs=30, patience=1, lr=0.5
    )  # a wild lr stops improving soon
    train(cfg, tmp_path / "r", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert len(rows) < 30
    best = max(float(r["val_elbo"]) for r in rows)
    assert float(rows[-2]["val_elbo"]) == best or float(rows[-1]["val_elbo"]) < best


class _Killed(BaseException):
    """A kill -9 in the middle of the epoch's writes: no handler of pyrovae's catches it."""


@pytest.mark.parametrize("killed", ["checkpoint.pt", "metrics.csv"])
def test_a_kill_between_the_last_epochs_writes_is_mended_by_resume(
    tmp_path, tiny_data_file, monkeypatch, capsys, killed
):
    """best.pt, checkpoint.pt and metrics.csv are written one after the other: a kill after the
    last checkpoint left metrics.csv a row short for good, which `pyrovae runs` showed as incomplete."""
    from pyrovae.cli import main

    data, out = tiny_data_file(tmp_path), tmp_path / "run"
    args = ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
            "--batch-size", "16", "--val-size", "12", "--epochs", "2", "--no-eval", "--quiet", "--out", str(out)]  # fmt: skip
    real, writes = checkpoint.atomic_write, []

    def write(path, what):
        writes.append(path.name)
        if writes.count(killed) == 2:  # the last epoch's
            raise _Killed
        real(path, what)

    monkeypatch.setattr(checkpoint, "atomic_write", write)
    with pytest.raises(_Killed):
        main(args)
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    saved = checkpoint.load(out / "checkpoint.pt")["state"]["rows"]
    assert [r["val_elbo"] for r in saved] == [float(r["val_elbo"]) for r in rows]
    best = max(rows, key=lambda r: float(r["val_elbo"]))
    assert checkpoint.load(out / "best.pt")["state"]["epoch"] == int(best["epoch"])
    capsys.readouterr()
    assert main(["runs", str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:3] == ["run", "complete", "2/2"], line


def test_a_resumed_epoch_counts_the_seconds_before_its_interrupt(tmp_path, tiny_data_file, tiny_config):
    """Its metrics.csv row counted only the part after the resume."""
    from pyrovae import build_model, fit
    from pyrovae.fit import Interrupted
    from pyrovae.loaded import load_data

    cfg = tiny_config(tiny_data_file(tmp_path), epochs=1)
    data = load_data(cfg)

    def slow(step, loss):
        time.sleep(0.1)
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="step 4"):
        fit(build_model(cfg, data.x_shape), data, tmp_path / "r", cfg, progress=False, on_step=slow)
    fit(build_model(cfg, data.x_shape), data, tmp_path / "r", cfg, resume=True, progress=False)
    (row,) = csv.DictReader(open(tmp_path / "r" / "metrics.csv"))
    assert float(row["seconds"]) >= 0.4


def _cmd(data, out, epochs=40):
    return [sys.executable, "-m", "pyrovae", "train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2",
            "--hidden", "32", "--batch-size", "8", "--val-size", "10", "--epochs", str(epochs), "--seed", "1",
            "--out", str(out), "--no-eval", "--quiet"]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data_file):
    """The uninterrupted run's final parameters."""
    tmp = tmp_path_factory.mktemp("ref")
    data = tiny_data_file(tmp, n=160)
    subprocess.run(_cmd(data, tmp / "run"), check=True, env=_env(), capture_output=True)
    return data, checkpoint.load(tmp / "run" / "checkpoint.pt")["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _wait_for(path, proc, timeout=60):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.01)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_signal_writes_checkpoint_and_resume_is_exact(tmp_path, reference, sig, code):
    data, final = reference
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(data, out), env=_env(), stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.pt", proc)
    time.sleep(0.05)  # land somewhere inside a later epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "--resume" in err and "Traceback" not in err
    assert f"checkpoint written to {out / 'checkpoint.pt'}: the run can be resumed (continue with: pyrovae train " \
           f"--resume --out {out})" in err  # fmt: skip
    ck = checkpoint.load(out / "checkpoint.pt")
    assert ck["state"]["epoch"] < 40
    subprocess.run(_cmd(data, out) + ["--resume"], check=True, env=_env(), capture_output=True)
    _assert_same(final, checkpoint.load(out / "checkpoint.pt")["model"])


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.7])
def test_kill_9_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, reference, delay):
    data, final = reference
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(data, out), env=_env(), stderr=subprocess.DEVNULL)
    _wait_for(out / "config.json", proc)
    time.sleep(delay)
    proc.kill()  # SIGKILL: no handler runs; checkpoints are written every epoch, atomically
    proc.wait()
    if (out / "checkpoint.pt").exists():
        checkpoint.load(out / "checkpoint.pt")
    subprocess.run(_cmd(data, out) + ["--resume"], check=True, env=_env(), capture_output=True)
    _assert_same(final, checkpoint.load(out / "checkpoint.pt")["model"])


def test_fit_makes_its_folder_and_refuses_grey_validation_images_under_bernoulli(
    tmp_path, tiny_data_file, tiny_config
):
    from pyrovae import DataError, build_model, fit
    from pyrovae.loaded import load_data

    cfg = tiny_config(tiny_data_file(tmp_path, binary=False), epochs=1, binarize="dynamic")
    data = load_data(cfg)  # validation and test binarized once, as `train` does
    grey = data.val.x.clone()
    vae = build_model(cfg, tuple(data.train.x.shape[1:]))
    fit(vae, data, tmp_path / "not" / "yet", cfg, progress=False)
    assert (tmp_path / "not" / "yet" / "best.pt").exists()
    data.val.x = torch.rand_like(grey)  # grey values, as load_dataset gives them
    with pytest.raises(DataError, match="validation images are grey but the likelihood is for binary data"):
        fit(build_model(cfg, tuple(data.train.x.shape[1:])), data, tmp_path / "grey", cfg, progress=False)
    assert not (tmp_path / "grey").exists()


def test_a_float64_model_trains_on_float32_data(tmp_path, tiny_data_file, tiny_config):
    """Data loaded as float32 (MNIST always is) is taken in the model's dtype, as evaluate takes it,
    rather than failing in the first layer with torch's dtype mismatch."""
    from pyrovae import build_model, fit
    from pyrovae.loaded import load_data

    cfg = tiny_config(tiny_data_file(tmp_path), epochs=1)
    data = load_data(cfg)
    assert data.train.x.dtype == torch.float32
    vae = fit(build_model(cfg, data.x_shape).double(), data, tmp_path / "r", cfg, progress=False)
    assert {p.dtype for p in vae.parameters()} == {torch.float64}
    assert data.train.x.dtype == torch.float32  # the caller's data is left as it was
    best = checkpoint.load(tmp_path / "r" / "best.pt")["model"]
    assert {v.dtype for v in best.values() if v.is_floating_point()} == {torch.float64}
