"""Priors: normalized densities that match their samplers, the VampPrior, and p(z|y)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from pyrovae import train
from pyrovae.build import build_model
from pyrovae.config import Config, ConfigError
from pyrovae.distributions import DiagonalNormalMixture
from pyrovae.priors import PRIORS

UNCONDITIONAL_PRIORS = [p for p, P in PRIORS.items() if not getattr(P, "needs_labels", False)]


def _run_cfg(path, **kw):
    base = dict(
        dataset="file", data_file=str(path), z_dim=4, hidden=[32], batch_size=16, val_size=12, seed=0, lr=3e-3
    )
    return Config(**{**base, **kw})


@pytest.mark.parametrize("prior", [p for p in UNCONDITIONAL_PRIORS if not hasattr(PRIORS[p], "bind")])
def test_prior_density_normalized_and_matches_its_samples(prior, check_density, component_config):
    vae = build_model(component_config(prior), (1, 4, 4)).double()
    with torch.no_grad():
        for p in vae.prior.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-trivial prior that stays on the grid
    d = vae.prior_dist(like=torch.zeros(1, dtype=torch.float64))
    check_density(d.log_prob, d.sample((20000,)))


def test_vamp_prior_is_the_guide_at_pseudo_inputs(component_config):
    vae = build_model(component_config("vamp"), (1, 4, 4))
    z = torch.randn(5, 2)
    q = vae.guide_net(vae.prior.pseudo_inputs)  # batch (K,)
    by_hand = torch.logsumexp(q.log_prob(z[:, None]), -1) - math.log(4)
    assert torch.allclose(vae.prior_dist().log_prob(z), by_hand, atol=1e-5)


def test_vamp_prior_takes_labels(component_config):  # p(z|y) per class: tests/test_conditional.py
    component_config("vamp", conditional=True).validate()
    assert (
        build_model(component_config("vamp", conditional=True), (1, 4, 4), num_classes=2).prior.num_classes
        == 2
    )


def test_a_prior_that_needs_labels_is_refused_without_them(component_config):
    class LabelPrior(PyroModule):  # a user's p(z|y), as the conditional prior
        needs_labels = True

        def __init__(self, z_dim, num_classes):
            super().__init__()
            self.loc = nn.Linear(num_classes, z_dim)

        def forward(self, y=None):
            return dist.Normal(self.loc(y), 1.0).to_event(1)

    PRIORS["labelled"] = LabelPrior
    try:
        with pytest.raises(ConfigError, match="prior labelled is p\\(z\\|y\\): set conditional"):
            component_config("labelled").validate()
        component_config("labelled", conditional=True).validate()
    finally:
        del PRIORS["labelled"]
    assert PRIORS["conditional"].needs_labels and not getattr(PRIORS["normal"], "needs_labels", False)


def test_conditional_prior_p_z_given_y_trains(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=150, classes=3)
    vae = train(
        _run_cfg(data, epochs=5, conditional=True, prior="conditional"),
        tmp_path / "r",
        progress=False,
        evaluate=False,
    ).model
    y = torch.arange(3)
    p = vae.prior_dist(y, like=torch.zeros(1))
    assert p.batch_shape == (3,) and not torch.allclose(p.mean[0], p.mean[1])


def test_the_vamp_prior_trains_through_the_matrix_product_mixture_with_the_same_gradients(component_config):
    """With gradients on, the VampPrior of a diagonal guide is scored by matrix products too: the
    same log-density as Pyro's ``MixtureSameFamily`` of the guide at the pseudo-inputs, and the same
    gradients for the pseudo-inputs, the guide's weights and z."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = build_model(component_config("vamp"), (1, 4, 4))
    k, d = vae.prior.pseudo_inputs.shape[0], vae.z_dim
    z = 2 * torch.randn(6, d, requires_grad=True)
    params = [*vae.prior.parameters(), *vae.guide_net.parameters()]  # the pseudo-inputs unconstrained
    fast = vae.prior()
    assert isinstance(fast, DiagonalNormalMixture)
    q = vae.prior._components()
    ref = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(k)), q)
    got, want = fast.log_prob(z), ref.log_prob(z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g_got = torch.autograd.grad(got.sum(), [z, *params])
    g_want = torch.autograd.grad(want.sum(), [z, *params])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_logits", [False, True])
def test_diagonal_normal_mixture_is_mixture_same_family(with_logits):
    """The VampPrior's mixture, scored by one matrix product, equals Pyro's ``MixtureSameFamily``
    in float64 and float32, with a zero weight (logit -inf) dropping a component."""
    g = torch.Generator().manual_seed(0)
    loc, scale = 3 * torch.randn(7, 4, generator=g), 0.2 + torch.rand(7, 4, generator=g)
    logits = torch.randn(5, 7, generator=g) if with_logits else None
    if with_logits:
        logits[:, 2] = -math.inf
    z = 3 * torch.randn(6, 5, 4, generator=g)  # (sample, batch, D)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        args = [t.to(dtype) for t in (loc, scale)]
        mix = DiagonalNormalMixture(*args, None if logits is None else logits.to(dtype))
        ref = dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(7, dtype=dtype) if logits is None else logits.to(dtype)),
            dist.Normal(*args).to_event(1),
        )
        got = mix.log_prob(z.to(dtype))
        assert got.dtype == dtype and got.shape == (6, 5)
        torch.testing.assert_close(got, ref.log_prob(z.to(dtype)), rtol=tol, atol=tol)
