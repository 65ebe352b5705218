"""The option-coverage matrix: every option of ``pyrovae train`` trains through the command line,
resumes to exactly the uninterrupted run, and is evaluated with honest numbers.

A new :class:`~pyrovae.config.Config` field fails :func:`test_every_option_is_in_the_matrix`
until it is added to :data:`MATRIX` (with the flags that exercise it) or to :data:`ELSEWHERE`
(with the test that does).
"""

import csv
import dataclasses
import json
import math

import pytest
import torch

from pyrovae import PRIORS, checkpoint
from pyrovae.cli import main
from pyrovae.config import Config

COND_PRIORS = [p for p, cls in PRIORS.items() if getattr(cls, "conditionable", True)]

#: option -> cases; each case is the extra flags of one run (2 epochs on a tiny labelled file)
MATRIX: dict[str, list[list[str]]] = {
    "binarize": [["--binarize", "none"], ["--binarize", "dynamic"]],
    "step": [["--step", "graphed"], ["--step", "compiled"], ["--step", "eager"]],
    "train_size": [["--train-size", "30"]],
    "split_seed": [["--split-seed", "1"]],
    "classes": [
        ["--classes", "0,2"],
        ["--classes", "1", "--conditional", "--prior", "conditional", "--batch-size", "8"],
    ],
    "exclude_classes": [["--exclude-classes", "1"]],
    "model": [["--model", "hierarchical"], ["--model", "hierarchical", "--elbo", "meanfield", "--beta", "2"]],
    "z_dim": [["--z-dim", "3"]],
    "hidden": [["--hidden", "8", "6"]],
    "activation": [["--activation", "tanh"]],
    "dropout": [
        ["--dropout", "0.5"],
        ["--dropout", "0.3", "--net", "conv", "--conditional"],
        ["--dropout", "0.3", "--conditional"],
    ],
    "guide_scale": [["--guide-scale", "exp"]],
    "components": [["--prior", "mixture", "--components", "2"]],
    "pseudo_inputs": [["--prior", "vamp", "--pseudo-inputs", "3"]],
    "flow_layers": [["--prior", "flow", "--flow-layers", "1"], ["--guide", "iaf", "--flow-layers", "1"]],
    "likelihood_scale": [["--likelihood", "normal", "--likelihood-scale", "0.3"]],
    "conditional": [["--conditional", "--prior", p] for p in COND_PRIORS],
    "label_layers": [
        ["--conditional", "--label-layers", "input"],  # with --prior auto: the class-wise VampPrior
        ["--conditional", "--label-layers", "every", "--net", "conv"],
        ["--conditional", "--guide", "iaf"],  # --prior auto with a guide that cannot score any z
    ],
    "init_bias": [["--no-init-bias"]],
    "semi_supervised": [
        ["--semi-supervised", "--labeled", "6"],
        ["--semi-supervised", "--labeled", "6", "--num-particles", "2", "--beta", "2", "--net", "conv"],
    ],  # fmt: skip
    "labeled": [["--semi-supervised", "--labeled", "42"]],
    "aux_weight": [["--semi-supervised", "--labeled", "9", "--aux-weight", "0"]],
    "labeled_batches": [["--semi-supervised", "--labeled", "12", "--labeled-batches", "separate"]],
    "baseline_epochs": [["--model", "structured", "--quadrants", "1", "--baseline-epochs", "3"]],
    "quadrants": [
        ["--model", "structured", "--quadrants", "2"],
        ["--model", "structured", "--quadrants", "3", "--elbo", "meanfield", "--beta", "2"],
    ],
    "monitor": [["--semi-supervised", "--labeled", "6", "--monitor", "accuracy", "--patience", "1"]],
    "elbo": [["--elbo", "meanfield"], ["--elbo", "iwae", "--num-particles", "3"]],
    "num_particles": [["--num-particles", "3"], ["--elbo", "meanfield", "--num-particles", "2"]],
    "beta": [["--beta", "0"], ["--beta", "4"]],
    "beta_schedule": [
        ["--beta-schedule", "linear", "--warmup-epochs", "1.5"],
        ["--beta-schedule", "cyclical", "--warmup-epochs", "1"],
    ],  # fmt: skip
    "warmup_epochs": [["--beta-schedule", "linear", "--warmup-epochs", "4"]],
    "capacity": [["--capacity", "5", "--capacity-epochs", "1", "--gamma", "10"]],
    "capacity_epochs": [["--capacity", "2", "--capacity-epochs", "3"]],
    "gamma": [["--capacity", "2", "--gamma", "3"]],
    "tc_beta": [["--tc-beta", "4"]],
    "free_bits": [["--free-bits", "0.5"], ["--elbo", "meanfield", "--free-bits", "0.5", "--guide", "iaf"]],
    "weight_decay": [["--weight-decay", "0.1"], ["--weight-decay", "0.1", "--prior", "learned"]],
    "batch_size": [["--batch-size", "7"]],
    "lr": [["--lr", "0.01"]],
    "lr_schedule": [["--lr-schedule", "cosine"], ["--lr-schedule", "exponential", "--lr-decay", "0.5"]],
    "lr_decay": [["--lr-schedule", "exponential", "--lr-decay", "0.9"]],
    "clip_norm": [["--clip-norm", "0.5"]],
    "patience": [["--patience", "1", "--lr", "0.5"]],
    "on_nan": [["--on-nan", "rollback"]],
    "seed": [["--seed", "7"]],
    "device": [["--device", "cpu"]],
    "eval_k": [["--eval-k", "7"]],
    "eval_n_test": [["--eval-n-test", "4"]],
}

#: options not in the matrix, and the test that exercises each end to end
ELSEWHERE = {
    "dataset": "every case here (--dataset file); MNIST in test_cli and test_experiments; dsprites in "
    "test_disentanglement_cli",
    "image_size": "test_disentanglement_cli.py (dsprites at 16 and 32 pixels; refused with --dataset mnist)",
    "data_file": "every case here",
    "labels_file": "test_data.py::test_labels_file",
    "data_dir": "test_cli.py (real MNIST)",
    "val_size": "every case here (--val-size 6)",
    "net": "test_components.py grid (mlp, conv); burgess in test_disentanglement_cli",
    "prior": "test_components.py grid",
    "guide": "test_components.py grid",
    "likelihood": "test_components.py grid",
    "epochs": "every case here (1, then resumed to 2)",
    "tensorboard": "test_tracking.py::test_tensorboard_events_match_metrics",
    "deterministic": "test_devices.py::test_deterministic_is_a_resumable_option_and_restores_torchs_setting; "
    "test_cuda.py::test_resume_on_cuda (bit-exact on a GPU)",
}

CASES = [(name, case) for name, cases in MATRIX.items() for case in cases]


def test_every_option_is_in_the_matrix():
    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields == set(MATRIX) | set(ELSEWHERE), "add new options to MATRIX (or ELSEWHERE, with the test)"
    assert not set(MATRIX) & set(ELSEWHERE)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, tiny_data_file):
    return tiny_data_file(tmp_path_factory.mktemp("data"), n=60, shape=(1, 8, 8))


def _train(out, data_file, extra, *more):
    return main(["train", "--dataset", "file", "--data-file", str(data_file), "--val-size", "6", "--z-dim", "2",
                 "--hidden", "8", "--batch-size", "16", "--eval-k", "20", "--quiet", "--out", str(out), *extra,
                 *more])  # fmt: skip


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}:{' '.join(c)}" for n, c in CASES])
def test_option_trains_resumes_and_evaluates(tmp_path, data_file, check_evaluation, name, case):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _train(whole, data_file, case, "--epochs", "2") == 0
    # the same run in two sittings: one epoch, then resumed to two
    assert _train(parts, data_file, case, "--epochs", "1", "--no-eval") == 0
    assert main(["train", "--out", str(parts), "--resume", "--epochs", "2", "--quiet", "--no-eval"]) == 0
    a, b = (checkpoint.load(p / "checkpoint.pt") for p in (whole, parts))
    assert a["state"]["epoch"] == b["state"]["epoch"] >= 1
    for k, v in a["model"].items():
        if case == ["--step", "compiled"]:
            # the resumed process's first step is eager (with Pyro's checks) where the whole run's
            # was compiled: the same step to float32 rounding (Inductor fuses the elementwise work);
            # the traced graph of --step graphed (and auto) runs the eager step's kernels: bit for bit
            torch.testing.assert_close(v, b["model"][k], rtol=1e-4, atol=1e-6, msg=k)
        else:
            assert torch.equal(v, b["model"][k]), k
    rows = list(csv.DictReader(open(whole / "metrics.csv")))
    assert all(math.isfinite(float(r["val_elbo"])) for r in rows)
    cfg = Config.load(whole / "config.json")
    assert json.loads(cfg.to_json()) == json.loads((parts / "config.json").read_text())
    res = check_evaluation(whole)
    if "elbo" in res:
        assert res["k"] == cfg.eval_k and res["n_ll_images"] == min(cfg.eval_n_test, res["n_images"])
    _check_option(name, cfg, rows, res)


def _check_option(name, cfg, rows, res):
    """What each option must visibly do, beyond training."""
    betas = [float(r["beta"]) for r in rows]
    if name == "beta":
        assert betas == [cfg.beta, cfg.beta]
    # beta: the mean of the epoch's 3 steps (48 training images in batches of 16), at t = epoch + s/3
    if name == "beta_schedule" and cfg.beta_schedule == "linear":  # warm-up over 1.5 epochs
        assert betas == [round(sum(min(1, (e + s / 3) / 1.5) for s in range(3)) / 3, 6) for e in (0, 1)]
    if name == "beta_schedule" and cfg.beta_schedule == "cyclical":  # ramped over each half-epoch
        assert betas == [round((0 + 2 / 3 + 1) / 3, 6)] * 2
    if name == "capacity":
        caps = [float(r["capacity"]) for r in rows]  # C(t) at each epoch's last step
        assert 0 < caps[0] < caps[1] == 5.0
    if name == "tc_beta":  # the total correlation's extra weight is in the training loss, not in evaluation
        assert cfg.tc_beta == 4 and float(rows[0]["train_loss"]) > -float(rows[0]["val_elbo"])
    if name == "lr_schedule" and cfg.lr_schedule == "exponential":
        assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 5e-4])
    if name == "lr_schedule" and cfg.lr_schedule == "cosine":
        assert float(rows[1]["lr"]) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 2)))
    if name == "baseline_epochs":  # the baseline, trained first for its own epochs, then frozen
        assert cfg.baseline_epochs == 3 and len({r["val_baseline_nll"] for r in rows}) == 1
    if name == "train_size":
        assert res["n_images"] == 6
