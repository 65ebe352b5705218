"""Amortized guide families q(z | x) and q(z | x, y) over an encoder network.

Protocol: a guide is a :class:`~pyro.nn.PyroModule` constructed as ``cls(encoder, z_dim)`` whose
``forward(x, y=None)`` returns a distribution over one latent vector per datum:
``batch_shape == (batch,)`` and ``event_shape == (z_dim,)``. A guide whose ``log_prob`` is only
cheap or finite at its own samples sets ``scores_any_z = False``. The encoder (see :mod:`pyrovae.nets`)
maps ``(x, y)`` to ``(batch, encoder.feature_dim)`` features; the guide adds its own heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from .functional import softplus

_MIN_SCALE = 1e-5


def _positive(raw: Tensor, how: str) -> Tensor:
    # exp is what Pyro's tutorial uses; softplus cannot overflow, hence the default.
    return raw.exp() if how == "exp" else softplus(raw) + _MIN_SCALE


class DiagonalNormal(PyroModule):
    """q(z | x) = N(mu(x), diag(sigma(x)^2))."""

    def __init__(self, encoder: nn.Module, z_dim: int, scale: str = "softplus") -> None:
        super().__init__()
        self.encoder = encoder
        self.loc = nn.Linear(encoder.feature_dim, z_dim)
        self.raw_scale = nn.Linear(encoder.feature_dim, z_dim)
        self.scale_fn = scale

    def forward(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        h = self.encoder(x, y)  # (batch, feature_dim)
        scale = _positive(self.raw_scale(h), self.scale_fn)
        return dist.Normal(self.loc(h), scale).to_event(1)


class FullRankNormal(PyroModule):
    """q(z | x) = N(mu(x), L(x) L(x)^T) with a lower-triangular L from the encoder."""

    def __init__(self, encoder: nn.Module, z_dim: int, scale: str = "softplus") -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = z_dim
        self.loc = nn.Linear(encoder.feature_dim, z_dim)
        self.raw_diag = nn.Linear(encoder.feature_dim, z_dim)
        self.off_diag = nn.Linear(encoder.feature_dim, z_dim * (z_dim - 1) // 2)
        nn.init.zeros_(self.off_diag.weight)
        nn.init.zeros_(self.off_diag.bias)
        self.register_buffer("rows", torch.tril_indices(z_dim, z_dim, offset=-1))
        self.scale_fn = scale

    def forward(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        h = self.encoder(x, y)  # (batch, feature_dim)
        diag = _positive(self.raw_diag(h), self.scale_fn)  # (batch, z_dim)
        tril = h.new_zeros(*diag.shape, self.z_dim)  # (batch, z_dim, z_dim)
        tril[..., self.rows[0], self.rows[1]] = self.off_diag(h)
        tril = tril + torch.diag_embed(diag)
        return dist.MultivariateNormal(self.loc(h), scale_tril=tril)


class IAF(PyroModule):
    """q(z | x): a diagonal Normal followed by inverse autoregressive flows conditioned on the
    encoder's features, with the variable order reversed between layers.

    References: Kingma et al. (2016), *Improved variational inference with inverse autoregressive
    flow*.
    """

    scores_any_z = False  # log_prob of a z it did not sample inverts the flow: one pass per dimension

    def __init__(
        self,
        encoder: nn.Module,
        z_dim: int,
        layers: int = 2,
        hidden: Sequence[int] | None = None,
        scale: str = "softplus",
    ) -> None:
        super().__init__()
        self.base = DiagonalNormal(encoder, z_dim, scale)
        hidden = list(hidden or [4 * z_dim])
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(z_dim, encoder.feature_dim, hidden) for _ in range(layers)
        )
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    @property
    def encoder(self) -> nn.Module:
        return self.base.encoder

    def forward(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        h = self.encoder(x, y)  # (batch, feature_dim); computed twice would double the cost
        q0 = dist.Normal(self.base.loc(h), _positive(self.base.raw_scale(h), self.base.scale_fn))
        transforms: list = []
        for i, flow in enumerate(self.flows):
            if i:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.condition(h))
        return dist.TransformedDistribution(q0.to_event(1), transforms)


class Delta(PyroModule):
    """q(z | x) = delta(z - f(x)): a point estimate, which turns the VAE into a deterministic
    autoencoder regularized by log p(z)."""

    scores_any_z = False  # a point mass: every other z has density zero
    point_estimate = True  # no ELBO, no importance sampling: evaluation reports log p(x, z*)

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.loc = nn.Linear(encoder.feature_dim, z_dim)

    def forward(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        return dist.Delta(self.loc(self.encoder(x, y)), event_dim=1)


GUIDES: dict[str, type[PyroModule]] = {
    "diag": DiagonalNormal,
    "fullrank": FullRankNormal,
    "iaf": IAF,
    "delta": Delta,
}
"""Registry of guide families by command-line name."""
