"""β-TCVAE: its loss recomputed by hand, pixel by pixel and pair by pair, from the traces."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae.config import Config, ConfigError
from pyrovae.elbos import TCVAE, total_correlation
from pyrovae.models import VAE
from pyrovae.objectives import make_elbo


def _normal_log_pdf(z: float, mu: float, sigma: float) -> float:
    return -0.5 * math.log(2 * math.pi) - math.log(sigma) - 0.5 * ((z - mu) / sigma) ** 2


def _by_hand(vae, x, n_data: int, tc_beta: float, seed: int) -> float:
    """The β-TCVAE loss of one particle with loops over data, pairs and dimensions."""
    pyro.set_rng_seed(seed)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    q = guide_tr.nodes["z"]["fn"].base_dist
    z, mu, sigma = guide_tr.nodes["z"]["value"], q.loc.expand_as(guide_tr.nodes["z"]["value"]), q.scale
    sigma = sigma.expand_as(z)
    m, d = z.shape
    recon = model_tr.nodes["x"]["fn"].log_prob(x)  # (M,)
    loss = 0.0
    for i in range(m):
        log_qzx = sum(_normal_log_pdf(z[i, k].item(), mu[i, k].item(), sigma[i, k].item()) for k in range(d))
        log_pz = sum(_normal_log_pdf(z[i, k].item(), 0.0, 1.0) for k in range(d))
        joint = [sum(_normal_log_pdf(z[i, k].item(), mu[j, k].item(), sigma[j, k].item()) for k in range(d))
                 for j in range(m)]  # fmt: skip
        log_qz = math.log(sum(math.exp(v) for v in joint) / (n_data * m))
        log_prod = 0.0
        for k in range(d):
            per_dim = [_normal_log_pdf(z[i, k].item(), mu[j, k].item(), sigma[j, k].item()) for j in range(m)]
            log_prod += math.log(sum(math.exp(v) for v in per_dim) / (n_data * m))
        loss += -recon[i].item() + (log_qzx - log_pz) + (tc_beta - 1) * (log_qz - log_prod)
    return loss


@pytest.mark.parametrize("tc_beta", [1.0, 6.0, 0.0])
def test_tcvae_loss_matches_hand_computation(tc_beta):
    torch.manual_seed(0)
    vae = VAE((6,), z_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    elbo = TCVAE(tc_beta, dataset_size=1000)
    pyro.set_rng_seed(7)
    loss = elbo.loss(vae.model, vae.guide, x)
    assert loss == pytest.approx(_by_hand(vae, x, 1000, tc_beta, seed=7), rel=1e-5, abs=1e-4)
    if tc_beta == 1.0:  # no extra weight on the total correlation: the plain ELBO
        pyro.set_rng_seed(7)
        assert loss == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x), rel=1e-6)


def test_total_correlation_is_vectorized_over_particles_and_float64():
    torch.manual_seed(1)
    loc, scale = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.5
    q = pyro.distributions.Normal(loc, scale).to_event(1)
    z = torch.randn(2, 4, 3, dtype=torch.float64)  # (particles, batch, D)
    tc = total_correlation(q.expand((2, 4)), z, 100)
    assert tc.shape == (2, 4) and tc.dtype == torch.float64
    for p in range(2):
        assert torch.allclose(tc[p], total_correlation(q, z[p], 100))
    # one datum: log q(z|x) cancels, leaving MWS's constants, (D - 1) log(N M) (its known bias)
    one = pyro.distributions.Normal(loc[:1], scale[:1]).to_event(1)
    assert total_correlation(one, z[0, :1], 100).item() == pytest.approx(2 * math.log(100))
    with pytest.raises(NotImplementedError, match="factorized guide"):
        total_correlation(pyro.distributions.MultivariateNormal(loc, torch.eye(3)), z[0], 100)


def test_tcvae_vectorized_particles_average_the_hand_losses():
    torch.manual_seed(0)
    vae = VAE((6,), z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    elbo = make_elbo("trace", num_particles=3, tc_beta=4.0, dataset_size=50)
    pyro.set_rng_seed(3)
    loss = elbo.loss(vae.model, vae.guide, x)
    assert isinstance(elbo, TCVAE) and elbo.vectorize_particles
    assert math.isfinite(loss) and loss > 0


def test_tc_beta_options_are_checked():
    Config(tc_beta=6.0).validate()
    for bad, match in [(dict(tc_beta=-1.0), ">= 0"), (dict(tc_beta=2.0, beta=4.0), "replaces beta"),
                       (dict(tc_beta=2.0, guide="iaf"), "factorized guide"),
                       (dict(tc_beta=2.0, capacity=5.0), "capacity|replaces")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            Config(**bad).validate()
