"""The convolutional encoder and decoder of Burgess et al. (2018), as disentanglement_lib has them
(``conv_encoder`` / ``deconv_decoder``), registered as ``--net burgess``.

Encoder: four stride-2 convolutions (32, 32, 64, 64 channels; kernels 4, 4, 2, 2), then a dense
layer of ``hidden[-1]`` units (256 in the paper). Decoder: dense layers of ``hidden[-1]`` and
``64·(h/16)·(w/16)`` units (1024 for 64 × 64 images), then four stride-2 transposed convolutions
(64, 32, 32, channels; kernel 4). ReLU throughout (``activation``). A label, if any, is appended
to the first dense layer's input (``label_layers="input"`` only).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .nets import ACTIVATIONS, _with_label, mlp


def _plan(x_shape: Sequence[int], label_layers: str, num_classes: int) -> tuple[int, int, int]:
    if len(x_shape) != 3 or x_shape[1] % 16 or x_shape[2] % 16:
        raise ValueError(
            f"the burgess network needs images (channels, height, width) with sides divisible by 16, got "
            f"{tuple(x_shape)}; use "
            + (
                "--net conv (sides divisible by 4) or mlp"
                if len(x_shape) == 3
                else "--net mlp for flat vectors"
            )
        )
    if num_classes and label_layers != "input":
        raise ValueError("the burgess network takes a label at its input only: use --label-layers input")
    c, h, w = x_shape
    return c, h // 16, w // 16


class BurgessEncoder(nn.Module):
    """``x`` of shape ``(*lead, c, h, w)`` to ``(*lead, hidden[-1])`` features."""

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int] = (256,), activation: str = "relu",
                 num_classes: int = 0, label_layers: str = "input", *, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        c, h16, w16 = _plan(x_shape, label_layers, num_classes)
        act = ACTIVATIONS[activation]
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1), act(),
            nn.Conv2d(32, 32, 4, stride=2, padding=1), act(),
            nn.Conv2d(32, 64, 2, stride=2), act(),
            nn.Conv2d(64, 64, 2, stride=2), act(),
            nn.Flatten(),
        )  # fmt: skip
        self.dense = mlp([64 * h16 * w16 + num_classes, hidden[-1]], activation, dropout=dropout)
        self.feature_dim = hidden[-1]

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        lead = x.shape[:-3]
        h = self.conv(x.reshape(-1, *x.shape[-3:])).reshape(*lead, -1)  # (*lead, 64 * h/16 * w/16)
        return self.dense(_with_label(h, y))  # (*lead, hidden[-1])


class BurgessDecoder(nn.Module):
    """``z`` of shape ``(*lead, z_dim)`` to logits ``(*lead, c, h, w)``."""

    def __init__(self, x_shape: Sequence[int], z_dim: int, hidden: Sequence[int] = (256,), activation: str = "relu",
                 num_classes: int = 0, label_layers: str = "input", *, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        c, h16, w16 = _plan(x_shape, label_layers, num_classes)
        act = ACTIVATIONS[activation]
        self.x_shape, self.grid = tuple(x_shape), (64, h16, w16)
        self.dense = mlp([z_dim + num_classes, hidden[-1], 64 * h16 * w16], activation, dropout=dropout)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),
        )  # fmt: skip
        self.out = self.deconv[-1]  # its bias starts at the mean image (VAE.init_output_bias)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]
        h = self.dense(_with_label(z, y)).reshape(-1, *self.grid)  # (prod(lead), 64, h/16, w/16)
        return self.deconv(h).reshape(*lead, *self.x_shape)  # (*lead, c, h, w)
