"""One SVI step of pyrovae's training loop, following Pyro's recipe for custom loops: the ELBO's
differentiable loss, ``backward`` and a torch optimizer, with the loss and gradients checked for
NaN and inf before they can reach the parameters.
"""

from __future__ import annotations

import math

import torch


def make_optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (AdamW, decoupled weight decay, when ``weight_decay`` > 0), fused into one kernel per
    step where torch supports it (it updates all parameters in one pass instead of a Python loop
    over them).

    :param params: parameters, or parameter groups (see :func:`decay_groups`).
    """
    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    opts = dict(lr=lr, weight_decay=weight_decay) if weight_decay else dict(lr=lr)
    try:
        return cls(params, fused=True, **opts)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return cls(params, **opts)


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


def grad_norm(params: list) -> torch.Tensor:
    """The 2-norm of all gradients of ``params`` together (see :func:`norm_of`)."""
    return norm_of([p.grad for p in params if p.grad is not None])


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
        if "invalid values" not in str(e):  # Pyro's validation caught NaN distribution parameters
            raise
        return math.nan, math.nan
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    else:
        norm = grad_norm(params)
    loss_v, norm_v = torch.stack([loss.detach(), norm.to(loss)]).tolist()  # one device sync
    if math.isfinite(loss_v) and math.isfinite(norm_v):
        opt.step()
    return loss_v, norm_v
