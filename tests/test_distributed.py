"""Two CPU processes under torchrun (gloo) train the same parameters as one process on the same
global batches."""

import os
import subprocess
import sys

import pytest
import torch

from pyrovae import checkpoint


def _args(data, out, epochs=2):
    # A point-mass guide and no binarization make every step deterministic, so one process and
    # two can be compared parameter by parameter.
    # gloo on the CPU, also where a GPU is present (tests/test_cuda.py covers CUDA)
    return ["train", "--device", "cpu", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "16",
            "--guide", "delta", "--binarize", "none", "--batch-size", "16", "--val-size", "10",
            "--epochs", str(epochs), "--lr", "0.01", "--out", str(out), "--no-eval", "--quiet",
            "--seed", str(2**32 - 1)]  # the largest seed: rank 1's own seed must wrap  # fmt: skip


# 80 training images: 5 global batches x 2 epochs; or batches of 79 and 1, whose 1 image leaves
# rank 1 an empty share (it adds a zero gradient to the all-reduce)
@pytest.mark.parametrize("batch,steps", [(16, 10), (79, 4)], ids=["even", "last-batch-smaller-than-world"])
def test_two_process_ddp_matches_single_process(tmp_path, tiny_data_file, batch, steps):
    data = tiny_data_file(tmp_path, n=100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    size = ["--batch-size", str(batch)]
    subprocess.run(
        [sys.executable, "-m", "pyrovae", *_args(data, tmp_path / "one"), *size],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyrovae",
         *_args(data, tmp_path / "two"), *size],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("run written to") == 1, ddp.stdout  # only rank 0 speaks
    one = checkpoint.load(tmp_path / "one" / "checkpoint.pt")
    two = checkpoint.load(tmp_path / "two" / "checkpoint.pt")
    assert two["state"]["step"] == one["state"]["step"] == steps
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


def test_more_processes_than_gpus_is_refused_before_any_work(monkeypatch):
    """torchrun with 2 processes on a node with 1 GPU: NCCL cannot put two ranks on one GPU, so
    training on CUDA stops at once with the two ways out; on the CPU it goes ahead."""
    from pyrovae.config import ConfigError
    from pyrovae.distributed import check_devices

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    try:
        check_devices(torch.device("cuda"))
    except ConfigError as e:
        assert "2 processes" in str(e) and "--nproc_per_node=1" in str(e) and "--device cpu" in str(e)
        assert e.option == "device"
    else:
        raise AssertionError("two processes on one GPU were not refused")
    assert check_devices(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert check_devices(torch.device("cuda")) == torch.device("cuda")


def test_two_process_resume_restores_each_ranks_random_streams(tmp_path, tiny_data_file):
    """3 epochs equal 2 epochs and a resume to 3 under torchrun: with a sampling guide and
    dynamic binarization of grey data every rank draws its own noise, and each must resume its own."""
    data = tiny_data_file(tmp_path, n=100, binary=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    noisy = ["--guide", "diag", "--binarize", "dynamic"]

    def torchrun(*args):
        res = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyrovae",
             *args],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]

    torchrun(*_args(data, tmp_path / "whole", epochs=3), *noisy)
    torchrun(*_args(data, tmp_path / "parts", epochs=2), *noisy)
    torchrun("train", "--out", str(tmp_path / "parts"), "--resume", "--epochs", "3", "--quiet")
    whole = checkpoint.load(tmp_path / "whole" / "checkpoint.pt")
    parts = checkpoint.load(tmp_path / "parts" / "checkpoint.pt")
    assert parts["state"]["step"] == whole["state"]["step"] == 15
    for k, v in whole["model"].items():
        assert torch.equal(v, parts["model"][k]), k
    assert len(parts["rng_ranks"]) == 2
    assert not torch.equal(parts["rng_ranks"][0]["noise"], parts["rng_ranks"][1]["noise"])
