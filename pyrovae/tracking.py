"""TensorBoard tracking of a run: hooks for :func:`~pyrovae.fit.fit` that write event files.

``pyrovae train --tensorboard`` writes them to the run directory (``tensorboard --logdir RUN``):

- ``train/loss`` every optimizer step: the training objective, as trained, in nats per image of
  the step's batch (the scale of ``train/epoch_loss``, which is its mean over the epoch's images);
- every epoch, every numeric column of ``metrics.csv`` (:func:`tag` names it: ``val/elbo``,
  ``val/recon``, ``val/kl``, ``val/active_units``, ``train/epoch_loss``, ``beta``, ``lr``,
  ``weight_norm``, ``seconds`` and a variant's own, such as ``val/baseline_nll`` or
  ``val/accuracy``), with the epoch as the step, and ``samples``, a grid of 64 images drawn from
  the prior, for a model that draws images from nothing (not the structured CVAE, which only
  completes given pixels).

TensorBoard is an optional extra (``pip install 'pyrovae[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError
from .evaluate import eval_mode
from .models import VAE
from .variants import variant_of

#: metrics.csv column -> TensorBoard tag
TAGS = {
    "train_loss": "train/epoch_loss",
    "val_elbo": "val/elbo",
    "val_recon": "val/recon",
    "val_kl": "val/kl",
    "val_active_units": "val/active_units",
    "beta": "beta",
    "capacity": "capacity",
    "lr": "lr",
    "weight_norm": "weight_norm",
}


def tag(column: str) -> str:
    """The TensorBoard tag of a ``metrics.csv`` column: :data:`TAGS`' name, else the column with
    its ``val_``, ``test_`` or ``train_`` prefix as a section (``val_baseline_nll`` ->
    ``val/baseline_nll``)."""
    if column in TAGS:
        return TAGS[column]
    head, _, rest = column.partition("_")
    return f"{head}/{rest}" if rest and head in ("val", "test", "train") else column


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # an empty cell (no capacity, say) or a text column
        return None


def require_tensorboard() -> None:
    """Raise a :class:`~pyrovae.config.ConfigError` saying how to install TensorBoard if it is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "tensorboard is not installed: pip install 'pyrovae[tensorboard]' (or pip install tensorboard), "
            "or train without tensorboard", "tensorboard",
        ) from None  # fmt: skip


def summary_writer(log_dir: str | Path):
    """A :class:`torch.utils.tensorboard.SummaryWriter` writing to ``log_dir``."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


class TensorBoard:
    """Hooks writing a run's scalars and sample grids as TensorBoard event files in ``log_dir``.

    Sample grids are drawn with a fixed seed under :func:`torch.random.fork_rng`, so tracking does
    not change the training run's random streams (a tracked run equals an untracked one).
    """

    def __init__(self, log_dir: str | Path, vae: VAE, samples: int = 64) -> None:
        self.writer, self.vae, self.samples = summary_writer(log_dir), vae, samples

    def on_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)

    def on_epoch(self, row: dict) -> None:
        epoch = int(row["epoch"])
        for column, value in row.items():
            number = _number(value)
            if column != "epoch" and number is not None:
                self.writer.add_scalar(tag(column), number, epoch)
        # a model that completes given pixels would draw completions of a blank image
        if variant_of(self.vae).generates and not getattr(self.vae, "condition_shape", None):
            self.writer.add_image("samples", self._grid(), epoch)
        self.writer.flush()

    @torch.no_grad()
    def _grid(self) -> torch.Tensor:
        from torchvision.utils import make_grid

        from .plots import _as_images
        from .posterior import sample_prior

        vae = self.vae
        device = next(vae.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eval_mode(vae):
            torch.manual_seed(0)
            if vae.num_classes:
                per = max(1, self.samples // vae.num_classes)
                y = torch.arange(vae.num_classes, device=device).repeat_interleave(per)
                x, nrow = sample_prior(vae, len(y), y), per
            else:
                x, nrow = sample_prior(vae, self.samples), 8
        return make_grid(_as_images(x), nrow=nrow, padding=2, pad_value=1.0)  # (C, H, W)

    def close(self) -> None:
        self.writer.close()
