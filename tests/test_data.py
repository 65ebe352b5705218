"""Data loading and the refusal of bad data, before any training work is done."""

import shutil

import numpy as np
import pytest
import torch

from pyrovae.cli import main
from pyrovae.data import DataError, data_root, load_array, load_dataset, load_mnist


def _train_args(tmp_path, data, *extra):
    return ["train", "--dataset", "file", "--data-file", str(data), "--epochs", "1", "--z-dim", "2", "--hidden", "8",
            "--batch-size", "8", "--val-size", "5", "--out", str(tmp_path / "r"), "--no-eval", "--quiet", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: torch.full((50, 4), float("nan")), "NaN or infinite"),
        (lambda: torch.rand(50, 4) * 3, "expects [0, 1]"),
        (lambda: torch.rand(1, 4), "expected (N, ...)"),
    ],
)
def test_bad_user_tensors_are_refused_before_training(tmp_path, capsys, make, message):
    path = tmp_path / "x.pt"
    torch.save(make(), path)
    assert main(_train_args(tmp_path, path)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_grey_values_under_bernoulli_need_binarization(tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, np.random.rand(60, 4).astype("float32"))
    assert main(_train_args(tmp_path, path, "--binarize", "none")) == 2
    err = capsys.readouterr().err
    assert "only normalized on {0, 1}" in err and "--binarize dynamic" in err and "cbernoulli" in err
    assert (
        main(_train_args(tmp_path, path, "--binarize", "none", "--likelihood", "cbernoulli", "--overwrite"))
        == 0
    )


def test_npy_with_labels_and_wrong_label_count(tmp_path):
    np.save(tmp_path / "x.npy", np.random.rand(30, 2, 4, 4).astype("float32"))
    np.save(tmp_path / "y.npy", np.arange(30) % 3)
    split = load_array(tmp_path / "x.npy", tmp_path / "y.npy")
    assert split.x.shape == (30, 2, 4, 4) and split.y.tolist()[:4] == [0, 1, 2, 0]
    np.save(tmp_path / "y.npy", np.arange(29))
    with pytest.raises(DataError, match="30 data points but 29 labels"):
        load_array(tmp_path / "x.npy", tmp_path / "y.npy")


def test_labels_that_are_not_whole_numbers_are_refused_not_truncated(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.rand(30, 4).round().astype("float32"))
    np.save(tmp_path / "y.npy", (np.arange(30) % 3).astype("float32"))  # whole numbers in floats: fine
    assert load_array(tmp_path / "x.npy", tmp_path / "y.npy").y.tolist()[:4] == [0, 1, 2, 0]
    np.save(tmp_path / "y.npy", np.arange(30) % 3 + 0.5)
    assert main(_train_args(tmp_path, tmp_path / "x.npy", "--labels-file", str(tmp_path / "y.npy"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds labels that are not whole numbers (0.5 in row 0)" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_data_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "flag")) == (tmp_path / "flag", False)
    assert data_root(None) == (tmp_path / "env", False)
    monkeypatch.delenv("PYROVAE_DATA")
    root, may_download = data_root(None)
    assert may_download and "pyrovae" in str(root)


def test_truncated_mnist_file_is_reported(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    f = raw / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated or corrupted"):
        load_mnist(tmp_path)


def test_mnist_splits(mnist_dir):
    d = load_dataset("mnist", str(mnist_dir), val_size=10000, split_seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    assert d.train.x.shape[1:] == (1, 28, 28) and d.num_classes == 10
    again = load_dataset("mnist", str(mnist_dir), val_size=10000, split_seed=0)
    assert torch.equal(d.val.y, again.val.y)


def test_grey_image_arrays_are_single_channel_images_and_the_run_says_what_was_done(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (60, 8, 8), dtype=np.uint8))
    split = load_array(tmp_path / "x.npy")
    assert split.x.shape == (60, 1, 8, 8) and split.x.dtype == torch.float32 and split.x.max() <= 1
    args = _train_args(tmp_path, tmp_path / "x.npy", "--net", "conv", "--likelihood", "cbernoulli",
                       "--binarize", "none", "--val-size", "100")  # fmt: skip
    args.remove("--quiet")
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("data: x, 48 train / 6 validation / 6 test of shape (1, 8, 8)")
    assert "uint8 values divided by 255" in first and "(N, H, W)" in first and "80/10/10" in first
    assert "val_size 100 capped at a tenth" in first  # asked for 100 of 60 images: said
    assert main([*args, "--overwrite", "--quiet"]) == 0
    assert "data:" not in capsys.readouterr().out  # --quiet: no such line
    np.save(tmp_path / "v.npy", np.random.rand(60, 12).astype("float32"))
    assert load_array(tmp_path / "v.npy").x.shape == (60, 12)  # vectors stay vectors


@pytest.mark.parametrize("binarize", [[], ["--binarize", "none", "--likelihood", "cbernoulli"]])
def test_float64_arrays_are_read_in_the_models_dtype_by_train_and_the_run_commands(
    tmp_path, capsys, binarize
):
    data = tmp_path / "x64.npy"
    np.save(data, np.random.default_rng(0).random((60, 8, 8)))  # NumPy's default dtype, float64
    assert load_array(data).x.dtype == torch.float32
    args = _train_args(tmp_path, data, *binarize)
    args.remove("--quiet")
    assert main(args) == 0
    assert "float64 values converted to float32" in capsys.readouterr().out.splitlines()[0]
    run = str(tmp_path / "r")
    assert main(["evaluate", run, "--data-file", str(data), "--k", "2", "--quiet"]) == 0
    assert (
        main(["score", run, "--data-file", str(data), "-o", str(tmp_path / "s.csv"), "--k", "2", "--quiet"])
        == 0
    )
    assert main(["embed", run, "--data-file", str(data), "-o", str(tmp_path / "e.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "e.npy").shape == (60, 2)
