"""``softplus`` computed from ``exp`` and ``log``: the same function as torch's, faster on a CPU.

torch's CPU kernels for ``softplus``, ``log1p`` and ``logsigmoid`` (the last is what
``binary_cross_entropy_with_logits`` and Bernoulli's ``log_prob`` call) evaluate one element at a
time, while ``exp`` and ``log`` are vectorized. A VAE's step calls softplus three times on
activation- and image-sized tensors (two hidden layers and the Bernoulli log-density), so the
kernel matters for a CPU training step; ``benchmarks/kernels.py`` and ``benchmarks/throughput.py``
measure by how much (``benchmarks/RESULTS.md``). On other devices torch's own kernel is used.

``softplus(x) = max(x, 0) + log(1 + exp(-|x|))``: ``1 + exp(-|x|)`` lies in (1, 2], so ``log``
loses nothing that matters against ``log1p``; the absolute error is below one unit in the last
place of the result's larger terms (below 6e-8 in float32), as torch's is. The gradient is
``sigmoid(x)``, computed in the backward pass from the saved input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        # in place on fresh tensors: one allocation for the whole expression
        return x.clamp(min=0).add_(x.abs().neg_().exp_().add_(1).log_())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * x.sigmoid()


def softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x))``, elementwise, in ``x``'s dtype and on its device.

    >>> softplus(torch.tensor([-30.0, 0.0, 30.0]))
    tensor([ 0.0000,  0.6931, 30.0000])
    """
    if x.device.type != "cpu":
        return F.softplus(x)
    return _Softplus.apply(x)


class Softplus(nn.Softplus):
    """:class:`torch.nn.Softplus` computed by :func:`softplus` when ``beta`` is 1 (the default).

    Beyond ``threshold`` torch returns ``x`` itself; this returns ``x + log(1 + exp(-x))``, which
    differs from ``x`` by less than ``exp(-threshold)`` (2e-9 at the default 20).
    """

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x) if self.beta == 1 else super().forward(x)
