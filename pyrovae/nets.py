"""Encoder and decoder bodies: plain :class:`torch.nn.Module` s, nothing probabilistic.

An *encoder* maps a batch ``x`` of shape ``(batch, *x_shape)`` (and an optional one-hot label
``y`` of shape ``(batch, num_classes)``) to features of shape ``(batch, feature_dim)``; guides put
their own heads on top. A *decoder* maps ``z`` of shape ``(*lead, z_dim)`` to distribution
parameters of shape ``(*lead, *x_shape)``; ``lead`` may hold particle dimensions as well as the
batch, so decoders flatten and restore it.

Where a label enters (``label_layers``, for ``num_classes`` > 0): ``"input"`` appends the one-hot
``y`` to the input of the first layer only, which a decoder easily ignores when ``z`` can carry the
class. ``"every"`` lets it modulate every layer: the decoder's first layer (``z`` to hidden) has a
weight matrix and bias per class (:class:`ClassLinear`), every other dense layer of decoder and
encoder scales and shifts its units by the label (FiLM, :class:`CondLinear`; the transposed
convolutions per channel), and the encoder's features end with ``y``, so the guide's heads see
it. ``experiments/results/conditional_samples.md`` measures both and the steps between.

Every network takes ``dropout``, the probability of zeroing each hidden unit while training
(Srivastava et al. 2014): :class:`torch.nn.Dropout` after each hidden activation, which is the
identity in eval mode, so evaluation, sampling and inspection (all in eval mode) are
deterministic given the seed whatever ``dropout`` is. With ``dropout=0`` no dropout layer is
made, so parameter names, and checkpoints, are those of a network without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .functional import Softplus

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": Softplus,  # torch's nn.Softplus, faster on a CPU
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def mlp(
    sizes: Sequence[int], activation: str = "softplus", final_activation: bool = True, dropout: float = 0.0
) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` (then dropout, if ``dropout`` > 0)
    between them.

    >>> mlp([4, 3, 2])(torch.zeros(5, 4)).shape
    torch.Size([5, 2])
    >>> mlp([4, 3, 2], dropout=0.5)
    Sequential(
      (0): Linear(in_features=4, out_features=3, bias=True)
      (1): Softplus(beta=1.0, threshold=20.0)
      (2): Dropout(p=0.5, inplace=False)
      (3): Linear(in_features=3, out_features=2, bias=True)
      (4): Softplus(beta=1.0, threshold=20.0)
      (5): Dropout(p=0.5, inplace=False)
    )
    """
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout}")
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(act())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


LABEL_LAYERS = ("input", "every")
"""Where a conditional network feeds the label: the first layer's input, or every layer."""


def _check_label_layers(label_layers: str) -> None:
    if label_layers not in LABEL_LAYERS:
        raise ValueError(f"label_layers must be one of {', '.join(LABEL_LAYERS)}, got {label_layers!r}")


class CondLinear(nn.Linear):
    """A dense layer modulated by the condition ``y`` (``cond_dim`` > 0): FiLM (Perez et al. 2018),
    ``(W h + b) * (1 + gamma(y)) + beta(y)``, or with ``film=False`` the shift ``W h + b + beta(y)``
    alone (concatenating ``y`` to the input, without the copy). ``gamma`` and ``beta`` are linear in
    ``y``, which carries no particle dimensions: they broadcast over them.

    >>> layer = CondLinear(4, 3, cond_dim=2)
    >>> layer(torch.zeros(7, 5, 4), torch.eye(2)[[0, 1, 1, 0, 1]]).shape  # (particles, batch, out)
    torch.Size([7, 5, 3])
    """

    def __init__(self, in_features: int, out_features: int, cond_dim: int = 0, film: bool = True) -> None:
        super().__init__(in_features, out_features)
        self.film = film
        width = 2 * out_features if film else out_features
        self.cond = nn.Linear(cond_dim, width, bias=False) if cond_dim else None

    def forward(self, h: Tensor, y: Tensor | None = None) -> Tensor:
        out = super().forward(h)  # (*lead, batch, out_features)
        if self.cond is None or y is None:
            return out
        c = self.cond(y)  # (batch, width)
        if not self.film:
            return out + c
        gamma, beta = c.chunk(2, dim=-1)
        return out * (1 + gamma) + beta


class ClassLinear(nn.Module):
    """A weight matrix and bias per class: ``W_y h + b_y`` for one-hot ``y`` (the ``y``-weighted
    sum of them for soft labels). All classes are computed in one matrix product and the label's
    rows kept."""

    def __init__(self, in_features: int, out_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.out_features = num_classes, out_features
        self.lin = nn.Linear(in_features, num_classes * out_features)

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        out = self.lin(h).unflatten(-1, (self.num_classes, self.out_features))  # (*lead, batch, C, out)
        return (out * y.unsqueeze(-1)).sum(-2)  # (*lead, batch, out)


class CondMLP(nn.Module):
    """:func:`mlp` whose every layer reads ``y``: :class:`CondLinear` layers, the first one a
    :class:`ClassLinear` with ``class_first``."""

    def __init__(
        self,
        sizes: Sequence[int],
        cond_dim: int,
        activation: str = "softplus",
        final_activation: bool = True,
        film: bool = True,
        class_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        self.layers = nn.ModuleList(
            ClassLinear(n_in, n_out, cond_dim) if i == 0 and class_first else CondLinear(n_in, n_out, cond_dim, film)
            for i, (n_in, n_out) in enumerate(pairs)
        )  # fmt: skip
        act, n = ACTIVATIONS[activation], len(pairs)
        self.acts = nn.ModuleList(
            (nn.Sequential(act(), nn.Dropout(dropout)) if dropout else act())
            if final_activation or i < n - 1 else nn.Identity()
            for i in range(n)
        )  # fmt: skip

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        for layer, act in zip(self.layers, self.acts, strict=True):
            h = act(layer(h, y))
        return h


def _with_label(h: Tensor, y: Tensor | None) -> Tensor:
    if y is None:
        return h
    # y carries no particle dimensions; broadcast it to h's leading shape.
    return torch.cat([h, y.expand(*h.shape[:-1], y.shape[-1])], dim=-1)


class MLPEncoder(nn.Module):
    """Flatten ``x``, then an MLP; the label enters as ``label_layers`` says (module docstring).
    ``feature_dim`` is the last hidden size, plus ``num_classes`` with ``"every"``.

    :param film: with ``"every"``, FiLM the layers (else only shift them by the label).
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        num_classes: int = 0,
        label_layers: str = "input",
        *,
        film: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_label_layers(label_layers)
        self.x_shape = tuple(x_shape)
        self.every = bool(num_classes) and label_layers == "every"
        d = math.prod(self.x_shape)
        if self.every:
            self.body = CondMLP([d, *hidden], num_classes, activation, film=film, dropout=dropout)
            self.feature_dim = hidden[-1] + num_classes
        else:
            self.body = mlp([d + num_classes, *hidden], activation, dropout=dropout)
            self.feature_dim = hidden[-1]

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1)  # (batch, prod(x_shape))
        if self.every:
            return _with_label(self.body(h, y), y)  # (batch, hidden[-1] + num_classes)
        return self.body(_with_label(h, y))  # (batch, feature_dim)


class MLPDecoder(nn.Module):
    """MLP from ``z`` (and ``y``) to one parameter per data element, shaped like the data.

    :param film: with ``label_layers="every"``, FiLM the layers (else only shift them).
    :param class_weights: with ``"every"``, a weight matrix per class in the first layer.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        num_classes: int = 0,
        label_layers: str = "input",
        *,
        film: bool = True,
        class_weights: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_label_layers(label_layers)
        self.x_shape = tuple(x_shape)
        self.every = bool(num_classes) and label_layers == "every"
        d = math.prod(self.x_shape)
        if self.every:
            self.body = CondMLP(
                [z_dim, *hidden],
                num_classes,
                activation,
                film=film,
                class_first=class_weights,
                dropout=dropout,
            )
            self.out = CondLinear(hidden[-1], d, num_classes, film)
        else:
            self.body = mlp([z_dim + num_classes, *hidden], activation, dropout=dropout)
            self.out = nn.Linear(hidden[-1], d)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        if self.every:
            out = self.out(self.body(z, y), y)  # (*lead, prod(x_shape))
        else:
            out = self.out(self.body(_with_label(z, y)))
        return out.reshape(*z.shape[:-1], *self.x_shape)  # (*lead, *x_shape)


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
    """Two stride-2 convolutions (32, 64 channels) then a dense layer to ``hidden[-1]`` features
    (with ``label_layers="every"`` the dense layers read ``y`` and the features end with it)."""

    def __init__(
        self,
        x_shape: Sequence[int],
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        num_classes: int = 0,
        label_layers: str = "input",
        *,
        film: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_label_layers(label_layers)
        c, h4, w4 = _conv_plan(x_shape)
        act = ACTIVATIONS[activation]
        self.x_shape = tuple(x_shape)
        self.every = bool(num_classes) and label_layers == "every"
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1), act(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), act(),
            nn.Flatten(),
        )  # fmt: skip
        if self.every:
            self.dense = CondMLP([64 * h4 * w4, *hidden], num_classes, activation, film=film, dropout=dropout)
            self.feature_dim = hidden[-1] + num_classes
        else:
            self.dense = mlp([64 * h4 * w4 + num_classes, *hidden], activation, dropout=dropout)
            self.feature_dim = hidden[-1]

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        lead = x.shape[:-3]  # (batch,), or (*enumerated, batch) in a semi-supervised guide
        h = self.conv(x.reshape(-1, *x.shape[-3:])).reshape(*lead, -1)  # (*lead, 64 * h/4 * w/4)
        if self.every:
            return _with_label(self.dense(h, y), y)  # (*lead, hidden[-1] + num_classes)
        return self.dense(_with_label(h, y))  # (*lead, feature_dim)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: dense layers, then two stride-2 transposed convolutions
    (with ``label_layers="every"`` each layer reads ``y``; the convolutions' channels are FiLMed).

    :param film: with ``"every"``, FiLM the layers (else only shift them).
    :param class_weights: with ``"every"``, a weight matrix per class in the first layer.
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        num_classes: int = 0,
        label_layers: str = "input",
        *,
        film: bool = True,
        class_weights: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_label_layers(label_layers)
        c, h4, w4 = _conv_plan(x_shape)
        act = ACTIVATIONS[activation]
        self.x_shape = tuple(x_shape)
        self.grid = (64, h4, w4)
        self.every = bool(num_classes) and label_layers == "every"
        self.film = film
        sizes = [z_dim, *hidden, 64 * h4 * w4]
        if self.every:
            self.dense = CondMLP(
                sizes, num_classes, activation, film=film, class_first=class_weights, dropout=dropout
            )
            # per class and channel: a scale and shift (or a shift) after each transposed convolution
            width = 2 if film else 1
            self.cond = nn.ModuleList(nn.Linear(num_classes, width * n, bias=False) for n in (32, c))
        else:
            self.dense = mlp([z_dim + num_classes, *sizes[1:]], activation, dropout=dropout)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),
        )  # fmt: skip
        self.out = self.deconv[-1]

    def _modulate(self, h: Tensor, cond: nn.Module, y: Tensor, lead: torch.Size) -> Tensor:
        # y is (batch, classes), the last of lead: one row per datum, repeated over the particles
        c = cond(y).expand(*lead, -1).reshape(h.shape[0], -1, 1, 1)  # (prod(lead), width, 1, 1)
        if not self.film:
            return h + c
        gamma, beta = c.chunk(2, dim=1)
        return h * (1 + gamma) + beta

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]
        if not self.every:
            h = self.dense(_with_label(z, y)).reshape(-1, *self.grid)  # (prod(lead), 64, h/4, w/4)
            return self.deconv(h).reshape(*lead, *self.x_shape)  # (*lead, c, h, w)
        h = self.dense(z, y).reshape(-1, *self.grid)  # (prod(lead), 64, h/4, w/4)
        h = self._modulate(self.deconv[0](h), self.cond[0], y, lead)  # (prod(lead), 32, h/2, w/2)
        h = self._modulate(self.deconv[2](self.deconv[1](h)), self.cond[1], y, lead)  # (prod(lead), c, h, w)
        return h.reshape(*lead, *self.x_shape)


NETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, ConvDecoder),
}
"""Registry of encoder/decoder pairs; each takes ``(x_shape, [z_dim,] hidden, activation, num_classes)``
and, if it names them, ``label_layers`` and ``dropout`` (see the module docstring)."""

from .burgess import BurgessDecoder, BurgessEncoder  # noqa: E402  (it builds on the helpers above)

NETS["burgess"] = (BurgessEncoder, BurgessDecoder)
