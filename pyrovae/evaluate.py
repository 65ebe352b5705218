"""Evaluation: ELBO terms, importance-sampled log-likelihood, KL per dimension, active units.

All figures are in nats per datum and are computed at β = 1 whatever β the model trained with:
log-densities are read unscaled from ``poutine.trace`` s of the model and guide, so any prior,
guide or likelihood that follows the protocol is evaluated the same way.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from torch import Tensor
from torch.distributions import kl_divergence

from .data import Split
from .models import VAE

#: Decoder outputs (particles × batch × pixels) held at once by :func:`log_likelihood`.
MAX_ELEMENTS = 2**23


def _traces(vae: VAE, x: Tensor, y: Tensor | None):
    guide_tr = poutine.trace(vae.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, y)
    return model_tr, guide_tr


def _site_log_prob(site) -> Tensor:
    return site["fn"].log_prob(site["value"])  # unscaled: β does not enter evaluation


@torch.no_grad()
def elbo_terms(vae: VAE, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-datum reconstruction ``log p(x|z)`` (one z ~ q) and ``KL(q(z|x) || p(z))``.

    The KL is analytic where torch knows it for the guide/prior pair, otherwise the one-sample
    estimate ``log q(z|x) - log p(z)`` at the same z. ELBO = reconstruction - KL.

    :returns: two tensors of shape ``(batch,)``.
    """
    model_tr, guide_tr = _traces(vae, x, y)
    recon = _site_log_prob(model_tr.nodes["x"])
    q, p = guide_tr.nodes["z"]["fn"], model_tr.nodes["z"]["fn"]
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        kl = _site_log_prob(guide_tr.nodes["z"]) - _site_log_prob(model_tr.nodes["z"])
    return recon, kl.expand_as(recon)


@torch.no_grad()
def log_weights(vae: VAE, x: Tensor, y: Tensor | None, k: int) -> Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``k`` guide samples per datum, shape ``(k, batch)``.

    The encoder runs once; the samples are drawn in a vectorized ``"particles"`` plate.
    """
    with pyro.plate("particles", k, dim=-2):
        model_tr, guide_tr = _traces(vae, x, y)
    lw = 0.0
    for name, site in model_tr.nodes.items():
        if site["type"] == "sample":
            lw = lw + _site_log_prob(site)
            if not site["is_observed"]:
                lw = lw - _site_log_prob(guide_tr.nodes[name])
    return lw


@torch.no_grad()
def log_likelihood(vae: VAE, x: Tensor, y: Tensor | None = None, k: int = 1000) -> Tensor:
    """Importance-sampled estimate of ``log p(x)`` with ``k`` samples from the guide (the IWAE
    bound of Burda et al. 2015; it rises to ``log p(x)`` as ``k`` grows).

    Samples are drawn in chunks so memory stays bounded whatever ``k`` is.

    :returns: shape ``(batch,)``, nats.
    """
    per_sample = x.shape[0] * math.prod(vae.x_shape)
    chunk = max(1, min(k, MAX_ELEMENTS // per_sample))
    lws = [log_weights(vae, x, y, min(chunk, k - i)) for i in range(0, k, chunk)]
    return torch.logsumexp(torch.cat(lws), dim=0) - math.log(k)


@torch.no_grad()
def posterior_mean(vae: VAE, x: Tensor, y: Tensor | None = None, samples: int = 64) -> Tensor:
    """``E_q[z | x]``, analytic where the guide knows its mean, else a Monte Carlo average."""
    q = vae.encode(x, y)
    try:
        return q.mean
    except NotImplementedError:
        return q.sample((samples,)).mean(0)


@torch.no_grad()
def kl_per_dim(vae: VAE, x: Tensor, y: Tensor | None = None) -> Tensor | None:
    """Mean analytic KL of each latent dimension over ``x``, shape ``(z_dim,)``; ``None`` unless
    both q and p factorize into univariate Normals (otherwise a per-dimension KL is undefined)."""
    q, p = vae.encode(x, y), vae.prior_dist(y, like=x)
    if not (isinstance(q, Independent) and isinstance(p, Independent)):
        return None
    if not (isinstance(q.base_dist, Normal) and isinstance(p.base_dist, Normal)):
        return None
    return kl_divergence(q.base_dist, p.base_dist).reshape(-1, vae.z_dim).mean(0)


def active_units(means: Tensor, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies over the data with variance above ``threshold``
    (Burda et al. 2015). :param means: posterior means, shape ``(N, z_dim)``."""
    return int((means.var(0) > threshold).sum())


@torch.no_grad()
def evaluate(
    vae: VAE,
    data: Split,
    k: int = 1000,
    n_ll: int | None = None,
    batch_size: int = 500,
    ll_batch_size: int = 100,
    progress: bool = False,
) -> dict:
    """ELBO on all of ``data`` and the importance-sampled ``log p(x)`` on its first ``n_ll``.

    :returns: a dict of mean nats per datum (``elbo``, ``recon``, ``kl``, ``log_likelihood``, and
        ``elbo_ll_images``, the ELBO over the images that ``log_likelihood`` covers) and
        ``k``, ``n_images``, ``n_ll_images``, ``active_units``, ``kl_per_dim``.
    """
    recon, kl, means, kls = [], [], [], []
    for i in range(0, len(data), batch_size):
        part = data.subset(slice(i, i + batch_size))
        r, c = elbo_terms(vae, part.x, part.y)
        recon.append(r)
        kl.append(c)
        means.append(posterior_mean(vae, part.x, part.y))
        d = kl_per_dim(vae, part.x, part.y)
        if d is not None:
            kls.append(d * len(part))
    recon, kl = torch.cat(recon), torch.cat(kl)
    n_ll = len(data) if n_ll is None else min(n_ll, len(data))
    ll = []
    rng = range(0, n_ll, ll_batch_size)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=f"log p(x), K={k}", unit="batch")
    for i in rng:
        part = data.subset(slice(i, min(i + ll_batch_size, n_ll)))
        ll.append(log_likelihood(vae, part.x, part.y, k))
    return {
        "elbo": (recon - kl).mean().item(),
        "elbo_ll_images": (recon - kl)[:n_ll].mean().item(),
        "recon": recon.mean().item(),
        "kl": kl.mean().item(),
        "log_likelihood": torch.cat(ll).mean().item(),
        "k": k,
        "n_images": len(data),
        "n_ll_images": n_ll,
        "active_units": active_units(torch.cat(means)),
        "kl_per_dim": (torch.stack(kls).sum(0) / len(data)).tolist() if kls else None,
    }
