"""Every latent site of a model, read from ``poutine.trace`` s of its model and guide: the site
names, the KL of each site (analytic where that is the ELBO's term), its KL per dimension and its
posterior mean. :mod:`pyrovae.evaluate` and :mod:`pyrovae.posterior` use these, so a model with
several latent sites (a hierarchical VAE) is evaluated and inspected site by site.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence


def traces(vae, x: Tensor, y: Tensor | None):
    """``(model_trace, guide_trace)``: one draw of the guide, and the model replayed on it."""
    guide_tr = poutine.trace(vae.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
    return model_tr, guide_tr


def site_log_prob(site) -> Tensor:
    return site["fn"].log_prob(site["value"])  # unscaled: β does not enter evaluation


def latent_names(trace) -> list[str]:
    """Latent sample sites of a trace, in the order they were sampled."""
    return [n for n, s in trace.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]  # fmt: skip


def analytic_kl_is_exact(name: str, model_order: list[str], guide_order: list[str]) -> bool:
    """Whether the analytic KL of site ``name`` is exact at the guide's samples: when every
    latent the model draws before it (its prior's possible parents) the guide draws before it too,
    q and p of the site are fixed given what came before. Not so for p(z1 | z2) with q(z2 | z1)."""
    return set(model_order[: model_order.index(name)]) <= set(guide_order[: guide_order.index(name)])


@torch.no_grad()
def kl_terms(vae, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
    """Per-datum ``KL(q || p)`` of every latent site, shape ``(batch,)`` each, at one draw of the
    guide: analytic where torch knows it for the site's pair and it is exact (see
    :func:`analytic_kl_is_exact`), else the one-sample estimate ``log q(z) - log p(z)``."""
    return traced_kl_terms(*traces(vae, x, y))[1]


def traced_kl_terms(model_tr, guide_tr) -> tuple[Tensor, dict[str, Tensor]]:
    """``(log p(x | ...), {site: KL})`` per datum from a pair of :func:`traces`."""
    recon = sum(site_log_prob(s) for s in model_tr.nodes.values()
                if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s))  # fmt: skip
    model_order, guide_order = latent_names(model_tr), latent_names(guide_tr)
    kls = {}
    for name in model_order:
        q, p = guide_tr.nodes[name]["fn"], model_tr.nodes[name]["fn"]
        kl = None
        if analytic_kl_is_exact(name, model_order, guide_order):
            try:
                kl = kl_divergence(q, p)
            except NotImplementedError:
                pass
        if kl is None:
            kl = site_log_prob(guide_tr.nodes[name]) - site_log_prob(model_tr.nodes[name])
        kls[name] = kl.expand_as(recon)
    return recon, kls


@torch.no_grad()
def site_kl_per_dim(vae, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor | None]:
    """:func:`kl_per_dim` of every latent site, in the guide's order: per dimension the mean over
    ``x`` of the analytic KL where it is exact (see :func:`analytic_kl_is_exact`), else of the one-sample
    ``log q(z_d) - log p(z_d)``; ``None`` for a site whose q or p is not a product of Normals."""
    model_tr, guide_tr = traces(vae, x, y)
    model_order, guide_order = latent_names(model_tr), latent_names(guide_tr)
    out = {}
    for name in guide_order:
        site = guide_tr.nodes[name]
        q, p = site["fn"], model_tr.nodes[name]["fn"]
        if not (isinstance(q, Independent) and isinstance(p, Independent)
                and isinstance(q.base_dist, Normal) and isinstance(p.base_dist, Normal)):  # fmt: skip
            out[name] = None
            continue
        if analytic_kl_is_exact(name, model_order, guide_order):
            kl = kl_divergence(q.base_dist, p.base_dist)
        else:
            kl = q.base_dist.log_prob(site["value"]) - p.base_dist.log_prob(site["value"])
        out[name] = kl.reshape(-1, q.event_shape[-1]).mean(0)
    return out


@torch.no_grad()
def site_means(
    vae, x: Tensor, y: Tensor | None = None, samples: int = 64
) -> dict[str, tuple[Tensor, Tensor]]:
    """``E_q[z | x]`` of every latent site and the variance of that estimate, each ``(batch, dim)``.

    The guide runs ``samples`` times in a vectorized plate and each draw's site mean (analytic
    where the site's distribution knows it, else the draw) is averaged: exact for a first layer
    q(z1|x), a Rao-Blackwellized Monte Carlo average for a later q(z2|z1)."""
    with pyro.plate("particles", samples, dim=-2):
        tr = poutine.trace(vae.guide).get_trace(x, y)
    out = {}
    for name in latent_names(tr):
        site = tr.nodes[name]
        try:
            m = site["fn"].mean.expand_as(site["value"])
        except NotImplementedError:
            m = site["value"]
        m = m.reshape(samples, x.shape[0], -1)  # (samples, batch, dim)
        out[name] = m.mean(0), m.var(0) / samples
    return out


def latent_sites(vae, x: Tensor, y: Tensor | None = None) -> list[str]:
    """Names of the latent sites the guide samples for ``x``, in order (the random streams are
    left as they were, so asking changes no later estimate)."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        return latent_names(poutine.trace(vae.guide).get_trace(x, y))
