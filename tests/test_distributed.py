"""Two CPU processes under torchrun (gloo) train the same parameters as one process on the same
global batches."""

import os
import subprocess
import sys

import torch

from pyrovae import checkpoint


def _args(data, out, epochs=2):
    # A point-mass guide and no binarization make every step deterministic, so one process and
    # two can be compared parameter by parameter.
    return ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "16",
            "--guide", "delta", "--binarize", "none", "--batch-size", "16", "--val-size", "10",
            "--epochs", str(epochs), "--lr", "0.01", "--out", str(out), "--no-eval", "--quiet"]  # fmt: skip


def test_two_process_ddp_matches_single_process(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "pyrovae", *_args(data, tmp_path / "one")],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyrovae",
         *_args(data, tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("run written to") == 1, ddp.stdout  # only rank 0 speaks
    one = checkpoint.load(tmp_path / "one" / "checkpoint.pt")
    two = checkpoint.load(tmp_path / "two" / "checkpoint.pt")
    assert (
        two["state"]["step"] == one["state"]["step"] == 10
    )  # 80 training images: 5 global batches x 2 epochs
    for k, v in one["model"].items():
        assert torch.allclose(v, two["model"][k], atol=1e-5, rtol=1e-4), k
    # only rank 0 wrote: one config, one metrics file, no temporary leftovers
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "best.pt",
        "checkpoint.pt",
        "config.json",
        "metrics.csv",
    ]


def test_under_torchrun_only_rank_0_reports_an_error(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bad = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyrovae",
         *_args(data, tmp_path / "bad"), "--batch-size", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0
    assert bad.stderr.count("error: --batch-size must be a positive integer") == 1, bad.stderr[-3000:]
    assert not bad.stdout.strip()  # (torchrun itself then reports the failed ranks, with its own traceback)
