"""``--tensorboard``: event files in the run directory that hold what metrics.csv holds."""

import csv
import sys

import pytest
import torch

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pyrovae import checkpoint, tracking  # noqa: E402
from pyrovae.cli import main  # noqa: E402


def _train(data, out, *more):
    return main(["train", "--dataset", "file", "--data-file", str(data), "--val-size", "6", "--z-dim", "2",
                 "--hidden", "8", "--batch-size", "16", "--epochs", "2", "--no-eval", "--quiet", "--out", str(out),
                 "--beta-schedule", "linear", "--warmup-epochs", "1.5", *more])  # fmt: skip


def test_tensorboard_events_match_metrics(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=60)  # 48 training images: 3 steps of 16 per epoch
    assert _train(data, tmp_path / "tb", "--tensorboard") == 0
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = list(csv.DictReader(open(tmp_path / "tb" / "metrics.csv")))
    for tag, column in [("val/elbo", "val_elbo"), ("val/kl", "val_kl"), ("val/recon", "val_recon"),
                        ("beta", "beta"), ("lr", "lr"), ("val/active_units", "val_active_units")]:  # fmt: skip
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), tag
    # the mean beta of each epoch's 3 steps, at t = 0, 1/3, 2/3 and 1, 4/3, 5/3 of a 1.5-epoch warm-up
    assert [e.value for e in events.Scalars("beta")] == pytest.approx([2 / 9, 23 / 27], rel=1e-5)
    steps = events.Scalars("train/loss")
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    # per-step losses are per image: the mean of each epoch's three batches of 16 is its train_loss
    for epoch, row in enumerate(rows):
        mean = sum(e.value for e in steps[3 * epoch : 3 * epoch + 3]) / 3
        assert mean == pytest.approx(float(row["train_loss"]), rel=1e-5)
    grids = events.Images("samples")
    assert [g.step for g in grids] == [1, 2] and grids[0].width > 8 * 8
    # tracking leaves the run's random streams alone: the same parameters as an untracked run
    assert _train(data, tmp_path / "plain") == 0
    a, b = (checkpoint.load(tmp_path / p / "checkpoint.pt")["model"] for p in ("tb", "plain"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_loss_is_per_image_so_a_short_last_batch_does_not_jump(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=60)  # 48 training images: batches of 20, 20 and 8
    assert _train(data, tmp_path / "tb", "--tensorboard", "--batch-size", "20") == 0
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    rows = list(csv.DictReader(open(tmp_path / "tb" / "metrics.csv")))
    steps = [e.value for e in events.Scalars("train/loss")]
    assert len(steps) == 6
    for epoch, row in enumerate(rows):
        a, b, c = steps[3 * epoch : 3 * epoch + 3]
        # weighted by batch size, the per-image losses make the epoch's train_loss (nats per image)
        assert (20 * a + 20 * b + 8 * c) / 48 == pytest.approx(float(row["train_loss"]), rel=1e-5)
        assert c == pytest.approx(float(row["train_loss"]), rel=0.5)  # not a sum, 8/20 the others


def test_structured_run_logs_its_own_columns_and_no_prior_samples(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=96)
    out = tmp_path / "sc"
    assert main(["train", "--model", "structured", "--quadrants", "1", "--baseline-epochs", "1", "--epochs", "2",
                 "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8", "--batch-size",
                 "16", "--val-size", "16", "--no-eval", "--quiet", "--tensorboard", "--out", str(out)]) == 0  # fmt: skip
    events = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    logged = events.Scalars("val/baseline_nll")
    assert [e.value for e in logged] == pytest.approx([float(r["val_baseline_nll"]) for r in rows], rel=1e-6)
    # every numeric metrics.csv column is logged, under tracking.tag's name
    for column in rows[0]:
        if column != "epoch" and rows[0][column] != "":
            assert tracking.tag(column) in events.Tags()["scalars"], column
    assert "samples" not in events.Tags()["images"]  # the model draws no image from nothing


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path, n=60)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    assert _train(data, tmp_path / "tb", "--tensorboard") == 2
    assert "pip install 'pyrovae[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()


def test_sweep_trials_log_to_tensorboard(tmp_path, tiny_data_file):
    pytest.importorskip("optuna")
    data = tiny_data_file(tmp_path, n=60)
    space = tmp_path / "space.toml"
    # a continuous range: two trials never draw the same options (which a sweep would not train twice)
    space.write_text("[lr]\nlow = 0.001\nhigh = 0.01\n")
    out = tmp_path / "sweep"
    assert main(["sweep", "--space", str(space), "--trials", "2", "--out", str(out), "--dataset", "file",
                 "--data-file", str(data), "--val-size", "6", "--batch-size", "16", "--epochs", "2",
                 "--eval-k", "5", "--quiet", "--tensorboard", "--no-prune"]) == 0  # fmt: skip
    for trial in ("0000", "0001"):
        events = EventAccumulator(str(out / "trials" / trial))
        events.Reload()
        rows = list(csv.DictReader(open(out / "trials" / trial / "metrics.csv")))
        assert [e.value for e in events.Scalars("val/elbo")] == pytest.approx(
            [float(r["val_elbo"]) for r in rows]
        )
