"""Distributions pyrovae adds to Pyro's: a :class:`Bernoulli` whose log-density is faster on a
CPU, a :class:`ContinuousBernoulli` that stays normalized at any logit in float32, and
:class:`DiagonalNormalMixture`, a mixture of diagonal Normals scored by matrix products (the
VampPrior at evaluation).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from .functional import softplus


def _series(t: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    """``sum(c_k * t**k)`` by Horner's rule."""
    out = torch.full_like(t, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * t + c
    return out


# Taylor coefficients in powers of eta**2 (eta = logit) about eta = 0.
_LOG_C = (math.log(2.0), 1 / 12, -7 / 1440, 31 / 90720, -127 / 4838400)  # log(eta / tanh(eta / 2))
_MEAN = (1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160)  # (mean - 1/2) / eta
_VAR = (1 / 12, -1 / 240, 1 / 6048, -1 / 172800, 1 / 5322240, -691 / 118879488000)


def _cross_entropy_term(d: dist.Distribution, value: Tensor) -> Tensor:
    """``value * logits - softplus(logits)`` of a Bernoulli-like ``d``, after its validation."""
    if d._validate_args:
        d._validate_sample(value)
    logits, value = broadcast_all(d.logits, value)
    return value * logits - softplus(logits)


class Bernoulli(dist.Bernoulli):
    """Pyro's Bernoulli, its log-density ``x * logits - softplus(logits)`` computed by
    :func:`pyrovae.functional.softplus` instead of torch's ``binary_cross_entropy_with_logits``
    (whose CPU kernel is several times slower); on other devices, torch's. Same values, support
    and validation.

    >>> x = torch.tensor([0.0, 1.0, 1.0])
    >>> Bernoulli(logits=torch.tensor([-2.0, 0.0, 3.0])).log_prob(x)
    tensor([-0.1269, -0.6931, -0.0486])
    """

    def log_prob(self, value: Tensor) -> Tensor:
        if self.logits.device.type != "cpu":  # torch's one fused kernel is the faster there
            return super().log_prob(value)
        return _cross_entropy_term(self, value)


class ContinuousBernoulli(dist.ContinuousBernoulli):
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), density
    ``C(eta) * exp(x * eta - softplus(eta))`` on [0, 1] with ``C(eta) = eta / tanh(eta / 2)``,
    computed stably in the working dtype for any logit ``eta``.

    torch's version clamps ``sigmoid(eta)`` into ``[eps, 1 - eps]`` inside ``C``, so beyond
    ``|eta| = log(1/eps)``, about 15.9 in float32, its density no longer integrates to 1 (0.53 at
    ``eta = 30``). Here ``log C``, the mean, variance, entropy, cdf and icdf (hence sampling) use
    the logit directly: a Taylor series about 0 where the closed forms lose digits (``|eta|`` below
    0.5 in float32, 0.05 in float64), the closed forms in terms of ``expm1(-|eta|)`` elsewhere.
    Both branches of every ``torch.where`` get finite inputs, so gradients are finite everywhere.

    >>> d = ContinuousBernoulli(logits=torch.tensor([-30.0, 0.0, 30.0]))
    >>> d.mean, d.log_prob(torch.tensor([0.0, 0.5, 1.0])).exp()
    (tensor([0.0333, 0.5000, 0.9667]), tensor([30.0000,  1.0000, 30.0000]))
    """

    def _split(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The logits, where the series applies, ``a = |eta|`` made safe for the closed forms (1
        where the series applies) and ``e = exp(-a)``.

        The closed forms take ``expm1(-a)`` as ``e - 1``: they only see ``a`` of at least 0.05
        (0.5 in float32), where that subtraction loses under 5 bits in float64 (1 in float32),
        and torch's CPU ``expm1`` kernel, like ``log1p``, evaluates one element at a time
        (``benchmarks/RESULTS.md`` measures it against ``exp``).
        """
        eta = self.logits
        small = eta.abs() < (0.05 if eta.dtype == torch.float64 else 0.5)
        a = torch.where(small, torch.ones_like(eta), eta.abs())
        return eta, small, a, torch.exp(-a)

    def _log_norm(self) -> Tensor:
        """``log C(eta) = log(eta / tanh(eta / 2))``."""
        eta, small, a, e = self._split()
        # eta / tanh(eta / 2) = a (1 + e^-a) / (1 - e^-a): one log of a product of well-conditioned
        # factors (1 + e^-a lies in (1, 1.61], 1 - e^-a in [0.39, 1) in float32)
        closed = torch.log(a * (1 + e) / (1 - e))
        return torch.where(small, _series(eta * eta, _LOG_C), closed)

    def log_prob(self, value: Tensor) -> Tensor:
        return self._log_norm() + _cross_entropy_term(self, value)

    @property
    def mean(self) -> Tensor:
        # m(eta) = 1 / (1 - e^-eta) - 1 / eta; with g(a) = 1/a - 1/expm1(a) = 1/a + 1 + 1/expm1(-a),
        # m = g(a) for eta < 0 and 1 - g(a) for eta >= 0, accurate relative to m near 0.
        eta, small, a, e = self._split()
        g = 1 / a + e / (e - 1)  # 1 + 1/expm1(-a) = e^-a / expm1(-a), without cancelling
        return torch.where(small, 0.5 + eta * _series(eta * eta, _MEAN), torch.where(eta < 0, g, 1 - g))

    @property
    def variance(self) -> Tensor:
        # dm/deta = 1/eta^2 - e^eta / (e^eta - 1)^2 = 1/a^2 - e^-a / expm1(-a)^2
        eta, small, a, e = self._split()
        closed = 1 / (a * a) - e / (e - 1) ** 2
        return torch.where(small, _series(eta * eta, _VAR), closed)

    def entropy(self) -> Tensor:
        # log p is linear in x, so H = -log p(mean) = -log C + a * g(a) + softplus(-a), a = |eta|
        eta, small, a, e = self._split()
        near0 = F.binary_cross_entropy_with_logits(eta, self.mean, reduction="none") - self._log_norm()
        return torch.where(small, near0, torch.log((1 - e) / a) + 1 + a * e / (e - 1))

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        eta, value = broadcast_all(self.logits, value)
        small = eta.abs() < torch.finfo(eta.dtype).eps ** 0.5
        a = torch.where(small, torch.ones_like(eta), eta.abs())
        # F = expm1(eta x) / expm1(eta), for eta > 0 as exp(-a (1 - x)) expm1(-a x) / expm1(-a)
        f = torch.expm1(-a * value) / torch.expm1(-a)
        f = torch.where(eta < 0, f, torch.exp(-a * (1 - value)) * f)
        return torch.where(small, value + 0.5 * eta * value * (value - 1), f).clamp(0, 1)

    def icdf(self, value: Tensor) -> Tensor:
        eta, value = broadcast_all(self.logits, value)
        small = eta.abs() < torch.finfo(eta.dtype).eps ** 0.5
        a = torch.where(small, torch.ones_like(eta), eta.abs())
        # inverse of the cdf above: for eta < 0, x = log1p(v * expm1(-a)) / -a; reflected for eta > 0
        w = torch.where(eta < 0, value, 1 - value)
        x = torch.log1p(w * torch.expm1(-a)) / -a
        x = torch.where(eta < 0, x, 1 - x)
        return torch.where(small, value + 0.5 * eta * value * (1 - value), x).clamp(0, 1)


class DiagonalNormalMixture(dist.TorchDistribution):
    """``p(z) = sum_k w_k N(z; loc_k, diag(scale_k^2))``, equal weights ``1/K`` unless ``logits``
    are given: batch shape ``logits.shape[:-1]`` (``()`` without), event ``(D,)``.

    The same density as ``MixtureSameFamily(Categorical(logits), Normal(loc, scale).to_event(1))``,
    but :meth:`log_prob` scores ``M`` points against all ``K`` components with one
    ``(M, 2D + 1) x (2D + 1, K)`` matrix product (the square expanded, in float64, where that loses
    nothing) instead of an ``(M, K, D)`` tensor of differences. A weight of zero (logit ``-inf``)
    drops a component for that batch element, as the class-wise VampPrior does with other classes'
    components.

    :param loc: component means, shape ``(K, D)``.
    :param scale: component standard deviations, shape ``(K, D)``.
    :param logits: unnormalized log-weights, shape ``(*batch, K)``; default equal weights.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector

    def __init__(self, loc: Tensor, scale: Tensor, logits: Tensor | None = None, validate_args=None) -> None:
        if loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(
                f"loc and scale must both be (K, D), got {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        if logits is not None and logits.shape[-1] != loc.shape[0]:
            raise ValueError(
                f"logits must end with the K = {loc.shape[0]} components, got {tuple(logits.shape)}"
            )
        self.loc, self.scale, self.logits = loc, scale, logits
        loc64, prec = loc.double(), scale.double() ** -2  # (K, D)
        const = (-0.5 * (loc64 * loc64 * prec).sum(-1) - scale.double().log().sum(-1)
                 - 0.5 * loc.shape[1] * math.log(2 * math.pi))  # (K,)  # fmt: skip
        if logits is None:
            self._log_w = loc.new_full((loc.shape[0],), -math.log(loc.shape[0]), dtype=torch.float64)
            const, batch_shape = const + self._log_w, torch.Size()  # equal weights: a constant per component
        else:
            self._log_w = logits.double().log_softmax(-1)  # (*batch, K)
            batch_shape = logits.shape[:-1]
        # log N(z; loc_k, scale_k) = const_k + z . (loc_k prec_k) - z^2 . prec_k / 2: one matrix
        # product of the features [z, z^2, 1] with these (2D + 1, K) weights, and no (M, K) temporaries
        self._weights = torch.cat([loc64 * prec, -0.5 * prec, const[:, None]], 1).T
        super().__init__(batch_shape, loc.shape[1:], validate_args=validate_args)

    def component_log_prob(self, value: Tensor) -> Tensor:
        """``log w_k + log N(value; loc_k, scale_k)`` for every component: shape ``(..., K)``."""
        z = value.double().reshape(-1, value.shape[-1])  # (M, D)
        out = torch.cat([z, z * z, z.new_ones(len(z), 1)], 1) @ self._weights  # (M, K)
        out = out.reshape(*value.shape[:-1], -1)
        return out if self.logits is None else out + self._log_w

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.logsumexp(self.component_log_prob(value), -1).to(value.dtype)

    def sample(self, sample_shape=()) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            if self.logits is None:
                k = torch.randint(self.loc.shape[0], shape, device=self.loc.device)
            else:
                k = dist.Categorical(logits=self._log_w).sample(sample_shape)  # (*sample, *batch)
            return self.loc[k] + self.scale[k] * torch.randn(*shape, *self.event_shape, dtype=self.loc.dtype,
                                                             device=self.loc.device)  # fmt: skip

    @property
    def mean(self) -> Tensor:
        return (self._log_w.exp().unsqueeze(-1) * self.loc.double()).sum(-2).to(self.loc.dtype)
