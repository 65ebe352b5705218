"""Structured-output prediction with a conditional VAE (Sohn et al. 2015): complete an image from
the part of it that is given, the task of Pyro's CVAE tutorial.

Generative story for an image ``x`` whose pixels are split by a boolean mask ``given``::

    c    = given * x + (1 - given) * sigmoid(baseline(hide(x)))   # condition: the visible pixels,
                                                                  # hidden ones filled by a guess
    z    ~ p(z | c)                                               # prior network (site "z")
    x_h  ~ p(x | z, c), scored on the hidden pixels only          # masked likelihood (site "x")

with the guide ``q(z | x, c)``. The model is an ordinary :class:`~pyrovae.models.VAE` whose ``y`` is
the tensor ``c``: the conditional prior, guide and decoder are the package's own components, and
:class:`~pyrovae.likelihoods.Masked` scores only the hidden pixels. The deterministic baseline that
makes the first guess (and is the comparison the tutorial draws) is :class:`BaselineNet`;
:func:`baseline_model` makes it a VAE with a zero-dimensional latent, whose ELBO is exactly
``log p(x_hidden | hide(x))``, so :func:`pyrovae.fit.fit` trains both.

These are the parts; the model of ``pyrovae train --model structured`` is
:class:`pyrovae.variants.structured.StructuredCVAE`, which holds the baseline and the CVAE and
trains both in one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from .guides import DiagonalNormal
from .likelihoods import Bernoulli, Likelihood, Masked
from .models import VAE
from .nets import MLPDecoder, MLPEncoder, mlp
from .priors import ConditionalNormal

#: Value that marks a hidden pixel in the baseline's input, as in Pyro's tutorial.
HIDDEN = -1.0


def quadrant_mask(n_given: int, height: int = 28, width: int = 28) -> Tensor:
    """Which pixels are given when ``n_given`` quadrants are visible, shape ``(1, H, W)``.

    As in Pyro's tutorial: 1 gives the bottom-left quadrant, 2 the left half, 3 all but the
    bottom-right quadrant.

    >>> quadrant_mask(3, 4, 4)[0].int().tolist()
    [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    """
    if n_given not in (1, 2, 3):
        raise ValueError(f"n_given must be 1, 2 or 3 quadrants, got {n_given}")
    given = torch.zeros(1, height, width, dtype=torch.bool)
    given[:, height // 2 :, : width // 2] = True
    if n_given >= 2:
        given[:, :, : width // 2] = True
    if n_given == 3:
        given[:, : height // 2, :] = True
    return given


def hide(x: Tensor, given: Tensor) -> Tensor:
    """``x`` with every pixel that is not given replaced by :data:`HIDDEN`."""
    return torch.where(given, x, x.new_tensor(HIDDEN))


class BaselineNet(nn.Module):
    """The deterministic predictor: an MLP from the hidden-marked image to one logit per pixel."""

    def __init__(
        self, x_shape: Sequence[int], hidden: Sequence[int] = (500, 500), activation: str = "relu"
    ) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        d = math.prod(self.x_shape)
        self.net = mlp([d, *hidden, d], activation, final_activation=False)
        self.out = self.net[-1]  # so VAE.init_output_bias-style initialization can reach it

    def forward(self, x_hidden: Tensor) -> Tensor:
        return self.net(x_hidden.reshape(x_hidden.shape[0], -1)).reshape(-1, *self.x_shape)


class _OnCondition(nn.Module):
    """A decoder ``(z, c) -> baseline(c)`` that ignores a zero-dimensional ``z``."""

    def __init__(self, net: BaselineNet) -> None:
        super().__init__()
        self.net = net
        self.out = net.out  # so VAE.init_output_bias reaches the output layer

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        return self.net(c)  # (batch, *x_shape)


class _NoLatent(PyroModule):
    """p(z) and q(z | x, c) over a zero-dimensional ``z``: log-densities and KL are 0."""

    def forward(self, x: Tensor | None = None, y: Tensor | None = None) -> dist.Distribution:
        like = x if x is not None else y
        return dist.Normal(like.new_zeros(like.shape[0], 0), 1.0).to_event(1)  # (batch, 0)


def baseline_model(x_shape: Sequence[int], given: Tensor, hidden: Sequence[int] = (500, 500),
                   activation: str = "relu", likelihood: Likelihood | None = None) -> VAE:  # fmt: skip
    """The deterministic baseline as a :class:`~pyrovae.models.VAE` with no latent dimensions:
    ``x_hidden ~ p(x | baseline(c))`` with ``c = hide(x, given)`` passed as the model's ``y``, so
    its ELBO is the masked log-likelihood and :func:`pyrovae.fit.fit` trains it like the CVAE.

    Its network is ``model.decoder.net`` (a :class:`BaselineNet`), for :func:`condition`.

    >>> import pyro
    >>> given = quadrant_mask(2, 4, 4)
    >>> m = baseline_model((1, 4, 4), given, (8,))
    >>> x = torch.ones(3, 1, 4, 4)
    >>> neg_elbo = pyro.infer.Trace_ELBO().loss(m.model, m.guide, x, hide(x, given))
    >>> nll = -m.decode(torch.zeros(3, 0), hide(x, given)).log_prob(x).sum()
    >>> bool(torch.isclose(torch.tensor(neg_elbo), nll))
    True
    """
    x_shape = tuple(x_shape)
    base = likelihood if likelihood is not None else Bernoulli(x_shape)
    return VAE(x_shape, 0, prior=_NoLatent(), guide=_NoLatent(),
               decoder=_OnCondition(BaselineNet(x_shape, hidden, activation)),
               likelihood=Masked(base, ~given.bool()), condition_shape=x_shape)  # fmt: skip


@torch.no_grad()
def condition(baseline: BaselineNet, x: Tensor, given: Tensor) -> Tensor:
    """The CVAE's condition ``c``: given pixels of ``x``, the baseline's guess elsewhere."""
    guess = torch.sigmoid(baseline(hide(x, given)))
    return torch.where(given, x, guess)


def structured_cvae(
    x_shape: Sequence[int],
    given: Tensor,
    z_dim: int = 200,
    hidden: Sequence[int] = (500, 500),
    activation: str = "relu",
    likelihood: Likelihood | None = None,
) -> VAE:
    """A :class:`~pyrovae.models.VAE` predicting the pixels outside ``given`` from the condition
    ``c`` (see the module docstring); Pyro's tutorial uses ``z_dim=200`` and two layers of 500.

    :param likelihood: family of each pixel, masked to the hidden ones; default Bernoulli.
    """
    x_shape = tuple(x_shape)
    c_dim = math.prod(x_shape)
    base = likelihood if likelihood is not None else Bernoulli(x_shape)
    return VAE(
        x_shape,
        z_dim,
        prior=ConditionalNormal(z_dim, c_dim, hidden, activation),
        guide=DiagonalNormal(MLPEncoder(x_shape, hidden, activation, c_dim), z_dim),
        decoder=MLPDecoder(x_shape, z_dim, hidden, activation, c_dim),
        likelihood=Masked(base, ~given.bool()),
        condition_shape=x_shape,
    )


__all__ = ["quadrant_mask", "hide", "BaselineNet", "baseline_model", "condition", "structured_cvae", "HIDDEN"]
