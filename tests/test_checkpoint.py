"""Checkpoints: atomic writes, and truncated or pickled files refused clearly."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pyrovae import checkpoint
from pyrovae.cli import main


def _train(data, out, epochs, *extra):
    return ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "32",
            "--batch-size", "8", "--val-size", "10", "--epochs", str(epochs), "--out", str(out), "--no-eval",
            "--quiet", *extra]  # fmt: skip


def test_truncated_checkpoint_is_refused_clearly(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path)
    out = tmp_path / "run"
    assert main(_train(data, out, 1)) == 0
    blob = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(blob[: len(blob) // 2])
    assert main(_train(data, out, 2, "--resume")) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and "checkpoint.pt" in err


def test_a_long_load_error_is_cut_between_words():
    msg = "PytorchStreamReader failed reading zip archive: " + "failed finding central directory " * 5
    cause = checkpoint.load_error_cause(msg)
    assert cause.endswith("directory ...") and len(cause) <= 124 and msg.startswith(cause[:-4])


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_object_in_checkpoint_is_refused(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path)
    out = tmp_path / "run"
    assert main(_train(data, out, 1)) == 0
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


def test_options_a_resume_may_change_do_not_make_a_checkpoint_anothers(tmp_path, capsys, tiny_data_file):
    """best.pt records the options it was trained with; those a resume may change (eval_k,
    device) are not taken for a sign of a checkpoint made by another model."""
    data = tiny_data_file(tmp_path)
    out = tmp_path / "run"
    assert main(_train(data, out, 1)) == 0
    assert (
        main(_train(data, out, 1, "--resume", "--eval-k", "2", "--eval-n-test", "3", "--device", "cpu")) == 0
    )
    assert json.loads(torch.load(out / "best.pt", weights_only=True)["config"])["eval_k"] == 1000
    for which in ("best", "last"):
        assert (
            main(["evaluate", str(out), "--k", "2", "--n-test", "3", "--checkpoint", which, "--quiet"]) == 0
        )
    assert "error" not in capsys.readouterr().err


def test_resume_removes_what_a_write_killed_midway_left(tmp_path, tiny_data_file):
    """``kill -9`` during a checkpoint write leaves atomic_write's hidden temporary file, partial;
    resuming the run removes it, and nothing else of the folder: not a write still under way in
    another process (``pyrovae evaluate`` writing eval.json beside a resumed run)."""
    data = tiny_data_file(tmp_path)
    out = tmp_path / "run"
    assert main(_train(data, out, 1)) == 0
    blob = (out / "best.pt").read_bytes()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    writing = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [out / ".best.pt.u8ps2e17.tmp", out / f".checkpoint.pt.{dead.pid}.a_0b9zqx.tmp"]
        for path in stale:
            path.write_bytes(blob[: len(blob) // 3])
        kept = [out / ".notes.tmp", out / "mine.tmp", out / ".best.pt.short.tmp"]  # not atomic_write's
        kept.append(out / f".eval.json.{writing.pid}.k2j4l5m6.tmp")
        for path in kept:
            path.write_text("the user's")
        assert main(_train(data, out, 2, "--resume")) == 0
    finally:
        writing.kill()
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "the user's" for path in kept)
    assert [p.name for p in out.glob(".*.tmp") if p not in kept] == []


def test_the_temporary_file_pattern_is_atomic_writes(tmp_path, monkeypatch):
    """remove_temporaries recognizes the names atomic_write's temporary files really get."""
    names = []
    real = checkpoint.os.replace
    monkeypatch.setattr(checkpoint.os, "replace", lambda src, dst: names.append(src) or real(src, dst))
    for _ in range(20):
        checkpoint.write_text(tmp_path / "eval.json", "{}")
    assert all(checkpoint.TEMPORARY.fullmatch(os.path.basename(n)) for n in names)


def test_a_full_disk_names_the_file_asked_for_and_leaves_no_temporary(
    tmp_path, capsys, monkeypatch, tiny_data_file
):
    """A write that fails midway (no space left) is reported as the file the user knows, not as the
    hidden temporary file that was being written, and that temporary is gone."""
    import errno

    data = tiny_data_file(tmp_path)

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    out = tmp_path / "run"
    args = ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8", "--epochs", "1",
            "--batch-size", "16", "--val-size", "10", "--no-eval", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: cannot use {out}/") and ".pt: No space left on device; free space" in err
    ), err
    assert ".tmp" not in err
    assert not [p for p in tmp_path.rglob(".*.tmp")]
