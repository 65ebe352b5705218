"""One SVI step of pyrovae's training loop, following Pyro's recipe for custom loops: the ELBO's
differentiable loss, ``backward`` and a torch optimizer, with the loss and gradients checked for
NaN and inf before they can reach the parameters; and the choice of step ``fit`` takes
(``Config.step``): :class:`EagerSteps` runs this one, :class:`~pyrovae.graphs.SyncFreeSteps` the
captured one.
"""

from __future__ import annotations

import math
import re

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import Tensor, nn

from .data import DataError
from .errors import ConfigError


def make_optimizer(
    params, lr: float, weight_decay: float = 0.0, *, cls: type | None = None, **options
) -> torch.optim.Optimizer:
    """Adam (AdamW, decoupled weight decay, when ``weight_decay`` > 0), fused into one kernel per
    step where torch supports it (it updates all parameters in one pass instead of a Python loop
    over them), with its learning rate a tensor on the parameters' device, in their dtype (float32
    on CUDA, whose fused kernel reads it so): the captured step
    (:mod:`pyrovae.graphs`) reads it there, and the eager step takes the same optimizer, so both
    make the same updates. Without a fused kernel for the device or dtype, torch's Adam loop.

    :param params: parameters, or parameter groups (see :func:`decay_groups`).
    :param cls: ``torch.optim.Adam`` or ``torch.optim.AdamW``, to choose it whatever the decay.
    :param options: the optimizer's other arguments (``betas``, ``eps``, ``amsgrad``).
    """
    params = list(params)
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    cls = cls or (torch.optim.AdamW if weight_decay else torch.optim.Adam)
    options["weight_decay"] = weight_decay
    # the rate in the parameters' precision (a float64 model's is not rounded to float32), except
    # where the fused CUDA kernel reads it as float32; never below float32 (a float16 rate rounds)
    dtype = torch.float32 if first.is_cuda else torch.promote_types(first.dtype, torch.float32)
    try:
        lr_t = torch.tensor(float(lr), device=first.device, dtype=dtype)
        return cls(params, lr=lr_t, fused=True, **options)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return cls(params, lr=lr, **options)


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups for AdamW: weight decay on the networks' weight matrices (and conv
    kernels); none on biases, nor on the prior's or likelihood's own parameters (a learned prior's
    means, a likelihood's scale), which decay would bias rather than regularize."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        own = name.split(".")[0] in ("prior", "likelihood")
        (decay if p.dim() >= 2 and not own else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def norm_of(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of tensors together, as a tensor on their device.

    One BLAS dot product per tensor: on a CPU this is about twice as fast as
    :func:`torch.nn.utils.get_total_norm`, which the step pays every time to catch NaN and inf.
    """
    if not grads:
        return torch.zeros(())
    return torch.stack([g.reshape(-1).dot(g.reshape(-1)) for g in grads]).sum().sqrt()


def norm_and_clip(grads: list[Tensor], max_norm: float | None = None) -> Tensor:
    """The gradients' total norm (:func:`norm_of`); with ``max_norm``, the gradients scaled in place
    to at most that norm, by the factor :func:`torch.nn.utils.clip_grad_norm_` uses. The eager and
    captured steps both clip here, so they clip to the same bits.

    :returns: the norm before clipping.
    """
    norm = norm_of(grads)
    if max_norm:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef)
    return norm


def svi_step(
    loss_fn, opt: torch.optim.Optimizer, params: list, x, y=None, clip_norm=None, beta: float = 1.0
) -> tuple[float, float]:
    """One SVI step: the ELBO's differentiable loss, backward, and an optimizer step.

    :param loss_fn: an :class:`~pyrovae.objectives.ELBOLoss` (or DDP around one).
    :param beta: the KL weight of this step.

    The step is skipped, and ``nan`` or ``inf`` returned, when the loss or gradient is not finite,
    so a bad batch never reaches the parameters.

    :returns: the loss and the gradient norm (before clipping).
    """
    try:
        loss = loss_fn(x, y, beta)
    except ValueError as e:
        if "Expected value argument" in str(e):  # a datum the likelihood cannot score: no NaN to retry
            raise _outside_support(str(e), loss_fn) from None
        if "invalid values" not in str(e):  # Pyro's validation caught NaN distribution parameters
            raise
        return math.nan, math.nan
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = norm_and_clip([p.grad for p in params if p.grad is not None], clip_norm)
    loss_v, norm_v = torch.stack([loss.detach(), norm.to(loss)]).tolist()  # one device sync
    if math.isfinite(loss_v) and math.isfinite(norm_v):
        found_inf = getattr(opt, "found_inf", None)
        if found_inf is not None:  # left by a graphed step's flag: this step decided on the host
            found_inf.zero_()
        opt.step()
    return loss_v, norm_v


def _outside_support(message: str, loss_fn) -> DataError:
    """Pyro's refusal of a value outside a distribution's support, in the user's terms: data the
    likelihood cannot score (grey images for a Bernoulli written without ``needs_binary``)."""
    from .likelihoods import LIKELIHOODS

    lik = getattr(getattr(getattr(loss_fn, "module", loss_fn), "vae", None), "likelihood", None)
    lik = getattr(lik, "inner", lik)  # a masked likelihood: name the one it wraps
    name = next((k for k, v in LIKELIHOODS.items() if v is type(lik)), type(lik).__name__)
    found = re.search(
        r"at site '([^']*)'.*?within the support \((.*?)\) of the distribution (\w+)", message, re.S
    )
    site, support, family = found.groups() if found else ("x", "?", "?")
    return DataError(
        f"the data at site '{site}' has values outside the support {support} of the likelihood {name} "
        f"({family}): set binarize dynamic to binarize grey images, or declare what the likelihood "
        'accepts (needs_binary = True, support = "binary" for a Bernoulli; see docs/python-api.md) '
        "so that such data is binarized or refused before training",
        "binarize",
    )


STEPS = ("auto", "eager", "graphed", "compiled")
"""Choices of ``Config.step``: ``eager`` is :func:`svi_step` (the loss read after every step);
``graphed`` is :class:`~pyrovae.graphs.GraphedStep`, captured once and replayed (a CUDA graph on
CUDA; on a CPU a graph of tensor operations, which makes the eager step's updates bit for bit);
``compiled`` is the CPU's graphed step compiled by ``torch.compile``; ``auto`` is ``graphed`` in
one process (on a CPU for runs of at least :data:`TRACE_PAYS_FROM` steps) and ``eager`` otherwise."""

#: On a CPU ``auto`` captures the step for runs of at least this many steps: tracing takes a few
#: tenths of a second, and each replay saves about a millisecond over the eager step.
TRACE_PAYS_FROM = 1000


def resolve_step(kind: str, device: torch.device, world: int = 1, steps: int | None = None) -> str:
    """The step ``kind`` (``Config.step``) runs on ``device`` with ``world`` processes, for a run of
    ``steps`` steps (``None``: unknown, as for a long run).

    :raises ConfigError: for ``graphed`` or ``compiled`` in more than one process, and for
        ``compiled`` on CUDA.
    """
    if kind in ("graphed", "compiled") and world > 1:
        raise ConfigError(f"step {kind} runs in one process; under torchrun use step eager (or auto)", "step")
    if kind == "compiled" and device.type == "cuda":
        raise ConfigError("step compiled compiles the CPU's step with torch.compile; on CUDA use step graphed "
                          "(a CUDA graph, the faster there) or auto", "step")  # fmt: skip
    if kind == "auto":
        short = device.type != "cuda" and steps is not None and steps < TRACE_PAYS_FROM
        return "eager" if world > 1 or short else "graphed"
    return kind


class EagerSteps:
    """Pyro's recipe step by step (:func:`~pyrovae.step.svi_step`), its loss read after every
    step: a non-finite one is skipped and reported at once.

    Call with ``(x, y, beta)``; :meth:`read` returns ``(loss sum, steps, bad)`` since the last read,
    ``bad`` the first non-finite ``(loss, gradient norm)`` or ``None``."""

    every = 1  # steps between reads

    def __init__(self, loss_fn: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor],
                 clip_norm: float | None = None) -> None:  # fmt: skip
        self.loss_fn, self.opt, self.params, self.clip_norm = loss_fn, opt, params, clip_norm
        self.description = "eager (the loss read after every step)"
        self._reset()

    def _reset(self) -> None:
        self.total, self.count, self.bad = 0.0, 0, None

    def __call__(self, x: Tensor, y: Tensor | None, beta: float, validate: bool = False) -> None:
        with pyro.validation_enabled(validate and is_validation_enabled()):
            loss, norm = svi_step(self.loss_fn, self.opt, self.params, x, y, self.clip_norm, beta=beta)
        if math.isfinite(loss) and math.isfinite(norm):
            self.total, self.count = self.total + loss, self.count + 1
        elif self.bad is None:
            self.bad = (loss, norm)

    def read(self) -> tuple[float, int, tuple | None]:
        out = self.total, self.count, self.bad
        self._reset()
        return out

    def reset(self) -> None:
        """Forget what the optimizer's state was (after a rollback or resume loads another)."""
