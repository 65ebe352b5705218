"""Likelihood families p(x | z): each turns decoder output into a distribution over one datum.

Protocol: a likelihood is a :class:`~pyro.nn.PyroModule` constructed as ``cls(x_shape)`` whose
``forward(out)`` takes decoder output of shape ``(*lead, *x_shape)`` and returns a distribution
with ``event_shape == x_shape`` (use ``.to_event``). It also says how to map the mean training datum to the decoder's
output bias (:meth:`Likelihood.bias_from_mean`) and what values it accepts
(:attr:`Likelihood.support`), so bad data is refused before training.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from . import distributions as pvdist

_EPS = 1e-4


class Likelihood(PyroModule):
    """Base class; subclasses implement :meth:`forward`."""

    #: Values a datum may take: ``"binary"``, ``"unit"`` (the interval [0, 1]) or ``"real"``.
    support: str = "real"
    #: Whether the likelihood is normalized only on {0, 1}: grey data must be binarized first.
    needs_binary: bool = False

    def __init__(self, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)

    def bias_from_mean(self, mean: Tensor) -> Tensor:
        """Decoder output that makes ``forward`` centred on the data mean (Burda et al. 2015)."""
        return mean

    def mean(self, out: Tensor) -> Tensor:
        """The mean of p(x | z) given decoder output, for reconstructions and sample grids."""
        return self(out).mean


class Bernoulli(Likelihood):
    """Bernoulli pixels from logits: the likelihood for binarized images."""

    support = "binary"
    needs_binary = True

    def forward(self, out: Tensor) -> dist.Distribution:
        return pvdist.Bernoulli(logits=out).to_event(len(self.x_shape))

    def bias_from_mean(self, mean: Tensor) -> Tensor:
        return torch.logit(mean.clamp(_EPS, 1 - _EPS))


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalized density for grey values
    in [0, 1], :class:`pyrovae.distributions.ContinuousBernoulli`, which stays normalized at any
    logit in float32. Its mean is not ``sigmoid(logits)``, which :meth:`mean` and
    :meth:`bias_from_mean` account for.
    """

    support = "unit"

    def forward(self, out: Tensor) -> dist.Distribution:
        return pvdist.ContinuousBernoulli(logits=out).to_event(len(self.x_shape))

    def bias_from_mean(self, mean: Tensor) -> Tensor:
        """The logits whose continuous Bernoulli mean is ``mean`` (clamped into
        ``[1e-4, 1 - 1e-4]``, so ``|logits| <= 1e4``), by bisection in float64.

        >>> lik = ContinuousBernoulli((2,))
        >>> lik.mean(lik.bias_from_mean(torch.tensor([0.05, 0.9])))
        tensor([0.0500, 0.9000])
        """
        m = mean.detach().to("cpu", torch.float64).clamp(_EPS, 1 - _EPS)
        # the mean is increasing in the logit, below 1/a at logit -a and above 1 - 1/a at a
        lo, hi = -1 / m, 1 / (1 - m)
        for _ in range(80):  # |hi - lo| <= 1e4 shrinks below 1e-20
            mid = (lo + hi) / 2
            above = pvdist.ContinuousBernoulli(logits=mid, validate_args=False).mean > m
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        return ((lo + hi) / 2).to(mean)


class _LocationScale(Likelihood):
    family: type[dist.Distribution]

    def __init__(self, x_shape: Sequence[int], scale: float | None = None) -> None:
        """:param scale: a fixed scale, or ``None`` to learn one scale per data element."""
        super().__init__(x_shape)
        self.learned = scale is None
        if self.learned:
            self.scale = PyroParam(torch.full(self.x_shape, 0.1), constraint=constraints.positive)
        else:
            self.register_buffer("scale", torch.full(self.x_shape, float(scale)))

    def forward(self, out: Tensor) -> dist.Distribution:
        return self.family(out, self.scale).to_event(len(self.x_shape))


class Normal(_LocationScale):
    """Gaussian pixels around the decoder output, with a fixed or learned per-pixel scale."""

    family = dist.Normal


class Laplace(_LocationScale):
    """Laplace pixels around the decoder output, with a fixed or learned per-pixel scale."""

    family = dist.Laplace


class Masked(Likelihood):
    """Another likelihood scored only where ``mask`` is true: the pixels a structured-output
    model must predict (Sohn et al. 2015), with the given pixels contributing nothing.

    :param likelihood: the family of each pixel, e.g. ``Bernoulli(x_shape)``.
    :param mask: boolean, broadcastable to ``x_shape``; ``True`` where a pixel is scored.

    >>> lik = Masked(Bernoulli((1, 2, 2)), torch.tensor([[[True, False], [False, False]]]))
    >>> round(float(lik(torch.zeros(1, 1, 2, 2)).log_prob(torch.ones(1, 1, 2, 2))), 4)  # log 1/2
    -0.6931
    """

    def __init__(self, likelihood: Likelihood, mask: Tensor) -> None:
        super().__init__(likelihood.x_shape)
        self.inner = likelihood
        self.support, self.needs_binary = likelihood.support, likelihood.needs_binary
        self.register_buffer("mask", mask.bool().expand(self.x_shape).clone())

    def forward(self, out: Tensor) -> dist.Distribution:
        d = self.inner(out)
        # Mask before reinterpreting the pixels as one event: masked pixels then add 0 to the sum.
        return d.base_dist.mask(self.mask).to_event(d.reinterpreted_batch_ndims)

    def bias_from_mean(self, mean: Tensor) -> Tensor:
        return self.inner.bias_from_mean(mean)

    def mean(self, out: Tensor) -> Tensor:
        return self.inner.mean(out)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "cbernoulli": ContinuousBernoulli,
    "normal": Normal,
    "laplace": Laplace,
}
"""Registry of likelihood families by command-line name."""
