"""Encoder and decoder bodies: plain :class:`torch.nn.Module` s, nothing probabilistic.

An *encoder* maps a batch ``x`` of shape ``(batch, *x_shape)`` (and an optional one-hot label
``y`` of shape ``(batch, num_classes)``) to features of shape ``(batch, feature_dim)``; guides put
their own heads on top. A *decoder* maps ``z`` of shape ``(*lead, z_dim)`` to distribution
parameters of shape ``(*lead, *x_shape)``; ``lead`` may hold particle dimensions as well as the
batch, so decoders flatten and restore it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(sizes: Sequence[int], activation: str = "softplus", final_activation: bool = True) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them.

    >>> mlp([4, 3, 2])(torch.zeros(5, 4)).shape
    torch.Size([5, 2])
    """
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _with_label(h: Tensor, y: Tensor | None) -> Tensor:
    if y is None:
        return h
    # y carries no particle dimensions; broadcast it to h's leading shape.
    return torch.cat([h, y.expand(*h.shape[:-1], y.shape[-1])], dim=-1)


class MLPEncoder(nn.Module):
    """Flatten ``x``, append ``y`` if given, then an MLP; ``feature_dim`` is the last hidden size."""

    def __init__(
        self,
        x_shape: Sequence[int],
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.feature_dim = hidden[-1]
        self.body = mlp([math.prod(self.x_shape) + num_classes, *hidden], activation)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1)  # (batch, prod(x_shape))
        return self.body(_with_label(h, y))  # (batch, feature_dim)


class MLPDecoder(nn.Module):
    """MLP from ``z`` (and ``y``) to one parameter per data element, shaped like the data."""

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.body = mlp([z_dim + num_classes, *hidden], activation)
        self.out = nn.Linear(hidden[-1], math.prod(self.x_shape))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.body(_with_label(z, y))  # (*lead, hidden)
        return self.out(h).reshape(*z.shape[:-1], *self.x_shape)  # (*lead, *x_shape)


def _conv_plan(x_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(x_shape) != 3:
        raise ValueError(
            f"the conv network needs image data of shape (channels, height, width), got {tuple(x_shape)}; "
            "use --net mlp for flat vectors"
        )
    c, h, w = x_shape
    if h % 4 or w % 4:
        raise ValueError(
            f"the conv network needs height and width divisible by 4, got {h}x{w}; use --net mlp"
        )
    return c, h // 4, w // 4


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (32, 64 channels) then a dense layer to ``hidden[-1]`` features."""

    def __init__(
        self,
        x_shape: Sequence[int],
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        c, h4, w4 = _conv_plan(x_shape)
        act = ACTIVATIONS[activation]
        self.x_shape = tuple(x_shape)
        self.feature_dim = hidden[-1]
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1), act(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), act(),
            nn.Flatten(),
        )  # fmt: skip
        self.dense = mlp([64 * h4 * w4 + num_classes, *hidden], activation)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        lead = x.shape[:-3]  # (batch,), or (*enumerated, batch) in a semi-supervised guide
        h = self.conv(x.reshape(-1, *x.shape[-3:])).reshape(*lead, -1)  # (*lead, 64 * h/4 * w/4)
        return self.dense(_with_label(h, y))  # (*lead, feature_dim)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: dense layers, then two stride-2 transposed convolutions."""

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        c, h4, w4 = _conv_plan(x_shape)
        act = ACTIVATIONS[activation]
        self.x_shape = tuple(x_shape)
        self.grid = (64, h4, w4)
        self.dense = mlp([z_dim + num_classes, *hidden, 64 * h4 * w4], activation)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),
        )  # fmt: skip
        self.out = self.deconv[-1]

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]
        h = self.dense(_with_label(z, y)).reshape(-1, *self.grid)  # (prod(lead), 64, h/4, w/4)
        return self.deconv(h).reshape(*lead, *self.x_shape)  # (*lead, c, h, w)


NETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, ConvDecoder),
}
"""Registry of encoder/decoder pairs; each takes ``(x_shape, [z_dim,] hidden, activation, num_classes)``."""
