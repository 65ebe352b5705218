"""Figures as PNG files: image grids via :func:`torchvision.utils.make_grid`, charts via matplotlib.

Imported only where figures are made, so the rest of the package does not load matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def _as_images(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 2:  # flat vectors: show a square if they make one, else a strip
        side = int(round(x.shape[1] ** 0.5))
        x = x.reshape(-1, 1, side, side) if side * side == x.shape[1] else x[:, None, None, :]
    if x.dim() == 3:
        x = x[:, None]
    return x


def image_grid(
    images: torch.Tensor, path: str | Path, title: str, nrow: int = 8, xlabel: str = "", ylabel: str = ""
) -> Path:
    """Save ``images`` (N, C, H, W) in [0, 1] as one titled grid picture."""
    grid = make_grid(_as_images(images), nrow=nrow, padding=2, pad_value=1.0)  # (C, H, W)
    h, w = grid.shape[1:]
    fig, ax = plt.subplots(figsize=(max(3.0, w / 40), max(3.0, h / 40) + 0.6))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if grid.shape[0] == 1 else None, vmin=0, vmax=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks([])
    ax.set_yticks([])
    return save(fig, path)


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path
