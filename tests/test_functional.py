"""pyrovae's softplus and the Bernoulli log-density built on it, against torch's own."""

import csv

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from pyrovae import functional, train
from pyrovae.distributions import Bernoulli
from pyrovae.nets import ACTIVATIONS


def _grid(dtype):
    # both tails, the kink, and torch's threshold (20)
    return torch.cat([torch.linspace(-100, 100, 2001), torch.tensor([-1e-7, 0.0, 1e-7, 19.9, 20.1])]).to(
        dtype
    )


def test_softplus_matches_torch_in_both_dtypes():
    x64 = _grid(torch.float64)
    assert functional.softplus(x64).dtype == torch.float64  # the default dtype is float32
    torch.testing.assert_close(functional.softplus(x64), F.softplus(x64), rtol=0, atol=3e-9)
    x32 = x64.float()
    got = functional.softplus(x32)
    assert got.dtype == torch.float32
    # absolute error within float32 rounding of the result, as torch's own
    exact = F.softplus(x64)
    assert (got.double() - exact).abs().max() <= 4 * torch.finfo(torch.float32).eps * exact.clamp(min=1).max()
    assert (got.double() - exact).abs().max() < 1e-5


def test_softplus_gradient_is_the_sigmoid():
    x = _grid(torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(functional.softplus(x).sum(), x)
    torch.testing.assert_close(g, x.detach().sigmoid(), rtol=1e-15, atol=0)
    assert torch.autograd.gradcheck(
        functional.softplus, torch.randn(7, dtype=torch.float64, requires_grad=True)
    )
    # second derivative, for code that differentiates a gradient
    assert torch.autograd.gradgradcheck(
        functional.softplus, torch.randn(5, dtype=torch.float64, requires_grad=True)
    )


def test_softplus_module_is_torchs_softplus():
    assert ACTIVATIONS["softplus"] is functional.Softplus
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(functional.Softplus()(x), F.softplus(x), rtol=0, atol=1e-15)
    # beta other than 1 is torch's own kernel, exactly
    assert torch.equal(functional.Softplus(beta=2.0)(x), F.softplus(x, beta=2.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_log_prob_matches_pyros(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (
        (torch.randn(10, 1, 6, 5, generator=g) * 8).to(dtype).requires_grad_()
    )  # enumeration-like lead dim
    x = torch.bernoulli(torch.rand(6, 5, generator=g)).to(dtype)
    ours, theirs = Bernoulli(logits=logits).to_event(1), dist.Bernoulli(logits=logits).to_event(1)
    lp, ref = ours.log_prob(x), theirs.log_prob(x)
    assert lp.shape == ref.shape == (10, 1, 6) and lp.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(lp, ref, **tol)
    (ga,) = torch.autograd.grad(lp.sum(), logits)
    (gb,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(ga, gb, **tol)
    # grey targets (Pyro's CVAE protocol runs them with validation off): the cross-entropy
    grey = torch.rand(6, 5, generator=g).to(dtype)
    lp = Bernoulli(logits=logits, validate_args=False).log_prob(grey)
    torch.testing.assert_close(
        lp, -F.binary_cross_entropy_with_logits(logits, grey.expand_as(logits), reduction="none"), **tol
    )
    with pytest.raises(ValueError, match="support"):
        Bernoulli(logits=logits, validate_args=True).log_prob(grey)
    # expand (Pyro's plates) keeps the class, hence the fast log-density
    assert type(Bernoulli(logits=torch.zeros(3)).expand((2, 3))) is Bernoulli


def test_training_with_it_follows_torchs_softplus(tiny_data_file, tiny_config, tmp_path, monkeypatch):
    """Two epochs through ``pyrovae.train``: the recorded losses equal those of the same run on torch's
    softplus and binary cross-entropy (a wrong value or gradient would move them)."""
    data = tiny_data_file(tmp_path, n=96)

    def losses(name):
        torch.manual_seed(0)
        train(tiny_config(data, epochs=2), tmp_path / name, progress=False)
        rows = list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
        return torch.tensor(
            [[float(r["train_loss"]), float(r["val_elbo"])] for r in rows], dtype=torch.float64
        )

    ours = losses("ours")
    monkeypatch.setattr(functional._Softplus, "apply", F.softplus)  # every call site goes through it
    theirs = losses("torch")
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=0)
    assert not torch.equal(ours[0], ours[1])  # it trained
