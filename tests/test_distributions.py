"""pyrovae.distributions.BernoulliEvent against stock ``Bernoulli(logits).to_event(n)``."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.distributions import BernoulliEvent
from pyrovae.likelihoods import Bernoulli
from pyrovae.models import VAE


def _pair(logits: torch.Tensor, n: int):
    return BernoulliEvent(dist.Bernoulli(logits=logits), n), dist.Bernoulli(logits=logits).to_event(n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, n", [((5, 1, 6, 6), 3), ((3, 5, 1, 6, 6), 3), ((4, 7), 1), ((4, 7), 0)])
def test_log_prob_and_gradient_match_stock(shape, n, dtype):
    torch.manual_seed(0)
    logits = (4 * torch.randn(shape, dtype=dtype)).requires_grad_()
    x = torch.bernoulli(torch.rand(shape[-3:] if len(shape) == 5 else shape, dtype=dtype))
    ours, stock = _pair(logits, n)
    lp, lp_stock = ours.log_prob(x), stock.log_prob(x)
    assert lp.shape == lp_stock.shape == shape[: len(shape) - n] and lp.dtype == dtype
    assert torch.allclose(lp, lp_stock, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
    (g,) = torch.autograd.grad(lp.sum(), logits)
    (g_stock,) = torch.autograd.grad(lp_stock.sum(), logits)
    assert torch.equal(g, g_stock)  # sigmoid(l) - x either way
    # closed form: log p = x * l - softplus(l), summed over the event dims
    closed = (x * logits - torch.nn.functional.softplus(logits)).detach()
    closed = closed.sum(tuple(range(-n, 0))) if n else closed
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(lp.detach(), closed, rtol=tol, atol=tol)


def test_grey_value_refused_under_validation():
    d = BernoulliEvent(dist.Bernoulli(logits=torch.zeros(2, 3)), 1)
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        d.log_prob(torch.full((2, 3), 0.5))
    with pyro.validation_enabled(False):  # what Pyro's tutorial does with grey targets
        lp = BernoulliEvent(dist.Bernoulli(logits=torch.zeros(2, 3)), 1).log_prob(torch.full((2, 3), 0.5))
    assert torch.allclose(lp, torch.full((2,), 3 * torch.log(torch.tensor(0.5))))


def test_expand_keeps_the_fast_log_prob():
    d = BernoulliEvent(dist.Bernoulli(logits=torch.zeros(1, 2)), 1).expand((4,))
    assert type(d) is BernoulliEvent and d.batch_shape == (4,) and d.event_shape == (2,)
    assert torch.allclose(d.log_prob(torch.ones(4, 2)), torch.full((4,), 2 * torch.log(torch.tensor(0.5))))


class _StockBernoulli(Bernoulli):
    def forward(self, out):
        return dist.Bernoulli(logits=out).to_event(len(self.x_shape))


def test_vae_elbo_and_gradients_match_stock_likelihood():
    """A user's Trace_ELBO on the VAE gives the same loss and gradients with either likelihood."""
    x = torch.bernoulli(torch.rand(8, 1, 5, 5, generator=torch.Generator().manual_seed(1)))
    results = []
    for lik in (Bernoulli((1, 5, 5)), _StockBernoulli((1, 5, 5))):
        torch.manual_seed(0)
        vae = VAE((1, 5, 5), z_dim=3, hidden=(16,), likelihood=lik)
        pyro.set_rng_seed(0)
        loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        grads = torch.autograd.grad(loss, list(vae.parameters()))
        results.append((loss.detach(), grads))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-6) and l1.item() > 0
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g1, g2, strict=True))
