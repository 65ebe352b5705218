"""β schedules, the capacity objective, and conditioning on labels."""

import pytest
import torch
from conftest import tiny_data_file

from pyrovae import train
from pyrovae.build import build_model
from pyrovae.config import Config, ConfigError
from pyrovae.evaluate import elbo_terms
from pyrovae.fit import validate
from pyrovae.objectives import CapacityELBO, beta_at, capacity_at, cyclical, linear_warmup
from pyrovae.posterior import sample_prior
from pyrovae.runs import load_run


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


def test_capacity_objective_pushes_kl_towards_c(tmp_path):
    data = tiny_data_file(tmp_path, n=200)
    kls = {}
    for c in (1.0, 6.0):
        train(
            _cfg(data, epochs=25, capacity=c, capacity_epochs=5, gamma=50.0),
            tmp_path / f"c{c}",
            progress=False,
            evaluate=False,
        )
        run = load_run(tmp_path / f"c{c}", which="last")  # best.pt is chosen by ELBO, not by this objective
        kls[c] = validate(run.model, run.data.val)[1]
    assert kls[1.0] == pytest.approx(1.0, abs=0.5)
    assert kls[6.0] == pytest.approx(6.0, abs=1.5)


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


def test_conditional_model_uses_the_label(tmp_path):
    data = tiny_data_file(tmp_path, n=300, classes=3, binary=False)
    cfg = _cfg(data, epochs=30, conditional=True, likelihood="cbernoulli", z_dim=2)
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


def test_unconditionable_components_are_refused(tmp_path):
    from pyrovae.priors import PRIORS, StandardNormal

    class LabelBlind(StandardNormal):  # the VampPrior takes labels now; a prior that cannot
        conditionable = False

    PRIORS["blind"] = LabelBlind
    try:
        with pytest.raises(ConfigError, match="cannot be conditioned"):
            _cfg(tiny_data_file(tmp_path), prior="blind", conditional=True).validate()
    finally:
        del PRIORS["blind"]
    with pytest.raises(ConfigError, match="set conditional"):
        _cfg(tiny_data_file(tmp_path), prior="conditional").validate()


def test_conditional_prior_p_z_given_y_trains(tmp_path):
    data = tiny_data_file(tmp_path, n=150, classes=3)
    vae = train(
        _cfg(data, epochs=5, conditional=True, prior="conditional"),
        tmp_path / "r",
        progress=False,
        evaluate=False,
    ).model
    y = torch.arange(3)
    p = vae.prior_dist(y, like=torch.zeros(1))
    assert p.batch_shape == (3,) and not torch.allclose(p.mean[0], p.mean[1])
