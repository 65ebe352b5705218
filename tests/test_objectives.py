"""Objectives: the IWAE loss is RenyiELBO's bound with its gradient; β = 0 is reconstruction only;
the capacity objective refuses what it cannot differentiate."""

import csv
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO

from pyrovae import VAE, checkpoint, train
from pyrovae.build import build_model
from pyrovae.config import Config, ConfigError
from pyrovae.elbos import IWAE, CapacityELBO
from pyrovae.evaluate import validate
from pyrovae.loaded import load_run
from pyrovae.objectives import (
    beta_at,
    capacity_at,
    cyclical,
    describe_objective,
    linear_warmup,
    make_elbo,
)


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


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_iwae_warmup_scales_the_weights_prior_and_guide_terms(beta):
    """log w = log p(x|z) + β (log p(z) - log q(z|x)), recomputed by hand from each particle's traces."""
    vae, x = _vae_and_data()
    pyro.set_rng_seed(5)
    loss = IWAE(num_particles=3, vectorize_particles=False).differentiable_loss(
        vae.model, vae.guide, x, beta=beta
    )
    pyro.set_rng_seed(5)
    log_w = []
    for _ in range(3):  # as RenyiELBO draws them: the guide, then the model replayed on its z
        guide_tr = poutine.trace(vae.guide).get_trace(x, beta=beta)
        model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x, beta=beta)
        z = guide_tr.nodes["z"]["value"]
        recon = model_tr.nodes["x"]["fn"].log_prob(x)
        log_w.append(
            recon + beta * (model_tr.nodes["z"]["fn"].log_prob(z) - guide_tr.nodes["z"]["fn"].log_prob(z))
        )
    expected = -(torch.logsumexp(torch.stack(log_w), 0) - math.log(3)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


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
    from pyrovae.elbos import FreeBitsELBO

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
    from pyrovae.config import Config

    with pytest.raises(ConfigError, match="free_bits") as by_config:
        Config(elbo="iwae", num_particles=3, free_bits=0.5).validate()
    with pytest.raises(ConfigError) as by_make_elbo:  # one rule, so one message
        make_elbo("iwae", 3, free_bits=0.5)
    assert (str(by_make_elbo.value), by_make_elbo.value.option) == (str(by_config.value), "free_bits")


@pytest.mark.parametrize("t, expected", [(0.0, 0.0), (2.5, 1.0), (4.0, 1.6), (5.0, 2.0), (12.0, 2.0)])
def test_linear_warmup(t, expected):
    assert linear_warmup(t, warmup=5.0, beta_max=2.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    "t, expected", [(0.0, 0.0), (1.0, 0.4), (2.5, 1.0), (4.9, 1.0), (5.0, 0.0), (6.25, 0.5)]
)
def test_cyclical(t, expected):
    assert cyclical(t, period=5.0, beta_max=1.0, ramp=0.5) == pytest.approx(expected)


def test_capacity_and_config_schedules():
    assert capacity_at(3.0, c_max=25.0, epochs=10.0) == pytest.approx(7.5)
    assert capacity_at(30.0, c_max=25.0, epochs=10.0) == 25.0
    assert beta_at("linear", 4.0, 8.0, 2.0) == pytest.approx(1.0)
    assert beta_at("constant", 3.0, 8.0, 7.0) == 3.0
    assert beta_at("cyclical", 2.0, 4.0, 4.0) == 0.0  # each cycle starts again from 0


def _cfg(path, **kw):
    base = dict(
        dataset="file", data_file=str(path), z_dim=4, hidden=[32], batch_size=16, val_size=12, seed=0, lr=3e-3
    )
    return Config(**{**base, **kw})


def test_capacity_objective_pushes_kl_towards_c(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=200)
    kls = {}
    for c in (1.0, 6.0):
        train(
            _cfg(data, epochs=25, capacity=c, capacity_epochs=5, gamma=50.0),
            tmp_path / f"c{c}",
            progress=False,
            evaluate=False,
        )
        run = load_run(tmp_path / f"c{c}")  # best.pt: the best ELBO once C has reached C_max
        kls[c] = validate(run.model, run.data.val)[1]
    assert kls[1.0] == pytest.approx(1.0, abs=0.5)
    assert kls[6.0] == pytest.approx(6.0, abs=1.5)


def test_best_checkpoint_and_early_stopping_wait_for_the_capacity_to_settle(tmp_path, tiny_data_file):
    """Raising C to 30 nats on 8 × 8 images makes the validation ELBO worse by design: the KL buys
    less reconstruction than it costs. best.pt must still be a model trained to C_max, and
    early stopping must not end the run while C rises."""
    data = tiny_data_file(tmp_path, n=200)
    cfg = _cfg(data, epochs=8, capacity=30.0, capacity_epochs=4, gamma=50.0, patience=1)
    train(cfg, tmp_path / "r", progress=False, evaluate=False)
    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    elbo = [float(r["val_elbo"]) for r in rows]
    assert elbo[1] < elbo[0]  # with the epochs of the rise counted, patience 1 would stop here
    assert len(rows) >= 5  # four epochs of the rise, then at least one that failed to improve
    best = checkpoint.load(tmp_path / "r" / "best.pt")["state"]["epoch"]
    assert best >= 4 and elbo[best - 1] == max(elbo[3:])
    run = load_run(tmp_path / "r")
    assert validate(run.model, run.data.val)[1] == pytest.approx(30.0, rel=0.2)  # a model at C_max


@pytest.mark.parametrize(
    "options, settled",
    [({}, 0.0), (dict(beta_schedule="linear", warmup_epochs=3.0), 3.0),
     (dict(beta_schedule="cyclical", warmup_epochs=3.0), 0.0), (dict(capacity=5.0, capacity_epochs=4.0), 4.0),
     (dict(capacity=5.0, capacity_epochs=4.0, beta_schedule="linear", warmup_epochs=6.0), 6.0)],
)  # fmt: skip
def test_the_epoch_from_which_best_and_patience_count(options, settled, tmp_path, tiny_data_file):
    """A linear warm-up and the capacity's rise delay it (the one that ends last); a cyclical β,
    which never settles, does not."""
    from pyrovae.data import load_dataset
    from pyrovae.variants import variant_of

    cfg = _cfg(tiny_data_file(tmp_path, n=40), **options)
    data = load_dataset("file", data_file=cfg.data_file, val_size=cfg.val_size)
    vae = build_model(cfg, data.x_shape, data.num_classes)
    assert variant_of(vae).training(vae, data, cfg).settled() == settled


def test_capacity_loss_is_recon_plus_gamma_abs_gap():
    import pyro
    from pyro import poutine

    vae = build_model(Config(z_dim=2, hidden=[8]), (1, 4, 4))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.3))
    loss_fn = CapacityELBO(gamma=7.0, capacity=2.0)
    pyro.set_rng_seed(0)
    loss = loss_fn.differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    g = poutine.trace(vae.guide).get_trace(x)
    m = poutine.trace(poutine.replay(vae.model, g)).get_trace(x)
    g.compute_log_prob()
    m.compute_log_prob()
    recon = m.nodes["x"]["log_prob_sum"]
    kl = g.nodes["z"]["log_prob_sum"] - m.nodes["z"]["log_prob_sum"]
    assert loss.item() == pytest.approx((-recon + 7.0 * 5 * (kl / 5 - 2.0).abs()).item(), rel=1e-5)


def test_iwae_trains_with_a_kl_warmup(tmp_path, tiny_data_file):
    """``--elbo iwae`` with a linear β schedule trains on the warmed-up bound: against a constant-β run
    of the same seed, a smaller loss while β < 1 and a posterior freer to leave the prior."""
    data = tiny_data_file(tmp_path, n=200)
    losses, betas, kls = {}, {}, {}
    for schedule in ("constant", "linear"):
        cfg = _cfg(data, epochs=2, elbo="iwae", num_particles=3, beta_schedule=schedule, warmup_epochs=20)
        train(cfg, tmp_path / schedule, progress=False, evaluate=False)
        rows = [r.split(",") for r in (tmp_path / schedule / "metrics.csv").read_text().splitlines()[1:]]
        losses[schedule] = [float(r[1]) for r in rows]
        kls[schedule] = [float(r[4]) for r in rows]  # validation KL, at β = 1
        betas[schedule] = [float(r[6]) for r in rows]
    assert betas["constant"] == [1.0, 1.0] and 0 < betas["linear"][0] < betas["linear"][1] < 0.1
    # were the scale ignored, both runs would be the same numbers (same seed, same noise)
    assert all(w < c for w, c in zip(losses["linear"], losses["constant"], strict=True))
    assert kls["linear"][0] > 2 * kls["constant"][0]  # q may leave the prior while β is small
    assert describe_objective(
        Config(elbo="iwae", num_particles=3, beta_schedule="linear", warmup_epochs=20)
    ) == ("iwae k=3 (warm-up linear over 20 epochs)")
    with pytest.raises(ConfigError, match="takes a KL warm-up .* but no other beta"):
        Config(elbo="iwae", num_particles=3, beta=0.5).validate()
