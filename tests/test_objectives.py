"""Objectives: the IWAE loss is RenyiELBO's bound with its gradient; β = 0 is reconstruction only;
the capacity objective refuses what it cannot differentiate."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO

from pyrovae import VAE
from pyrovae.objectives import IWAE, CapacityELBO, make_elbo


def _vae_and_data():
    vae = VAE((1, 4, 4), z_dim=3, hidden=(8,))
    return vae, torch.bernoulli(torch.full((6, 1, 4, 4), 0.4))


def test_iwae_loss_and_gradient_are_renyi_elbos():
    vae, x = _vae_and_data()
    pyro.set_rng_seed(0)
    ours = IWAE(num_particles=5, max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    ours.backward()
    grads = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    pyro.set_rng_seed(0)
    renyi = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyros = renyi.loss_and_grads(vae.model, vae.guide, x)  # backward into the same parameters
    assert ours.item() == pytest.approx(pyros, rel=1e-5)
    for p, g in zip(vae.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4)


def test_iwae_with_one_particle_is_the_elbo_and_more_particles_tighten_it():
    vae, x = _vae_and_data()
    pyro.set_rng_seed(1)
    one = IWAE(num_particles=1, vectorize_particles=False).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    assert one.item() == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x), rel=1e-5)
    torch.manual_seed(2)
    k1 = torch.stack([make_elbo("iwae", 2).differentiable_loss(vae.model, vae.guide, x) for _ in range(200)])
    k50 = torch.stack(
        [make_elbo("iwae", 50).differentiable_loss(vae.model, vae.guide, x) for _ in range(200)]
    )
    assert k50.mean() < k1.mean()  # a larger K is a tighter (lower) bound on -log p(x)


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_beta_scales_the_kl_exactly_including_zero(beta):
    vae, x = _vae_and_data()
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x, beta=beta)
    pyro.set_rng_seed(3)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x)
    recon = model_tr.nodes["x"]["fn"].log_prob(x).sum()
    z = guide_tr.nodes["z"]["value"]
    kl = (guide_tr.nodes["z"]["fn"].log_prob(z) - model_tr.nodes["z"]["fn"].log_prob(z)).sum()
    assert loss == pytest.approx((-recon + beta * kl).item(), rel=1e-5)


def test_capacity_objective_refuses_score_function_latents():
    def model(x):
        with pyro.plate("data", len(x)):
            k = pyro.sample("k", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("k", dist.Bernoulli(0.3))

    with pytest.raises(NotImplementedError, match="not reparameterized"):
        CapacityELBO().differentiable_loss(model, guide, torch.zeros(3))
