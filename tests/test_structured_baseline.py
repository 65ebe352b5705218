"""The deterministic baseline of the structured CVAE as a zero-latent VAE, trained by ``fit``."""

import csv
import math

import torch
import torch.nn.functional as F

from pyrovae import Config, fit
from pyrovae.data import Dataset, Split
from pyrovae.structured import baseline_model, condition, hide, quadrant_mask

SHAPE = (1, 8, 8)


def test_fit_trains_the_baseline_and_its_elbo_is_its_masked_log_likelihood(tmp_path):
    given = quadrant_mask(2, 8, 8)  # left half given
    g = torch.Generator().manual_seed(0)
    left = torch.bernoulli(torch.full((200, 1, 8, 4), 0.5), generator=g)
    x = torch.cat([left, left.flip(-1)], dim=-1)  # the hidden half mirrors the given half
    data = Dataset(Split(x[:160]), Split(x[160:180]), Split(x[180:]))
    torch.manual_seed(0)
    model = baseline_model(SHAPE, given, hidden=(32,))
    fit(model, data, tmp_path, Config(epochs=25, batch_size=32, binarize="none", lr=1e-2), progress=False,
        prepare=lambda xb, y: hide(xb, given))  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 25 and all(float(r["val_kl"]) == 0 for r in rows)  # no latent, no KL
    best = max(float(r["val_elbo"]) for r in rows)
    # By hand: the masked Bernoulli log-likelihood of the hidden pixels under the returned
    # (best) parameters, from the network alone.
    with torch.no_grad():
        logits = model.decoder.net(hide(data.val.x, given))  # (20, 1, 8, 8)
        ll = -F.binary_cross_entropy_with_logits(logits, data.val.x, reduction="none")[:, ~given].sum(-1)
    assert math.isclose(best, ll.mean().item(), rel_tol=1e-5)
    chance = 32 * math.log(2)  # the 32 hidden pixels, guessed
    assert best > -0.8 * chance and best > float(rows[0]["val_elbo"]) + 3  # learning the mirror
    c = condition(model.decoder.net, data.test.x, given)  # the CVAE's condition from the baseline
    assert torch.equal(c[:, given], data.test.x[:, given])
    assert ((c - data.test.x)[:, ~given].abs() < 0.5).float().mean() > 0.6  # guesses beat coin flips
