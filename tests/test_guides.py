"""Guides: normalized densities that match their samplers, and the point-estimate guide."""

import pytest
import torch
from pyro import poutine

from pyrovae.build import build_model
from pyrovae.guides import GUIDES


@pytest.mark.parametrize(
    "guide",
    [g for g, G in GUIDES.items() if not getattr(G, "point_estimate", False)]
    + ["lowrank"],  # a user's guide, from conftest
)
def test_guide_density_normalized_and_matches_its_samples(
    guide, check_density, user_components, component_config
):
    vae = build_model(component_config(guide=guide), (1, 4, 4)).double()
    with torch.no_grad():
        for p in vae.guide_net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    samples = vae.encode(x).sample((20000,))[:, 0]
    check_density(lambda zz: vae.encode(x.expand(len(zz), 1, 4, 4)).log_prob(zz), samples)  # one q per point


def test_delta_guide_is_a_regularized_autoencoder(component_config, component_data):
    vae = build_model(component_config(guide="delta"), (1, 4, 4))
    x = component_data("bernoulli", (1, 4, 4))
    tr = poutine.trace(vae.guide).get_trace(x)
    tr.compute_log_prob()
    assert torch.all(tr.nodes["z"]["log_prob"] == 0)  # log q = 0: loss is -log p(x|z) - log p(z)
