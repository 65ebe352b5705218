"""Posterior inspection: the functions behind ``pyrovae inspect`` and the notebooks.

Each takes a model and tensors on the model's device, or arrays (NumPy's), in any floating dtype:
they are converted to the model's device and dtype. They return tensors or distributions there;
:func:`embed` and :func:`anomaly_scores`, which go through whole data sets a batch at a time,
take data anywhere and return results on the data's device (the CPU for an array). Nothing here draws pictures
(see :mod:`pyrovae.plots`). Data are generated and decoded through the model's Pyro program
(``poutine.trace`` / ``condition``, :class:`~pyro.infer.Predictive`), never by calling its
decoder: a hierarchical prior is sampled ancestrally, and a latent code is decoded by
conditioning the program on it. The code of a datum is its guide's first latent site
(``encode``), e.g. ``z`` of a VAE or ``z1`` of a two-layer VAE.
"""

from __future__ import annotations

import pyro
import torch
from numpy.typing import ArrayLike
from pyro import poutine
from pyro.infer import Predictive
from torch import Tensor

from .evaluate import elbo_terms, in_model_dtype, is_point_estimate, log_likelihood, posterior_mean
from .models import VAE


def _as_tensors(x: Tensor | ArrayLike, y: Tensor | ArrayLike | None) -> tuple[Tensor, Tensor | None]:
    """``x`` and ``y`` as tensors, those that are not (NumPy arrays) on the CPU: where whole data
    sets are read a batch at a time, the data stay where they are."""
    return torch.as_tensor(x), None if y is None else torch.as_tensor(y)


def _first_latent(vae: VAE, x: Tensor, y: Tensor | None) -> str:
    """The guide's first latent site: the one ``vae.encode`` describes."""
    from .sites import latent_sites

    return latent_sites(vae, x, y)[0]


def _program_mean(vae: VAE, n: int, y: Tensor | None = None, values: dict | None = None,
                  mean: bool = True) -> Tensor:  # fmt: skip
    """Run the model for ``n`` data (latents ``values`` given, the others drawn from their priors in
    the program's order) and return the mean of p(x | ...) (or a draw of it, ``mean=False``).

    The ``"x"`` site is observed at a placeholder, so reading its distribution draws nothing."""
    ref = vae._reference()
    program = poutine.condition(vae.model, data=values) if values else vae.model
    placeholder = ref.new_zeros(n, *vae.x_shape)
    px = poutine.trace(program).get_trace(placeholder, y).nodes["x"]["fn"]
    return px.mean if mean else px.sample()


def encode(vae: VAE, x: Tensor, y: Tensor | None = None) -> pyro.distributions.Distribution:
    """q(z | x, y): batch shape ``(batch,)``, event shape ``(z_dim,)``."""
    return vae.encode(in_model_dtype(vae, x), y)


@torch.no_grad()
def posterior_samples(vae: VAE, x: Tensor, y: Tensor | None = None, num_samples: int = 16) -> Tensor:
    """z ~ q(z | x, y), shape ``(num_samples, batch, z_dim)``."""
    return vae.encode(in_model_dtype(vae, x), y).sample((num_samples,))


@torch.no_grad()
def reconstruct(vae: VAE, x: Tensor, y: Tensor | None = None, sample: bool = False) -> Tensor:
    """The mean of p(x | z) at the posterior mean of z, or at one posterior sample (``sample``);
    with ``sample`` the pixels are drawn from p(x | z) too."""
    x = in_model_dtype(vae, x)
    site = _first_latent(vae, x, y)
    z = vae.encode(x, y).sample() if sample else posterior_mean(vae, x, y)
    return _program_mean(vae, len(x), y, {site: z}, mean=not sample)


@torch.no_grad()
def sample_prior(vae: VAE, n: int | None = None, y: Tensor | None = None, mean: bool = True) -> Tensor:
    """New data from the model: z ~ p(z | y), then the mean of p(x | z, y) (or a draw of it),
    by running the Pyro program forward, so a hierarchical prior samples ancestrally.

    Every datum gets its own z, whether the prior ignores ``y`` (batch shape ``()``, as N(0, I)
    in a conditional VAE) or uses it (batch shape ``(n,)``).

    :param n: number of data; default ``len(y)``, or 64 for an unconditional model.
    :param y: class labels (or conditioning tensors) for a conditional model, one per datum.
    """
    if y is not None:
        y = torch.as_tensor(y, device=vae._reference().device)
        if n is not None and n != y.shape[0]:
            raise ValueError(f"sample_prior: n={n} but {y.shape[0]} labels y were given")
        n = y.shape[0]
    elif n is None:
        n = 64
    return _program_mean(vae, n, y, mean=mean)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows ``a`` and ``b`` at fractions ``t`` (White 2016)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    t = t[:, None]
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


@torch.no_grad()
def interpolate(
    vae: VAE, x1: Tensor, x2: Tensor, steps: int = 10, method: str = "linear", y: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Decode a path between the posterior means of two data ``x1`` and ``x2`` (each one datum).

    :param method: ``"linear"`` or ``"spherical"``.
    :returns: the latent path ``(steps, z_dim)`` (endpoints equal the encodings) and the decoded
        means ``(steps, *x_shape)``.
    """
    pair = torch.stack([in_model_dtype(vae, x1), in_model_dtype(vae, x2)])
    y = None if y is None else torch.as_tensor(y, device=pair.device)
    yy = None if y is None else y.reshape(1).expand(2)
    za, zb = posterior_mean(vae, pair, yy)
    t = torch.linspace(0, 1, steps, device=pair.device, dtype=pair.dtype)
    if method == "linear":
        path = za + t[:, None] * (zb - za)
    elif method == "spherical":
        path = slerp(za.expand(steps, -1), zb.expand(steps, -1), t)
    else:
        raise ValueError(f"unknown interpolation {method!r}; use 'linear' or 'spherical'")
    ys = None if y is None else y.reshape(1).expand(steps)
    return path, _program_mean(vae, steps, ys, {_first_latent(vae, pair, yy): path})


@torch.no_grad()
def traverse(
    vae: VAE, x: Tensor, dims: list[int], values: Tensor | None = None, y: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Vary each chosen latent dimension of one datum's posterior mean over ``values``.

    :returns: latents ``(len(dims), len(values), z_dim)`` and decoded means
        ``(len(dims), len(values), *x_shape)``.
    """
    x = in_model_dtype(vae, x)
    y = None if y is None else torch.as_tensor(y, device=x.device)
    values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values)
    values = values.to(x)
    z0 = posterior_mean(vae, x[None], None if y is None else y.reshape(1))[0]  # (z_dim,)
    z = z0.expand(len(dims), len(values), -1).clone()
    for i, d in enumerate(dims):
        z[i, :, d] = values
    n = len(dims) * len(values)
    ys = None if y is None else y.reshape(1).expand(n)
    site = _first_latent(vae, x[None], None if y is None else y.reshape(1))
    out = _program_mean(vae, n, ys, {site: z.reshape(n, -1)})  # (n, *x_shape)
    return z, out.reshape(len(dims), len(values), *out.shape[1:])


@torch.no_grad()
def posterior_predictive(
    vae: VAE, x: Tensor, y: Tensor | None = None, num_samples: int = 16
) -> dict[str, Tensor]:
    """Replicated data x_rep ~ p(x | z), z ~ q(z | x), through :class:`pyro.infer.Predictive`.

    :returns: ``{"z": (num_samples, batch, z_dim), "x": (num_samples, batch, *x_shape)}``, and
        every other latent site of the guide likewise.
    """
    from .sites import latent_sites

    x = in_model_dtype(vae, x)
    model = poutine.uncondition(vae.model)  # sample "x" instead of clamping it to the data
    sites = (*latent_sites(vae, x, y), "x")
    predictive = Predictive(model, guide=vae.guide, num_samples=num_samples, return_sites=sites)
    return predictive(x, y)


@torch.no_grad()
def embed(vae: VAE, x: Tensor, y: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """Posterior means of a whole data set, shape ``(N, z_dim)``, on ``x``'s device: each batch is
    encoded on the model's device, so a data set larger than GPU memory can stay on the CPU."""
    x, y = _as_tensors(x, y)
    device, parts = vae._reference().device, []
    for i in range(0, x.shape[0], batch_size):
        yy = None if y is None or not getattr(vae, "num_classes", 0) else y[i : i + batch_size].to(device)
        parts.append(posterior_mean(vae, x[i : i + batch_size].to(device), yy).to(x.device))
    return torch.cat(parts)


@torch.no_grad()
def anomaly_scores(
    vae: VAE, x: Tensor, y: Tensor | None = None, k: int = 100, batch_size: int = 100
) -> dict[str, Tensor]:
    """Per-datum anomaly scores: ``neg_elbo`` (-ELBO) and ``neg_log_likelihood``
    (importance-sampled -log p(x) with ``k`` samples); higher means more anomalous.

    A point-estimate guide (an autoencoder) has neither: its scores are ``neg_recon``
    (-log p(x|z*)) and ``neg_log_joint`` (-log p(x, z*)).
    """
    x, y = _as_tensors(x, y)
    point, device = is_point_estimate(vae), vae._reference().device
    first, second = [], []
    for i in range(0, x.shape[0], batch_size):  # batches on the model's device, scores on x's
        xb = x[i : i + batch_size].to(device)
        yb = None if y is None or not getattr(vae, "num_classes", 0) else y[i : i + batch_size].to(device)
        recon, kl = elbo_terms(vae, xb, yb)
        if point:
            first.append((-recon).to(x.device))
            second.append((kl - recon).to(x.device))
        else:
            first.append((kl - recon).to(x.device))
            second.append(-log_likelihood(vae, xb, yb, k).to(x.device))
    names = ("neg_recon", "neg_log_joint") if point else ("neg_elbo", "neg_log_likelihood")
    return {names[0]: torch.cat(first), names[1]: torch.cat(second)}
