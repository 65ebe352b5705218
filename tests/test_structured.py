"""Structured-output CVAE: masked likelihood, tensor conditions, quadrant masks."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae import VAE
from pyrovae.evaluate import log_likelihood
from pyrovae.likelihoods import Bernoulli, Masked, Normal
from pyrovae.structured import BaselineNet, condition, hide, quadrant_mask, structured_cvae

SHAPE = (1, 8, 8)


def _x(n=6):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.3))


@pytest.mark.parametrize("n_given, count", [(1, 16), (2, 32), (3, 48)])
def test_quadrant_masks_give_the_right_quadrants(n_given, count):
    g = quadrant_mask(n_given, 8, 8)
    assert g.shape == SHAPE and int(g.sum()) == count
    assert g[0, 7, 0] and not g[0, 7, 7]  # bottom-left always given, bottom-right never


def test_masked_likelihood_scores_only_the_hidden_pixels():
    hidden = ~quadrant_mask(2, 8, 8)
    out, x = torch.randn(4, *SHAPE, requires_grad=True), _x(4)
    lp = Masked(Bernoulli(SHAPE), hidden)(out).log_prob(x)
    by_hand = (torch.distributions.Bernoulli(logits=out).log_prob(x) * hidden).flatten(1).sum(-1)
    assert lp.shape == (4,) and torch.allclose(lp, by_hand)
    lp.sum().backward()
    assert (out.grad[:, ~hidden] == 0).all() and (out.grad[:, hidden] != 0).all()
    # wrapping another family works the same way
    lik = Masked(Normal(SHAPE, scale=0.5), hidden)
    assert torch.allclose(
        lik(out).log_prob(x), (torch.distributions.Normal(out, 0.5).log_prob(x) * hidden).flatten(1).sum(-1)
    )


def _trained_weights(vae):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0, 0.3)  # the conditional prior starts at N(0, I); give it some dependence on c
    return vae


def test_structured_cvae_uses_the_condition_and_ignores_given_pixels_in_the_likelihood():
    given = quadrant_mask(1, 8, 8)
    vae = _trained_weights(structured_cvae(SHAPE, given, z_dim=3, hidden=(16,)))
    x, c = _x(5), torch.rand(5, *SHAPE)
    guide_tr = poutine.trace(vae.guide).get_trace(x, c)
    model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x, c)
    z = guide_tr.nodes["z"]["value"]
    logits = vae.decoder(z, c.flatten(1))
    by_hand = (torch.distributions.Bernoulli(logits=logits).log_prob(x) * ~given).flatten(1).sum(-1)
    assert torch.allclose(model_tr.nodes["x"]["fn"].log_prob(x), by_hand)
    # pixels that are given do not enter log p(x | z, c) ...
    x2 = torch.where(given, 1 - x, x)
    assert torch.allclose(vae.decode(z, c).log_prob(x2), vae.decode(z, c).log_prob(x))
    # ... but the condition moves the prior and the likelihood
    c2 = torch.rand(5, *SHAPE)
    assert not torch.allclose(vae.prior_dist(c, like=x).mean, vae.prior_dist(c2, like=x).mean)
    assert not torch.allclose(vae.decode(z, c).log_prob(x), vae.decode(z, c2).log_prob(x))


def test_condition_shape_is_checked():
    with pytest.raises(ValueError, match="labels .* or on tensors"):
        VAE(SHAPE, 2, num_classes=3, condition_shape=SHAPE)
    vae = structured_cvae(SHAPE, quadrant_mask(1, 8, 8), z_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="expected"):
        vae.guide(_x(3), torch.rand(3, 1, 4, 4))
    with pytest.raises(ValueError, match="conditional"):
        vae.guide(_x(3))


def test_structured_cvae_float64_and_particles():
    vae = structured_cvae(SHAPE, quadrant_mask(3, 8, 8), z_dim=2, hidden=(8,)).double()
    x, c = _x(4).double(), torch.rand(4, *SHAPE, dtype=torch.float64)
    loss = Trace_ELBO(num_particles=5, vectorize_particles=True).differentiable_loss(
        vae.model, vae.guide, x, c
    )
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    ll = log_likelihood(vae, x, c, k=7)
    assert ll.shape == (4,) and ll.dtype == torch.float64 and (ll < 0).all()


def test_baseline_condition_fills_only_hidden_pixels():
    given = quadrant_mask(2, 8, 8)
    base = BaselineNet(SHAPE, (16,))
    x = _x(3)
    assert (hide(x, given)[:, ~given] == -1).all() and torch.equal(hide(x, given)[:, given], x[:, given])
    c = condition(base, x, given)
    assert torch.equal(c[:, given], x[:, given])
    assert ((c[:, ~given] > 0) & (c[:, ~given] < 1)).all() and not c.requires_grad


def test_structured_cvae_learns_a_completion_better_than_its_prior():
    """Hidden pixels copy the given ones (mirror image); a briefly trained CVAE must predict them
    far better than chance, which it can only do through the condition."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    given = quadrant_mask(2, 8, 8)  # left half given
    left = torch.bernoulli(torch.full((256, 1, 8, 4), 0.5))
    x = torch.cat([left, left.flip(-1)], dim=-1)
    c = torch.where(given, x, torch.full_like(x, 0.5))  # the condition holds only the given half
    vae = structured_cvae(SHAPE, given, z_dim=2, hidden=(64,))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(300):
        loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
    nll = -log_likelihood(vae, x[:64], c[:64], k=20).mean()
    assert nll < 0.25 * 32 * torch.log(torch.tensor(2.0))  # chance: 32 hidden pixels x log 2


def test_fit_trains_a_structured_cvae_with_a_condition_made_per_batch(tmp_path):
    from pyrovae import Config, fit
    from pyrovae.data import Dataset, Split

    given = quadrant_mask(2, 8, 8)
    g = torch.Generator().manual_seed(0)
    left = torch.bernoulli(torch.full((200, 1, 8, 4), 0.5), generator=g)
    x = torch.cat([left, left.flip(-1)], dim=-1)  # the hidden half mirrors the given half

    def prepare(xb, y):  # the condition is made from each batch: its given half
        return torch.where(given, xb, torch.full_like(xb, 0.5))

    data = Dataset(Split(x[:160]), Split(x[160:180]), Split(x[180:]))
    vae = structured_cvae(SHAPE, given, z_dim=2, hidden=(32,))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    fit(vae, data, tmp_path, Config(epochs=30, batch_size=32, binarize="none", lr=1e-2), progress=False,
        prepare=prepare)  # fmt: skip
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 31 and (tmp_path / "best.pt").exists()
    assert any(not torch.equal(before[k], v) for k, v in vae.state_dict().items())
    val_elbo = [float(r.split(",")[2]) for r in rows[1:]]
    chance = 32 * math.log(2)  # the 32 hidden pixels, guessed
    assert max(val_elbo) > -0.5 * chance and max(val_elbo) > val_elbo[0]  # learned through the condition
