"""Faults during training: signals, kill -9 at any moment, corrupted and pickled checkpoints."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_data_file

from pyrovae import checkpoint
from pyrovae.cli import main


def _cmd(data, out, epochs=40):
    return [sys.executable, "-m", "pyrovae", "train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2",
            "--hidden", "32", "--batch-size", "8", "--val-size", "10", "--epochs", str(epochs), "--seed", "1",
            "--out", str(out), "--no-eval", "--quiet"]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
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


def test_truncated_checkpoint_is_refused_clearly(tmp_path, capsys):
    data = tiny_data_file(tmp_path)
    out = tmp_path / "run"
    assert main(_cmd(data, out, epochs=1)[3:]) == 0
    blob = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    assert main(_cmd(data, out, epochs=2)[3:] + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and "checkpoint.pt" in err


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_object_in_checkpoint_is_refused(tmp_path, capsys):
    data = tiny_data_file(tmp_path)
    out = tmp_path / "run"
    assert main(_cmd(data, out, epochs=1)[3:]) == 0
    ck = torch.load(out / "best.pt", weights_only=True)
    ck["payload"] = Evil()
    torch.save(ck, out / "best.pt")
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects" in err


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save({"model": {"w": torch.ones(2)}}, path)

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.atomic_write(path, broken)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
