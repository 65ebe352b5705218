"""Checkpoints: atomic writes, and truncated or pickled files refused clearly."""

import json
import os

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
