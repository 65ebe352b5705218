"""The command line, on real MNIST (from $PYROVAE_DATA) and on bad input."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_data_file

from pyrovae.cli import main


def test_one_epoch_on_real_mnist_then_evaluate_sample_reconstruct(tmp_path, mnist_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "tutorial", "--epochs", "1", "--out", str(run), "--data-dir", str(mnist_dir),
            "--eval-k", "20", "--eval-n-test", "100", "--quiet"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["n_images"] == 10000 and res["k"] == 20
    # the IW estimate is the tighter bound on the same images
    assert -200 < res["elbo_ll_images"] < res["log_likelihood"] < 0 and -200 < res["elbo"] < 0
    for f in ["samples.png", "reconstructions.png", "metrics.csv", "best.pt"]:
        assert (run / f).stat().st_size > 0
    first = res
    assert main(["evaluate", str(run), "--k", "20", "--n-test", "100"]) == 0  # as train's own evaluation
    assert json.loads((run / "eval.json").read_text()) == first  # seeded: the figures repeat
    assert main(["evaluate", str(run), "--k", "5", "--n-test", "50"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["k"] == 5 and res["n_ll_images"] == 50 and len(res["kl_per_dim"]) == 50
    out = capsys.readouterr().out
    assert "nats/image" in out and "K=5" in out
    assert main(["sample", str(run), "-o", str(tmp_path / "s.png"), "-n", "16"]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["reconstruct", str(run), "-o", str(tmp_path / "r.png")]) == 0


def test_console_script_reports_user_errors_without_traceback(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--prior", "vampp", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
    assert "error: unknown --prior 'vampp'" in bad.stderr and "Did you mean 'vamp'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--beta", "-1"], "--beta must be >= 0"),
        (["--batch-size", "100000"], "larger than the"),
        (["--device", "cuda:7"], "CUDA"),
        (["--binarize", "none"], None),  # binary data: fine
    ],
)
def test_bad_options_are_refused(tmp_path, capsys, extra, message):
    data = tiny_data_file(tmp_path)
    args = ["train", "--dataset", "file", "--data-file", str(data), "--epochs", "1", "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--val-size", "10", "--out", str(tmp_path / "r"),
            "--no-eval", "--quiet", *extra]  # fmt: skip
    code = main(args)
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_missing_mnist_names_files_and_ways_to_point_at_them(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err
    assert "--data-dir" in err and "PYROVAE_DATA" in err
