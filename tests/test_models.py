"""The VAE as a Pyro program: ELBO terms by hand, β scaling, closed forms, interop, dtype."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule
from torch import nn

from pyrovae import VAE, train
from pyrovae.config import Config
from pyrovae.evaluate import elbo_terms, log_likelihood
from pyrovae.likelihoods import Bernoulli, Normal
from pyrovae.loaded import load_run
from pyrovae.posterior import posterior_predictive, sample_prior


def _small_vae(**kw):
    return VAE((1, 4, 4), z_dim=3, hidden=(8,), **kw)


def _binary(n=5):
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.4))


def _by_hand(vae, x, z):
    """log p(x|z), log p(z), log q(z|x) written out with torch.distributions."""
    enc = vae.guide_net
    h = enc.encoder(x)
    q = torch.distributions.Normal(enc.loc(h), nn.functional.softplus(enc.raw_scale(h)) + 1e-5)
    logits = vae.decoder(z)
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return log_px, log_pz, q.log_prob(z).sum(-1), q


def test_site_names_shapes_and_plate():
    vae, x = _small_vae(), _binary()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (5, 3)
    assert model_tr.nodes["x"]["is_observed"] and model_tr.nodes["x"]["value"] is x
    assert model_tr.nodes["z"]["fn"].event_shape == (3,)
    assert model_tr.nodes["x"]["fn"].event_shape == (1, 4, 4)
    assert [f.name for f in model_tr.nodes["z"]["cond_indep_stack"]] == ["data"]


@pytest.mark.parametrize("beta", [1.0, 0.5, 4.0])
def test_trace_elbo_equals_terms_by_hand(beta):
    vae, x = _small_vae(beta=beta), _binary()
    pyro.set_rng_seed(1)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]  # the same draw as the ELBO's
    log_px, log_pz, log_qz, _ = _by_hand(vae, x, z)
    recon, kl = log_px.sum(), (log_qz - log_pz).sum()
    assert loss == pytest.approx((-recon + beta * kl).item(), rel=1e-5)


@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_meanfield_elbo_is_recon_minus_beta_analytic_kl(beta):
    vae, x = _small_vae(beta=beta), _binary()
    pyro.set_rng_seed(2)
    loss = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    log_px, _, _, q = _by_hand(vae, x, z)
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    assert loss == pytest.approx((-log_px.sum() + beta * kl).item(), rel=1e-5)


def test_elbo_terms_match_pyro_loss_at_beta_one():
    vae, x = _small_vae(beta=3.0), _binary()  # evaluation ignores the training beta
    pyro.set_rng_seed(3)
    recon, kl = elbo_terms(vae, x)
    pyro.set_rng_seed(3)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    log_px, _, _, q = _by_hand(vae, x, z)
    assert torch.allclose(recon, log_px, atol=1e-4)
    assert torch.allclose(
        kl, torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1), atol=1e-5
    )


# -- linear-Gaussian VAE = probabilistic PCA ---------------------------------------------------
D, Z, SIGMA = 5, 2, 0.5


class LinearDecoder(nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.out = nn.Linear(Z, D)
        with torch.no_grad():
            self.out.weight.copy_(W)
            self.out.bias.copy_(b)

    def forward(self, z, y=None):
        return self.out(z)


class ExactPosterior(PyroModule):
    """q(z|x) = p(z|x) of PPCA, written as a user guide: N(M (x - b), sigma^2 (W^T W + sigma^2 I)^-1)."""

    def __init__(self, W, b):
        super().__init__()
        prec = W.T @ W + SIGMA**2 * torch.eye(Z)
        self.register_buffer("M", torch.linalg.solve(prec, W.T))
        self.register_buffer("tril", torch.linalg.cholesky(SIGMA**2 * torch.linalg.inv(prec)))
        self.register_buffer("b", b)

    def forward(self, x, y=None):
        return dist.MultivariateNormal((x - self.b) @ self.M.T, scale_tril=self.tril)


def _ppca(exact_guide: bool):
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, Z, generator=g), torch.randn(D, generator=g)
    guide = ExactPosterior(W, b) if exact_guide else None
    vae = VAE(
        (D,), Z, decoder=LinearDecoder(W, b), likelihood=Normal((D,), scale=SIGMA), guide=guide, hidden=(4,)
    )
    x = torch.distributions.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(D)).sample((20,))
    exact = torch.distributions.MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(D)).log_prob(x)
    return vae, x, exact


def test_ppca_elbo_is_exact_at_the_true_posterior():
    vae, x, exact = _ppca(exact_guide=True)
    recon, kl = elbo_terms(vae, x)
    assert torch.allclose(recon - kl, exact, atol=1e-3)  # MC ELBO: every log-weight equals log p(x)
    assert torch.allclose(log_likelihood(vae, x, k=7), exact, atol=1e-4)


def test_ppca_importance_estimate_approaches_log_px_as_k_grows():
    vae, x, exact = _ppca(exact_guide=False)  # an untrained encoder: a poor proposal
    gaps = [(exact - log_likelihood(vae, x, k=k)).mean().item() for k in (1, 50, 5000)]
    assert gaps[0] > gaps[1] > gaps[2] > -0.05  # a lower bound, tightening with K
    assert gaps[2] < 0.25 * gaps[0]


# -- interop ----------------------------------------------------------------------------------
def test_plain_pyro_svi_trains_the_model():
    torch.manual_seed(0)
    vae = _small_vae()
    x = _binary(64)
    svi = pyro.infer.SVI(
        vae.model,
        vae.guide,
        pyro.optim.Adam({"lr": 1e-2}),
        Trace_ELBO(num_particles=8, vectorize_particles=True),
    )
    before = Trace_ELBO(num_particles=200, vectorize_particles=True).loss(vae.model, vae.guide, x)
    w = vae.decoder.out.weight.detach().clone()
    for _ in range(200):
        svi.step(x)
    after = Trace_ELBO(num_particles=200, vectorize_particles=True).loss(vae.model, vae.guide, x)
    assert not torch.equal(w, vae.decoder.out.weight)  # SVI's optimizer updated the module itself
    assert after < before - 0.05 * abs(before)


def test_two_models_do_not_share_parameters_through_the_param_store():
    x = _binary(16)
    a, b = _small_vae(), _small_vae()
    for vae in (a, b):
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        w = vae.decoder.out.weight.detach().clone()
        svi.step(x)
        assert not torch.equal(w, vae.decoder.out.weight)


def test_predictive_gives_posterior_predictive_and_prior_samples():
    vae, x = _small_vae(), _binary(4)
    post = posterior_predictive(vae, x, num_samples=6)
    assert post["z"].shape == (6, 4, 3) and post["x"].shape == (6, 4, 1, 4, 4)
    assert set(post["x"].unique().tolist()) <= {0.0, 1.0}
    prior = Predictive(vae.model, num_samples=3)(None, batch_size=7)
    assert prior["x"].shape == (3, 7, 1, 4, 4)


def test_bernoulli_likelihood_refuses_grey_values_under_validation():
    lik = Bernoulli((1, 4, 4))(torch.zeros(5, 1, 4, 4))
    with pytest.raises(ValueError, match="support"):
        lik.log_prob(torch.full((5, 1, 4, 4), 0.5))


def test_float64_stays_float64_under_float32_default():
    assert torch.get_default_dtype() == torch.float32
    vae = _small_vae().double()
    x = _binary(6).double()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    for tr in (guide_tr, model_tr):
        for name in ("z", "x") if tr is model_tr else ("z",):
            assert tr.nodes[name]["value"].dtype == torch.float64, name
    assert model_tr.nodes["x"]["log_prob"].dtype == torch.float64
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert loss.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in elbo_terms(vae, x))
    assert log_likelihood(vae, x, k=5).dtype == torch.float64
    prior = vae.prior_dist(like=x)
    assert prior.sample().dtype == torch.float64
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_training_loop_loss_is_pyros_loss_at_the_given_beta(beta):
    from pyrovae.objectives import ELBOLoss

    vae, x = _small_vae(), _binary(8)
    pyro.set_rng_seed(3)
    ours = ELBOLoss(vae, Trace_ELBO())(x, None, beta)
    pyro.set_rng_seed(3)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    log_px, log_pz, log_qz, _ = _by_hand(vae, x, z)
    assert ours.item() == pytest.approx((-log_px.sum() + beta * (log_qz - log_pz).sum()).item(), rel=1e-5)


def _run_cfg(path, **kw):
    base = dict(
        dataset="file", data_file=str(path), z_dim=4, hidden=[32], batch_size=16, val_size=12, seed=0, lr=3e-3
    )
    return Config(**{**base, **kw})


def test_conditional_model_uses_the_label(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=300, classes=3, binary=False)
    cfg = _run_cfg(data, epochs=30, conditional=True, likelihood="cbernoulli", z_dim=2)
    vae = train(cfg, tmp_path / "r", progress=False, evaluate=False).model
    run = load_run(tmp_path / "r")
    x, y = run.data.train.x, run.data.train.y
    # changing y changes log p(x | z, y) at the same z
    z = vae.encode(x[:8], y[:8]).mean
    lp = [vae.decode(z, torch.full((8,), k)).log_prob(x[:8]) for k in range(3)]
    assert not torch.allclose(lp[0], lp[1]) and not torch.allclose(lp[1], lp[2])
    # class-conditional samples resemble their own class more than the others
    class_means = torch.stack([x[y == k].mean(0) for k in range(3)])  # (3, 1, 8, 8)
    torch.manual_seed(0)
    for k in range(3):
        s = sample_prior(vae, 50, torch.full((50,), k)).mean(0)
        dist = ((class_means - s) ** 2).flatten(1).sum(-1)
        assert dist.argmin().item() == k, dist
    # and the true label scores the data better than a wrong one
    right = sum(elbo_terms(vae, x, y)[0].mean() for _ in range(3))
    wrong = sum(elbo_terms(vae, x, (y + 1) % 3)[0].mean() for _ in range(3))
    assert right > wrong
