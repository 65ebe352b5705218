"""Data-parallel training on PyTorch's own engine, following Pyro's recipe: the ELBO's loss wrapped
as a module, :class:`~torch.nn.parallel.DistributedDataParallel` around it, a torch optimizer.

Launch with ``torchrun --nproc_per_node=N -m pyrovae train ...``; torchrun's ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` variables switch it on. Every rank draws the same permutation
of the data each epoch and takes its share of each global batch; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class Context:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous share of a global batch of indices; empty on the last ranks when
        the batch holds fewer indices than processes (see :func:`empty_share_loss`)."""
        return idx.tensor_split(self.world)[self.rank] if self.active else idx

    def gather(self, obj: object) -> list:
        """Every rank's ``obj`` (picklable), by rank, on every rank; ``[obj]`` in one process."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank, so decisions (early stopping) agree."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return t.tolist()


def empty_share_loss(module: nn.Module) -> Tensor:
    """The loss of a rank whose share of a global batch is empty (a last batch with fewer images
    than processes): zero, with a zero gradient for every parameter of ``module``.

    Each parameter takes part, so DDP's all-reduce, which waits for every parameter's gradient,
    runs as on the other ranks; the zeros leave the averaged gradient that of the other ranks'
    images, as one process would compute it. (A slice of no elements: ``0 * p`` would turn an
    inf parameter into a NaN gradient.)
    """
    return torch.stack([p.reshape(-1)[:0].sum() for p in module.parameters() if p.requires_grad]).sum()


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed), known before :func:`init`."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes torchrun started (1 when not distributed), known before :func:`init`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_devices(device: torch.device) -> torch.device:
    """Refuse, before any work, more processes on this node than GPUs when training on CUDA."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda" and local_world > torch.cuda.device_count():
        from .config import ConfigError

        # NCCL refuses two ranks on one GPU, and sharing one would not be faster than one process
        raise ConfigError(
            f"torchrun started {local_world} processes on this node but only {torch.cuda.device_count()} "
            f"CUDA device(s) are visible: start one process per GPU (--nproc_per_node="
            f"{torch.cuda.device_count()}), or train on the CPU (--device cpu)", "device",
        )  # fmt: skip
    return device


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes, if any (NCCL on CUDA, gloo on CPU)."""
    world = world_size()
    if world <= 1:
        return Context(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        check_devices(device)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, device)


def wrap(loss: nn.Module, ctx: Context) -> nn.Module:
    """DDP around the loss module when running distributed; the module itself otherwise."""
    if not ctx.active:
        return loss
    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_EmptyShare(loss), device_ids=ids)


class _EmptyShare(nn.Module):
    """``loss``, and :func:`empty_share_loss` for a rank whose share of the batch is empty (Pyro's
    plates need a size): only a distributed run has such shares, so only it pays the check. Inside
    DDP, so DDP's forward prepares the all-reduce as on the other ranks."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return empty_share_loss(self.loss) if x.shape[0] == 0 else self.loss(x, *args, **kwargs)
