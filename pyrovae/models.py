"""The variational autoencoder as a Pyro program.

Generative story, for each datum ``n`` in the ``"data"`` plate::

    z_n ~ p(z | y_n)                  # site "z", scaled by beta
    x_n ~ p(x | decoder(z_n, y_n))    # site "x", observed

and the amortized guide ``z_n ~ q(z | x_n, y_n)`` (site ``"z"``, scaled by the same beta). The
prior, guide, likelihood and decoder are separate objects, so changing one family means passing
one other object. ``y`` is optional and only used when the model is conditional.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from .guides import DiagonalNormal
from .likelihoods import Bernoulli, Likelihood
from .nets import MLPDecoder, MLPEncoder
from .priors import StandardNormal

# Each model gets its own Pyro name, so two models in one process never share entries of
# Pyro's global parameter store (which would silently train one model's tensors for the other).
_instances = itertools.count()


class VAE(PyroModule):
    """A VAE with pluggable prior, guide, likelihood and decoder.

    :param x_shape: shape of one datum, e.g. ``(1, 28, 28)``.
    :param z_dim: number of latent dimensions.
    :param prior: a prior module (see :mod:`pyrovae.priors`); default N(0, I).
    :param guide: a guide module (see :mod:`pyrovae.guides`); default diagonal Normal over an MLP.
    :param likelihood: a likelihood module (see :mod:`pyrovae.likelihoods`); default Bernoulli.
    :param decoder: a network from ``z`` (and ``y``) to ``(*lead, *x_shape)``; default MLP.
    :param num_classes: number of label classes for a conditional VAE; 0 for none.
    :param beta: weight of the KL term, applied as ``poutine.scale`` on the latent site.
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
        beta: float = 1.0,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"vae{next(_instances)}")
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.beta = beta
        self.prior = prior if prior is not None else StandardNormal(z_dim)
        if guide is None:
            guide = DiagonalNormal(MLPEncoder(x_shape, hidden, activation, num_classes), z_dim)
        self.guide_net = guide
        self.likelihood = likelihood if likelihood is not None else Bernoulli(x_shape)
        if decoder is None:
            decoder = MLPDecoder(x_shape, z_dim, hidden, activation, num_classes)
        self.decoder = decoder
        if num_classes and not getattr(self.prior, "conditionable", True):
            raise ValueError(
                f"{type(self.prior).__name__} cannot be conditioned on a label; choose another "
                "prior (e.g. --prior normal or --prior conditional) or drop --conditional"
            )
        if hasattr(self.prior, "bind"):
            self.prior.bind(self.guide_net)

    # -- helpers ----------------------------------------------------------------------------
    def one_hot(self, y: Tensor | None, like: Tensor) -> Tensor | None:
        """Labels as one-hot rows in ``like``'s dtype; ``None`` for an unconditional model."""
        if not self.num_classes:
            return None
        if y is None:
            raise ValueError("this VAE is conditional: pass labels y (class indices)")
        if y.dim() == 1 or y.shape[-1] != self.num_classes:
            y = F.one_hot(y.long(), self.num_classes)
        return y.to(like.dtype)

    def _reference(self) -> Tensor:
        # Any floating tensor of the model, to place new tensors on its device and dtype.
        return next(t for t in self.parameters() if t.is_floating_point())

    # -- the Pyro program -----------------------------------------------------------------
    @pyro_method
    def model(
        self, x: Tensor | None = None, y: Tensor | None = None, *, batch_size: int | None = None
    ) -> Tensor:
        """p(z | y) p(x | z, y). With ``x=None`` it generates ``batch_size`` (or ``len(y)``) data."""
        if x is not None:
            n = x.shape[0]
        elif y is not None:
            n = y.shape[0]
        elif batch_size is not None:
            n = batch_size
        else:
            raise ValueError("model() needs data x, labels y or a batch_size")
        y1 = self.one_hot(y, x if x is not None else self._reference())
        with pyro.plate("data", n):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", self.prior(y1))
            out = self.decoder(z, y1)  # (*lead, batch, *x_shape)
            return pyro.sample("x", self.likelihood(out), obs=x)

    @pyro_method
    def guide(self, x: Tensor, y: Tensor | None = None, *, batch_size: int | None = None) -> Tensor:
        """q(z | x, y), amortized by the encoder."""
        y1 = self.one_hot(y, x)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
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
        if out is None or getattr(out, "bias", None) is None:
            return
        target = self.likelihood.bias_from_mean(mean.to(out.bias))
        if out.bias.numel() == target.numel():
            out.bias.copy_(target.reshape(out.bias.shape))
        elif out.bias.numel() == target.shape[0]:  # one bias per channel (conv decoder)
            out.bias.copy_(target.reshape(target.shape[0], -1).mean(-1))
