"""Run directories: what ``pyrovae train`` writes, and loading one back into a ready model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint
from .config import Config, ConfigError, build_model, resolve_device
from .data import Dataset
from .models import VAE


@dataclass
class Run:
    """A trained run: its folder, config, model (in eval mode) and, on demand, its data."""

    path: Path
    config: Config
    model: VAE
    _data: Dataset | None = None

    @property
    def data(self) -> Dataset:
        """The run's data set, loaded on first use (validation/test binarized as in training)."""
        if self._data is None:
            from .train import load_data

            self._data = load_data(self.config)
        return self._data

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(path: str | Path, which: str = "best", device: str = "cpu", data_dir: str | None = None) -> Run:
    """Load ``path/best.pt`` (or ``checkpoint.pt`` with ``which="last"``) into its model.

    :param data_dir: where the data is now, if it moved since training.
    """
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ConfigError(
            f"{path} is not a pyrovae run directory (no config.json); train one with `pyrovae train`"
        )
    cfg = Config.load(cfg_path)
    if data_dir:
        cfg.data_dir = data_dir
    name = {"best": "best.pt", "last": "checkpoint.pt"}.get(which, which)
    ckpt = checkpoint.load(path / name)
    shape = ckpt.get("x_shape")
    if shape is None:
        raise checkpoint.CheckpointError(f"{path / name} does not record the data shape")
    model = build_model(cfg, tuple(shape), int(ckpt.get("num_classes", 0)))
    model.load_state_dict(ckpt["model"])
    model.to(resolve_device(device)).eval()
    model.beta = 1.0
    return Run(path, cfg, model)


def write_json(path: str | Path, obj: dict) -> None:
    checkpoint.write_text(path, json.dumps(obj, indent=2) + "\n")
