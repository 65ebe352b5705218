"""Evaluation: ELBO terms, importance-sampled log-likelihood, KL per dimension, active units.

All figures are in nats per datum and are computed at β = 1 whatever β the model trained with:
log-densities are read unscaled from ``poutine.trace`` s of the model and guide, so any prior,
guide or likelihood that follows the protocol is evaluated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import pyro
import torch
from numpy.typing import ArrayLike
from pyro import poutine
from pyro.distributions import Independent, Normal
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence

from .data import Split
from .errors import ConfigError
from .models import VAE
from .sites import latent_sites, site_kl_per_dim, site_log_prob, site_means, traced_kl_terms, traces

#: Decoder outputs (particles × batch × pixels) held at once by :func:`log_likelihood`.
MAX_ELEMENTS = 2**23


def in_model_dtype(vae: VAE, x: Tensor | ArrayLike) -> Tensor:
    """``x`` in the model's floating dtype: data of another (NumPy's float64, say) would fail in the
    first layer with torch's "mat1 and mat2 must have the same dtype". An array that is not a
    tensor (a NumPy array, a list) becomes one on the model's device."""
    ref = next((p for p in vae.parameters() if p.is_floating_point()), None)
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x, device=None if ref is None else ref.device)
    return x.to(ref.dtype) if ref is not None and x.is_floating_point() else x


@contextmanager
def cached_prior(vae: VAE) -> Iterator[None]:
    """The prior's ``cached()`` context where it has one (the VampPrior: its pseudo-inputs'
    posteriors computed once for all the calls inside, which must be made without gradients)."""
    cached = getattr(getattr(vae, "prior", None), "cached", None)
    with cached() if cached is not None else nullcontext():
        yield


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode (dropout off) inside, its former mode restored after."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@torch.no_grad()
def elbo_terms(vae: VAE, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-datum reconstruction ``log p(x|z)`` (z ~ q, one draw) and ``KL(q(z|x) || p(z))``
    summed over every latent site (see :func:`~pyrovae.sites.kl_terms`). ELBO = reconstruction - KL.

    :returns: two tensors of shape ``(batch,)``.

    A model with its own ``elbo_terms`` (the semi-supervised VAE, which sums over its discrete
    label) computes them itself.
    """
    x = in_model_dtype(vae, x)
    if hasattr(vae, "elbo_terms"):
        return vae.elbo_terms(x, y)
    recon, kls = traced_kl_terms(*traces(vae, x, y))
    return recon, sum(kls.values())


@torch.no_grad()
def log_likelihood(vae: VAE, x: Tensor, y: Tensor | None = None, k: int = 1000) -> Tensor:
    """Importance-sampled estimate of ``log p(x)`` with ``k`` samples from the guide (the IWAE
    bound of Burda et al. 2015; it rises to ``log p(x)`` as ``k`` grows).

    The guide runs once for all ``k`` samples (in a vectorized ``"particles"`` plate); the model
    then scores them in chunks of at most :data:`MAX_ELEMENTS` decoder outputs, so memory stays
    bounded whatever ``k`` is and the estimate does not depend on the chunking.

    :returns: shape ``(batch,)``, nats.
    """
    _check_counts(k)
    with cached_prior(vae):
        return _log_likelihood(vae, in_model_dtype(vae, x), y, k)


def _log_likelihood(vae: VAE, x: Tensor, y: Tensor | None, k: int) -> Tensor:
    with pyro.plate("particles", k, dim=-2):
        guide_tr = poutine.trace(vae.guide).get_trace(x, y)
    latent = {n: s for n, s in guide_tr.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}  # fmt: skip
    log_q = sum(site_log_prob(s) for s in latent.values())  # (k, batch)
    chunk = max(1, min(k, MAX_ELEMENTS // (x.shape[0] * math.prod(vae.x_shape))))
    log_p = []
    for i in range(0, k, chunk):
        values = {n: s["value"][i : i + chunk] for n, s in latent.items()}
        with pyro.plate("particles", min(chunk, k - i), dim=-2):
            model_tr = poutine.trace(poutine.condition(vae.model, data=values)).get_trace(x, y)
        sites = [s for s in model_tr.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
        log_p.append(sum(site_log_prob(s) for s in sites))
    return torch.logsumexp(torch.cat(log_p) - log_q, dim=0) - math.log(k)


@torch.no_grad()
def posterior_mean(vae: VAE, x: Tensor, y: Tensor | None = None, samples: int = 64) -> Tensor:
    """``E_q[z | x]``, analytic where the guide knows its mean, else a Monte Carlo average."""
    return posterior_mean_and_noise(vae, x, y, samples)[0]


@torch.no_grad()
def posterior_mean_and_noise(
    vae: VAE, x: Tensor, y: Tensor | None = None, samples: int = 64
) -> tuple[Tensor, Tensor]:
    """``E_q[z | x]`` and the variance of that estimate per datum and dimension: zero where the
    guide knows its mean analytically, ``s² / samples`` (``s²`` the sample variance) where the
    mean is a Monte Carlo average. Both of shape ``(batch, z_dim)``."""
    q = vae.encode(in_model_dtype(vae, x), y)
    try:
        mean = q.mean
        return mean, torch.zeros_like(mean)
    except NotImplementedError:
        z = q.sample((samples,))
        return z.mean(0), z.var(0) / samples


@torch.no_grad()
def kl_per_dim(vae: VAE, x: Tensor, y: Tensor | None = None) -> Tensor | None:
    """Mean analytic KL of each latent dimension over ``x``, shape ``(z_dim,)``; ``None`` unless
    both q and p factorize into univariate Normals (otherwise a per-dimension KL is undefined)."""
    x = in_model_dtype(vae, x)
    if not hasattr(vae, "prior_dist"):  # a model of several latent sites: its first
        return next(iter(site_kl_per_dim(vae, x, y).values()))
    q, p = vae.encode(x, y), vae.prior_dist(y, like=x)
    if not (isinstance(q, Independent) and isinstance(p, Independent)):
        return None
    if not (isinstance(q.base_dist, Normal) and isinstance(p.base_dist, Normal)):
        return None
    return kl_divergence(q.base_dist, p.base_dist).reshape(-1, vae.z_dim).mean(0)


def active_units(means: Tensor, threshold: float = 0.01, noise: Tensor | None = None) -> int:
    """Dimensions whose posterior mean varies over the data with variance above ``threshold``
    (Burda et al. 2015).

    :param means: posterior means, shape ``(N, z_dim)``.
    :param noise: the variance of each mean's estimate, shape ``(N, z_dim)``, when the means are
        Monte Carlo averages (see :func:`posterior_mean_and_noise`): their spread over the data
        then includes that noise on average, which is subtracted so collapsed units stay inactive.
    """
    if means.shape[-1] == 0 or len(means) < 2:
        return 0  # no latent dimensions (a decoder-only baseline), or no spread to measure
    var = means.var(0)
    if noise is not None:
        var = var - noise.mean(0)
    return int((var > threshold).sum())


#: A hook ``(x, y) -> y`` that makes each batch's condition from the batch (e.g. a structured
#: CVAE's visible pixels); :func:`~pyrovae.fit.fit` applies it to training batches after
#: binarization and to validation.
Prepare = Callable[[Tensor, "Tensor | None"], "Tensor | None"]


@torch.no_grad()
def validate(
    vae: VAE, data: Split, prepare: Prepare | None = None, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean reconstruction and KL per datum (β = 1, eval mode: no dropout) over a split: what
    :func:`~pyrovae.fit.fit` logs as ``val_recon`` and ``val_kl``. ``prepare`` makes each batch's
    condition from ``(x, y)`` (see :data:`Prepare`)."""
    recon, kl = 0.0, 0.0
    with eval_mode(vae):
        for x, y in _batches(data, prepare, batch_size):
            r, k = elbo_terms(vae, x, y)
            recon += r.sum().item()
            kl += k.sum().item()
    return recon / len(data), kl / len(data)


def _batches(data: Split, prepare: Prepare | None, batch_size: int):
    """``(x, y)`` of consecutive batches of a split, ``y`` made by ``prepare`` where given."""
    for i in range(0, len(data), batch_size):
        part = data.subset(slice(i, i + batch_size))
        yield part.x, prepare(part.x, part.y) if prepare else part.y


@torch.no_grad()
def split_active_units(
    vae: VAE, data: Split, prepare: Prepare | None = None, batch_size: int = 1000, samples: int = 64
) -> int:
    """:func:`active_units` of the posterior means over a split (eval mode: no dropout); a guide
    without an analytic mean is averaged over ``samples`` draws per datum, the noise subtracted."""
    with eval_mode(vae):
        parts = [posterior_mean_and_noise(vae, x, y, samples) for x, y in _batches(data, prepare, batch_size)]
    means, noise = zip(*parts, strict=True)
    return active_units(torch.cat(means), noise=torch.cat(noise))


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

    The model is evaluated in eval mode (dropout off), whatever its mode, and given the labels of
    ``data`` its variant evaluates with (:meth:`~pyrovae.variants.Variant.test_labels`): a
    conditional model's, so its figures are of log p(x | y); none for the semi-supervised VAE,
    whose figures sum over y, as ``eval.json``'s do.

    :returns: a dict of mean nats per datum (``elbo``, ``recon``, ``kl``, ``log_likelihood``, and
        ``elbo_ll_images``, the ELBO over the images that ``log_likelihood`` covers) and
        ``k``, ``n_images``, ``n_ll_images``, ``active_units``, ``z_dim``, ``kl_per_dim``. For a
        point-estimate guide (an autoencoder) only ``recon`` (log p(x|z*)), ``log_joint``
        (log p(x, z*)) and the counts: it has no ELBO and no importance-sampled log p(x).
    """
    from .variants import MODELS  # (variants import this module)

    _check_counts(k, n_ll)
    variant = MODELS.get(getattr(vae, "variant", "vae"))
    y = data.y if variant is None or data.y is None else variant.test_labels(vae, data.y)
    data = Split(in_model_dtype(vae, data.x), y, data.factors)  # once, for every figure below
    with cached_prior(vae), eval_mode(vae):
        return _evaluate(vae, data, k, n_ll, batch_size, ll_batch_size, progress)


def _check_counts(k: int, n_ll: int | None = None) -> None:
    if k < 1:
        raise ConfigError(f"k, the importance samples per datum, must be at least 1, got {k}", "k")
    if n_ll is not None and n_ll < 1:
        raise ConfigError(
            f"n_ll, the data log p(x) is estimated on, must be at least 1 (or None: all), got {n_ll}"
        )


def _evaluate(vae: VAE, data: Split, k: int, n_ll: int | None, batch_size: int, ll_batch_size: int,
              progress: bool) -> dict:  # fmt: skip
    first = data.subset(slice(0, batch_size))
    if not hasattr(vae, "elbo_terms") and len(latent_sites(vae, first.x, first.y)) > 1:
        recon, kl, common = _layers(vae, data, batch_size)
    else:
        recon, kl, common = _one_layer(vae, data, batch_size)
    if is_point_estimate(vae):
        # q is a point mass at z*: "recon - kl" is log p(x, z*), neither a bound on log p(x) nor an
        # ELBO, and importance sampling with a point mass is undefined. Report what there is.
        return {
            "model": "autoencoder (point-estimate guide): no ELBO or log p(x)",
            "recon": recon.mean().item(),
            "log_joint": (recon - kl).mean().item(),
            **common,
        }
    n_ll = len(data) if n_ll is None else min(n_ll, len(data))
    ll = []
    rng = range(0, n_ll, ll_batch_size)
    if progress:
        from tqdm import tqdm  # not tqdm.auto: see fit.py

        rng = tqdm(rng, desc=f"log p(x), K={k}", unit="batch", disable=None)  # None: off when no tty
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
        "n_ll_images": n_ll,
        **common,
    }


def _one_layer(vae: VAE, data: Split, batch_size: int) -> tuple[Tensor, Tensor, dict]:
    recon, kl, means, noise, kls = [], [], [], [], []
    for x, y in _batches(data, None, batch_size):
        r, c = elbo_terms(vae, x, y)
        recon.append(r)
        kl.append(c)
        m, v = posterior_mean_and_noise(vae, x, y)
        means.append(m)
        noise.append(v)
        d = kl_per_dim(vae, x, y)
        if d is not None:
            kls.append(d * len(x))
    common = {
        "n_images": len(data),
        "active_units": active_units(torch.cat(means), noise=torch.cat(noise)),
        "z_dim": vae.z_dim,
        "kl_per_dim": (torch.stack(kls).sum(0) / len(data)).tolist() if kls else None,
    }
    return torch.cat(recon), torch.cat(kl), common


def _layers(vae: VAE, data: Split, batch_size: int) -> tuple[Tensor, Tensor, dict]:
    """ELBO terms, and KL, KL per dimension and active units of each latent site (``layers``);
    ``active_units`` and ``z_dim`` are their totals."""
    recon, kls, means, per_dim = [], {}, {}, {}
    for x, y in _batches(data, None, batch_size):
        r, terms = traced_kl_terms(*traces(vae, x, y))
        recon.append(r)
        for name, v in terms.items():
            kls.setdefault(name, []).append(v)
        for name, mv in site_means(vae, x, y).items():
            means.setdefault(name, []).append(mv)
        for name, d in site_kl_per_dim(vae, x, y).items():
            per_dim.setdefault(name, []).append(None if d is None else d * len(x))
    layers = {}
    for name, parts in means.items():
        m, v = (torch.cat(t) for t in zip(*parts, strict=True))
        d = per_dim[name]
        layers[name] = {
            "z_dim": m.shape[-1], "active_units": active_units(m, noise=v),
            "kl": torch.cat(kls[name]).mean().item(),
            "kl_per_dim": None if d[0] is None else (torch.stack(d).sum(0) / len(data)).tolist(),
        }  # fmt: skip
    common = {
        "n_images": len(data),
        "active_units": sum(lay["active_units"] for lay in layers.values()),
        "z_dim": sum(lay["z_dim"] for lay in layers.values()),
        "kl_per_dim": None,
        "layers": layers,
    }
    return torch.cat(recon), sum(torch.cat(v) for v in kls.values()), common


def is_point_estimate(vae: VAE) -> bool:
    """Whether the guide is a point mass (``point_estimate = True``, as :class:`~pyrovae.guides.Delta`):
    then the model is an autoencoder with no ELBO or importance-sampled log p(x)."""
    return bool(getattr(getattr(vae, "guide_net", None), "point_estimate", False))


def summary(res: dict) -> str:
    """One line of an :func:`evaluate` result, in nats per image, naming each figure."""
    units = f"active units {res['active_units']}/{res['z_dim']}"
    if res.get("layers"):
        units += (
            " ("
            + ", ".join(f"{n} {lay['active_units']}/{lay['z_dim']}" for n, lay in res["layers"].items())
            + ")"
        )
    binarized = f"; binarized: {res['binarized']}" if "binarized" in res else ""
    if "elbo" not in res:
        return (
            f"autoencoder (point-estimate guide; no ELBO or log p(x)): reconstruction log p(x|z*) "
            f"{res['recon']:.2f} and log p(x, z*) {res['log_joint']:.2f} nats/image over "
            f"{res['n_images']} images; {units}{binarized}"
        )
    acc = f"test accuracy of q(y|x) {100 * res['test_accuracy']:.2f} %; " if "test_accuracy" in res else ""
    of = f" of the classes it was trained on, {res['test_classes']}" if res.get("test_classes") else ""
    return acc + (
        f"test ELBO {res['elbo']:.2f} nats/image over {res['n_images']} images{of}; importance-sampled "
        f"log p(x) {res['log_likelihood']:.2f} nats/image (K={res['k']}, first {res['n_ll_images']} "
        f"images, whose ELBO is {res['elbo_ll_images']:.2f}); {units}{binarized}"
    )
