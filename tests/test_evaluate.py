"""Evaluation reports what a model has: no ELBO or log p(x) for an autoencoder, and active units
that Monte Carlo noise cannot create."""

import importlib

import pyro
import pytest
import torch
from torch import nn

from pyrovae import VAE
from pyrovae.data import Split
from pyrovae.guides import IAF, Delta, DiagonalNormal
from pyrovae.nets import MLPEncoder

E = importlib.import_module("pyrovae.evaluate")


def test_point_estimate_guide_reports_log_joint_not_elbo_or_log_likelihood():
    enc = MLPEncoder((1, 4, 4), (8,))
    vae = VAE((1, 4, 4), 3, guide=Delta(enc, 3), hidden=(8,))
    data = Split(torch.bernoulli(torch.full((10, 1, 4, 4), 0.4)))
    res = E.evaluate(vae, data, k=5)
    assert "elbo" not in res and "log_likelihood" not in res
    recon, kl = E.elbo_terms(vae, data.x)
    z = vae.encode(data.x).mean  # the point z*
    log_joint = vae.decode(z).log_prob(data.x) + vae.prior_dist(like=data.x).log_prob(z)
    assert torch.allclose(torch.tensor(res["log_joint"]), log_joint.mean(), atol=1e-4)
    assert abs(res["recon"] - recon.mean().item()) < 1e-4
    assert "no ELBO or log p(x)" in E.summary(res)


def _collapsed(guide_cls, **kw):
    enc = MLPEncoder((1, 4, 4), (8,))
    guide = guide_cls(enc, 8, scale="exp", **kw)
    with torch.no_grad():
        for p in enc.parameters():
            p.zero_()  # features no longer depend on x: q(z|x) is the same for every datum
    return VAE((1, 4, 4), 8, guide=guide, hidden=(8,))


def test_collapsed_units_of_a_guide_without_analytic_mean_are_not_active():
    pyro.set_rng_seed(0)
    x = torch.bernoulli(torch.full((2000, 1, 4, 4), 0.4))
    vae = _collapsed(IAF, layers=1)
    means, noise = E.posterior_mean_and_noise(vae, x, samples=64)
    assert E.active_units(means) > 0  # the plain Monte Carlo mean makes every unit look active
    assert E.active_units(means, noise=noise) == 0
    assert E.split_active_units(vae, Split(x), samples=16) == 0  # as training validates: fewer draws
    assert E.evaluate(vae, Split(x[:500]), k=2, n_ll=10)["active_units"] == 0


def test_active_units_still_counts_units_that_vary():
    vae = _collapsed(DiagonalNormal)
    with torch.no_grad():
        nn.init.normal_(vae.guide_net.encoder.body[0].weight)  # features depend on x again
        nn.init.normal_(vae.guide_net.loc.weight)
    x = torch.bernoulli(torch.full((500, 1, 4, 4), 0.4))
    assert E.evaluate(vae, Split(x), k=2, n_ll=10)["active_units"] == 8


def _counting_vamp(guide):
    from pyrovae.build import build_model
    from pyrovae.config import Config

    pyro.set_rng_seed(0)
    vae = build_model(Config(prior="vamp", guide=guide, z_dim=3, hidden=[16], pseudo_inputs=20), (1, 6, 6))
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))  # a posterior per pseudo-input that differs from N(0, I)
    calls = []
    vae.guide_net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0] == 20))
    return vae, calls


@pytest.mark.parametrize("guide", ["diag", "fullrank"])
def test_vamp_prior_posteriors_computed_once_per_evaluation_give_the_same_log_likelihood(guide, monkeypatch):
    vae, calls = _counting_vamp(guide)
    x = torch.bernoulli(torch.full((12, 1, 6, 6), 0.4))
    monkeypatch.setattr(E, "MAX_ELEMENTS", 12 * 36 * 7)  # chunks of 7 of the 50 samples: 8 chunks
    pyro.set_rng_seed(3)
    uncached = E._log_likelihood(vae, x, None, 50)  # the prior evaluated afresh in every chunk
    assert sum(calls) == 8
    calls.clear()
    pyro.set_rng_seed(3)
    cached = E.log_likelihood(vae, x, None, 50)
    assert sum(calls) == 1
    assert torch.allclose(cached, uncached, atol=1e-4, rtol=1e-5), (cached - uncached).abs().max()
    calls.clear()
    E.evaluate(vae, Split(x), k=50)  # ELBO, KL, active units and log p(x): one evaluation
    assert sum(calls) == 1
    assert not vae.prior._cache  # invalidated afterwards: training sees the current parameters
    with E.cached_prior(vae):
        p = vae.prior_dist()
        assert p.log_prob(torch.zeros(3)).requires_grad  # with gradients the cache is not used
    if guide == "diag":
        with torch.no_grad(), E.cached_prior(vae):
            fast = vae.prior_dist()
        z = torch.randn(4, 5, 3)
        assert type(fast).__name__ == "DiagonalNormalMixture" and fast.log_prob(z).shape == (4, 5)
        assert torch.allclose(fast.log_prob(z), p.log_prob(z).detach(), atol=1e-5)
        assert fast.sample((6,)).shape == (6, 3)


def test_float64_data_gives_the_float32_figures_and_bad_counts_say_what_to_give():
    """NumPy's float64 images, evaluated by a float32 model, give the figures of their float32
    copy; K or the number of images below 1 is refused by name."""
    vae = VAE((1, 4, 4), 2, hidden=(8,))
    x = torch.bernoulli(torch.full((12, 1, 4, 4), 0.3, dtype=torch.float64))
    pyro.set_rng_seed(0)
    wide = E.evaluate(vae, Split(x), k=5, n_ll=6)
    pyro.set_rng_seed(0)
    narrow = E.evaluate(vae, Split(x.float()), k=5, n_ll=6)
    for key in ("elbo", "log_likelihood", "recon", "kl"):
        assert wide[key] == pytest.approx(narrow[key], abs=1e-5), key
    with pytest.raises(ValueError, match="k, the importance samples per datum, must be at least 1, got 0"):
        E.evaluate(vae, Split(x), k=0)
    with pytest.raises(ValueError, match="n_ll, the data log p\\(x\\) is estimated on, must be at least 1"):
        E.evaluate(vae, Split(x), k=5, n_ll=0)
    with pytest.raises(ValueError, match="must be at least 1, got 0"):
        E.log_likelihood(vae, x, k=0)
