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


@pytest.mark.parametrize("analytic", [False, True])
def test_free_bits_floor_each_dimensions_batch_average_kl(analytic):
    from pyrovae.objectives import FreeBitsELBO

    vae, x = _vae_and_data()
    lam = 0.3
    pyro.set_rng_seed(4)
    loss = FreeBitsELBO(lam, analytic=analytic).loss(vae.model, vae.guide, x, beta=0.5)
    pyro.set_rng_seed(4)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x)
    q, p = guide_tr.nodes["z"]["fn"].base_dist, model_tr.nodes["z"]["fn"].base_dist
    z = guide_tr.nodes["z"]["value"]
    kl = torch.distributions.kl_divergence(q, p) if analytic else q.log_prob(z) - p.log_prob(z)  # (N, z_dim)
    recon = model_tr.nodes["x"]["fn"].log_prob(x).sum()
    expected = -recon + 0.5 * len(x) * kl.mean(0).clamp(min=lam).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert (kl.mean(0) < lam).any() or lam == 0  # the floor is active for some dimension here


def test_free_bits_refuse_the_iwae_bound():
    from pyrovae.config import Config, ConfigError

    with pytest.raises(ConfigError, match="free_bits"):
        Config(elbo="iwae", num_particles=3, free_bits=0.5).validate()
    with pytest.raises(ValueError, match="IWAE"):
        make_elbo("iwae", 3, free_bits=0.5)


def test_weight_decay_skips_biases_and_the_priors_and_likelihoods_own_parameters():
    from pyrovae.build import build_model
    from pyrovae.config import Config
    from pyrovae.step import decay_groups, make_optimizer

    vae = build_model(Config(z_dim=2, hidden=[8], prior="learned", likelihood="normal"), (1, 4, 4))
    decay, rest = decay_groups(vae, 0.1)
    names = {id(p): n for n, p in vae.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in vae.named_parameters()
                                                        if n.endswith("weight") and p.dim() == 2}  # fmt: skip
    assert any(names[id(p)].startswith("prior.") for p in rest["params"])
    assert any(names[id(p)].startswith("likelihood.") for p in rest["params"])
    opt = make_optimizer([decay, rest], 1e-3, 0.1)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.0
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    for p in vae.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves parameters
    opt.step()
    for n, p in vae.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (id(p) in {id(q) for q in decay["params"]} and bool(before[n].abs().sum())), n
