"""The variational autoencoder as a Pyro program.

Generative story, for each datum ``n`` in the ``"data"`` plate::

    z_n ~ p(z | y_n)                  # site "z", its density scaled by beta
    x_n ~ p(x | decoder(z_n, y_n))    # site "x", observed

and the amortized guide ``z_n ~ q(z | x_n, y_n)`` (site ``"z"``, scaled by the same beta), so
an ELBO of the pair is ``E_q[log p(x|z)] - beta * KL(q || p)``. ``beta`` is an argument of
``model`` and ``guide`` (default: the ``beta`` the VAE was built with, 1 unless given). The
prior, guide, likelihood and decoder are separate objects, so changing one family means passing
one other object. ``y`` is optional and only used when the model is conditional.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, pyro_method
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from .guides import DiagonalNormal
from .likelihoods import Bernoulli, Likelihood
from .nets import MLPDecoder, MLPEncoder
from .priors import StandardNormal

# Each model gets its own Pyro name, so two models in one process never share entries of
# Pyro's global parameter store (which would silently train one model's tensors for the other).
_instances = itertools.count()


class _ScaleLatent(Messenger):
    """Multiply the log-density of sample sites by ``scale``, zero included.

    :func:`pyro.poutine.scale` refuses a scale of 0, which a KL warm-up starts from; the ELBOs
    handle a zero scale as any other (the site adds nothing).
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def _process_message(self, msg) -> None:
        msg["scale"] = self.scale * msg["scale"]


def _num_data(x: Tensor | None, y: Tensor | None, batch_size: int | None) -> int:
    """How many data a call of ``model`` is about: the rows of ``x``, else of ``y`` (labels or
    conditioning tensors: one datum per row), else ``batch_size`` (to generate)."""
    if x is not None:
        return x.shape[0]
    if y is not None:
        return y.shape[0]
    if batch_size is not None:
        return batch_size
    raise ValueError("model() needs data x, labels y or a batch_size")


def _scaled(beta: float | Tensor):
    if isinstance(beta, Tensor):  # a device tensor (a graphed step's schedule): no host read of its value
        return _ScaleLatent(beta)
    return nullcontext() if beta == 1 else _ScaleLatent(beta)


class VAE(PyroModule):
    """A VAE with pluggable prior, guide, likelihood and decoder.

    ``model(x, y=None, beta=None)``: in the plate ``"data"``, ``z ~ prior(y)`` at site ``"z"``
    (scaled by ``beta``), then ``x ~ likelihood(decoder(z, y))`` at site ``"x"``, observed.
    ``guide(x, y=None, beta=None)``: ``z ~ guide(x, y)`` at site ``"z"``, scaled alike, so any
    Pyro ELBO of the pair is ``E_q[log p(x|z)] - beta * KL(q || p)``.

    :param x_shape: shape of one datum, e.g. ``(1, 28, 28)``.
    :param z_dim: number of latent dimensions.
    :param prior: a prior module (see :mod:`pyrovae.priors`); default N(0, I).
    :param guide: a guide module (see :mod:`pyrovae.guides`); default diagonal Normal over an MLP.
    :param likelihood: a likelihood module (see :mod:`pyrovae.likelihoods`); default Bernoulli.
    :param decoder: a network from ``z`` (and ``y``) to ``(*lead, *x_shape)``; default MLP.
    :param num_classes: number of label classes for a conditional VAE; 0 for none.
    :param condition_shape: shape of one real-valued conditioning datum ``y`` (e.g. the visible
        part of an image, for structured-output prediction); exclusive with ``num_classes``.
    :param beta: default weight of the KL term when ``model``/``guide`` are called without one;
        a training loop passes ``beta=`` each step instead (a warm-up schedule, say).
    :param hidden: hidden layer sizes of the default encoder and decoder MLPs.
    :param activation: their activation (a name of :data:`pyrovae.nets.ACTIVATIONS`).
    :param name: prefix of the model's names in Pyro's parameter store; unique by default.

    Works unchanged with plain Pyro inference:

    >>> vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      pyro.infer.Trace_ELBO())
    >>> loss = svi.step(torch.ones(3, 1, 4, 4))
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int = 50,
        *,
        prior: nn.Module | None = None,
        guide: nn.Module | None = None,
        likelihood: Likelihood | None = None,
        decoder: nn.Module | None = None,
        num_classes: int = 0,
        condition_shape: Sequence[int] | None = None,
        beta: float = 1.0,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"vae{next(_instances)}")
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        if num_classes and condition_shape:
            raise ValueError("condition on labels (num_classes) or on tensors (condition_shape), not both")
        self.num_classes = num_classes
        self.condition_shape = tuple(condition_shape) if condition_shape else None
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.prior = prior if prior is not None else StandardNormal(z_dim)
        if guide is None:
            guide = DiagonalNormal(MLPEncoder(x_shape, hidden, activation, self.condition_dim), z_dim)
        self.guide_net = guide
        self.likelihood = likelihood if likelihood is not None else Bernoulli(x_shape)
        if decoder is None:
            decoder = MLPDecoder(x_shape, z_dim, hidden, activation, self.condition_dim)
        self.decoder = decoder
        if self.condition_dim and not getattr(self.prior, "conditionable", True):
            raise ValueError(
                f"{type(self.prior).__name__} cannot be conditioned on a label; choose another "
                "prior (e.g. --prior normal or --prior conditional) or drop --conditional"
            )
        if hasattr(self.prior, "bind"):
            self.prior.bind(self.guide_net)

    # -- helpers ----------------------------------------------------------------------------
    @property
    def condition_dim(self) -> int:
        """Width of the conditioning vector the networks receive; 0 for an unconditional model."""
        return self.num_classes or (math.prod(self.condition_shape) if self.condition_shape else 0)

    def one_hot(self, y: Tensor | None, like: Tensor) -> Tensor | None:
        """The condition as rows of ``condition_dim`` features in ``like``'s dtype: labels one-hot
        encoded, conditioning tensors flattened; ``None`` for an unconditional model.

        Integer labels are class indices, of any shape (Pyro's particle and enumeration dimensions
        included); floating ``y`` whose last dimension is ``num_classes`` is taken as one-hot rows
        already (a float vector of labels is indices). So a batch of ``num_classes`` images drawn
        ``k`` times, indices of shape ``(k, num_classes)``, is not mistaken for one-hot rows.

        Labels outside ``[0, num_classes)`` are refused while Pyro's validation is on (its default;
        training turns it off after its first step); with it off they encode as rows of zeros."""
        if not self.condition_dim:
            return None
        if y is None:
            what = (
                "labels y (class indices)"
                if self.num_classes
                else f"y of shape (batch, {self.condition_shape})"
            )
            raise ValueError(f"this VAE is conditional: pass {what}")
        if not isinstance(y, Tensor):  # labels from NumPy or a list, as the data may come
            y = torch.as_tensor(y, device=like.device)
        if self.condition_shape:
            if tuple(y.shape[1:]) != self.condition_shape:
                raise ValueError(
                    f"condition y has shape {tuple(y.shape)}; expected (batch, *{self.condition_shape})"
                )
            return y.reshape(y.shape[0], -1).to(like.dtype)
        if not y.is_floating_point() or y.dim() == 1 or y.shape[-1] != self.num_classes:
            y = y.long()
            # F.one_hot checks the labels on the host at every call, which a captured step cannot
            # hold: here the check follows Pyro's validation, on for the first step and evaluation
            if is_validation_enabled() and not bool(((y >= 0) & (y < self.num_classes)).all()):
                raise ValueError(f"labels y must be class indices in [0, {self.num_classes}); got values from "
                                 f"{int(y.min())} to {int(y.max())}")  # fmt: skip
            y = y.unsqueeze(-1) == torch.arange(self.num_classes, device=y.device)
        return y.to(like.dtype)

    def _reference(self) -> Tensor:
        # Any floating tensor of the model, to place new tensors on its device and dtype.
        return next(t for t in self.parameters() if t.is_floating_point())

    # -- the Pyro program -----------------------------------------------------------------
    @pyro_method
    def model(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        *,
        batch_size: int | None = None,
        beta: float | None = None,
    ) -> Tensor:
        """p(z | y) p(x | z, y). With ``x=None`` it generates ``batch_size`` (or ``len(y)``) data.

        :param beta: scale of the latent site's density (default ``self.beta``)."""
        n = _num_data(x, y, batch_size)
        like = x if x is not None else self._reference()
        y1 = self.one_hot(y, like)
        # The device saves Pyro a lookup per plate and puts the plate's indices with the data.
        with pyro.plate("data", n, device=like.device):
            with _scaled(self.beta if beta is None else beta):
                z = pyro.sample("z", self.prior(y1))
            out = self.decoder(z, y1)  # (*lead, batch, *x_shape)
            return pyro.sample("x", self.likelihood(out), obs=x)

    @pyro_method
    def guide(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        batch_size: int | None = None,
        beta: float | None = None,
    ) -> Tensor:
        """q(z | x, y), amortized by the encoder; ``beta`` as in :meth:`model`."""
        y1 = self.one_hot(y, x)
        with pyro.plate("data", x.shape[0], device=x.device):
            with _scaled(self.beta if beta is None else beta):
                return pyro.sample("z", self.guide_net(x, y1))

    # -- distributions, for inspection and evaluation ---------------------------------------
    @pyro_method
    def encode(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        """The posterior approximation q(z | x, y), batch shape ``(batch,)``."""
        return self.guide_net(x, self.one_hot(y, x))

    @pyro_method
    def decode(self, z: Tensor, y: Tensor | None = None) -> dist.Distribution:
        """The likelihood p(x | z, y), batch shape ``z.shape[:-1]``."""
        return self.likelihood(self.decoder(z, self.one_hot(y, z)))

    @pyro_method
    def prior_dist(self, y: Tensor | None = None, like: Tensor | None = None) -> dist.Distribution:
        """The prior p(z | y)."""
        return self.prior(self.one_hot(y, like if like is not None else self._reference()))

    @torch.no_grad()
    def init_output_bias(self, mean: Tensor) -> None:
        """Set the decoder's output bias so p(x | z) starts at the mean datum (Burda et al. 2015).

        :param mean: mean training datum, shape ``x_shape``.
        """
        out = getattr(self.decoder, "out", None)
        from_mean = getattr(self.likelihood, "bias_from_mean", None)  # optional in the protocol
        if out is None or getattr(out, "bias", None) is None or from_mean is None:
            return
        mean = mean.to(out.bias)
        if out.bias.numel() == mean.numel():
            out.bias.copy_(from_mean(mean).reshape(out.bias.shape))
        elif out.bias.numel() == mean.shape[0]:
            # one bias per channel (conv decoder): the output centred on the channel's mean value; the
            # mean of per-pixel outputs is not, where a pixel's output is extreme (a continuous
            # Bernoulli logit of -1e4 for an always-black pixel)
            out.bias.copy_(from_mean(mean.reshape(mean.shape[0], -1).mean(-1)))
