"""The state of a run — model, optimizer, random streams and counters — saved and restored as one
checkpoint dict, and what guards a fit: signals turned into checkpoints, deterministic kernels."""

from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass, field

import torch

from .models import VAE


@dataclass
class Counters:
    """Where the loop stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0
    perm: torch.Tensor | None = None  # this epoch's order, kept so a mid-epoch resume is exact
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0  # spent on this epoch's steps before an interrupt, so its row counts them
    best: float = -math.inf
    bad_epochs: int = 0
    lr_factor: float = 1.0
    rollbacks: int = 0
    rows: list = field(default_factory=list)


class Loop:
    """The state of a run: model, optimizer, random streams and counters, saved and restored as
    one checkpoint dict."""

    def __init__(self, vae: VAE, opt: torch.optim.Optimizer, device: torch.device, seed: int, rank: int,
                 meta: dict) -> None:  # fmt: skip
        self.vae, self.opt, self.device, self.meta, self.rank = vae, opt, device, meta, rank
        self.data_rng = torch.Generator(device=device).manual_seed(seed)  # batch order: same on every rank
        self.noise_rng = torch.Generator(device=device).manual_seed(seed + 1000 * rank + 1)  # binarization
        self.c = Counters()

    def state_dict(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "model": self.vae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "data": self.data_rng.get_state(),
                "noise": self.noise_rng.get_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
            },
            "state": dict(vars(self.c)),
            **self.meta,
        }

    def load_state_dict(self, ck: dict, keep_lr: bool = False) -> None:
        """Restore a checkpoint; ``keep_lr`` keeps the current learning-rate factor and rollback
        count (a NaN rollback restores the parameters, not the decision to lower the rate)."""
        self.vae.load_state_dict(ck["model"])
        lrs = [group["lr"] for group in self.opt.param_groups]
        self.opt.load_state_dict(ck["optimizer"])
        for group, lr in zip(self.opt.param_groups, lrs, strict=True):
            if isinstance(lr, torch.Tensor) and not isinstance(group["lr"], torch.Tensor):
                group["lr"] = lr.fill_(group["lr"])  # an older checkpoint's float: keep the rate a tensor
        # generator states are CPU byte tensors whatever the generator's device, while a checkpoint
        # loaded with map_location=cuda puts every tensor on the GPU
        # this rank's own streams where the checkpoint holds every rank's (``rng_ranks``, written
        # under torchrun at the end of an epoch); else the one set there is, rank 0's
        ranks = ck.get("rng_ranks")
        own = ranks[self.rank] if ranks is not None and self.rank < len(ranks) else ck["rng"]
        rng = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in own.items()}
        torch.set_rng_state(rng["torch"])
        self.data_rng.set_state(rng["data"])
        self.noise_rng.set_state(rng["noise"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        keep = self.c.lr_factor, self.c.rollbacks
        self.c = Counters(**ck["state"])
        if self.c.perm is not None:
            self.c.perm = self.c.perm.to(self.device)
        if keep_lr:
            self.c.lr_factor, self.c.rollbacks = keep


class Signals:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a checkpoint can be written."""

    def __init__(self) -> None:
        self.caught: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.caught = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    """PyTorch's deterministic algorithms for the duration of a fit (restored after it), with the
    cuBLAS workspace setting they require on CUDA; what ``deterministic`` asks for."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def clone_state(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone_state(v) for v in obj]
    return obj
