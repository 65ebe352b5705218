"""Encoder and decoder bodies: dropout acts while training only, so evaluation ignores it."""

import csv
import json

import pyro
import pytest
import torch
from torch import nn

from pyrovae import load_run
from pyrovae.cli import main
from pyrovae.evaluate import evaluate, validate
from pyrovae.nets import NETS
from pyrovae.posterior import reconstruct, sample_prior


def _set_dropout(module: nn.Module, p: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


@pytest.mark.parametrize("net", sorted(NETS))
def test_dropout_acts_only_in_training_mode(net):
    Encoder, Decoder = NETS[net]
    torch.manual_seed(0)
    enc, dec = (
        Encoder((1, 16, 16), (16,), "relu", 0, dropout=0.5),
        Decoder((1, 16, 16), 3, (16,), "relu", 0, dropout=0.5),
    )
    x, z = torch.rand(5, 1, 16, 16, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    enc.double(), dec.double()
    for f, a in ((enc, x), (dec, z)):
        assert sum(isinstance(m, nn.Dropout) for m in f.modules()) >= 1
        f.train()
        assert not torch.equal(f(a), f(a))  # fresh masks each call
        f.eval()
        out = f(a)
        assert out.dtype == torch.float64 and torch.equal(out, f(a))
        _set_dropout(f, 0.0)
        f.train()
        assert torch.equal(f(a), out)  # eval mode is the network without dropout
    # without dropout no layer is made: parameter names (checkpoints) are unchanged
    plain = Encoder((1, 16, 16), (16,), "relu", 0)
    assert [n for n, _ in plain.named_parameters()] == [
        n for n, _ in Encoder((1, 16, 16), (16,), "relu", 0, dropout=0.0).named_parameters()
    ]
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_dropout_run_trains_with_it_and_evaluates_without(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=60)

    def train(out, p):
        return main(["train", "--dataset", "file", "--data-file", str(data), "--val-size", "6", "--z-dim", "2",
                     "--hidden", "16", "--batch-size", "16", "--epochs", "2", "--eval-k", "20", "--quiet",
                     "--out", str(out), "--dropout", str(p)])  # fmt: skip

    assert train(tmp_path / "drop", 0.5) == 0 and train(tmp_path / "plain", 0.0) == 0
    loss = {p: [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / p / "metrics.csv"))]
            for p in ("drop", "plain")}  # fmt: skip
    assert loss["drop"][0] != loss["plain"][0]  # same initial weights, batches, seeds: only the masks differ

    run = load_run(tmp_path / "drop")
    vae, test = run.model, run.data.test
    assert not vae.training

    def figures():
        pyro.set_rng_seed(1)
        res = evaluate(vae, test, k=20)
        pyro.set_rng_seed(1)
        return res, sample_prior(vae, 8), reconstruct(vae, test.x)

    first = figures()
    for p in (0.5, 0.9, 0.0):  # deterministic given the seed, and unaffected by P
        _set_dropout(vae, p)
        again = figures()
        assert again[0] == first[0]
        assert torch.equal(again[1], first[1]) and torch.equal(again[2], first[2])
    # evaluation switches a model left in training mode to eval mode, and restores the mode
    _set_dropout(vae, 0.5)
    vae.train()
    pyro.set_rng_seed(1)
    assert evaluate(vae, test, k=20) == first[0] and vae.training
    pyro.set_rng_seed(2)
    in_train_mode = validate(vae, run.data.val)
    vae.eval()
    pyro.set_rng_seed(2)
    assert validate(vae, run.data.val) == in_train_mode
    # the command line: the same seed gives the same figures
    results = []
    for _ in range(2):
        assert main(["evaluate", str(tmp_path / "drop"), "--seed", "3", "--k", "20", "--quiet"]) == 0
        results.append(json.loads((tmp_path / "drop" / "eval.json").read_text()))
    assert results[0] == results[1]
