"""pyrovae's elementwise kernels against the torch code they replace, forward and backward.

Each row times one function on a ``(batch, 784)`` float tensor (an MNIST batch's decoder output,
or a hidden layer's pre-activation for the softplus), its forward pass and the backward pass of
its sum, the two versions alternating within each repeat; the ratio is torch's time over
pyrovae's (above 1: pyrovae's is faster).

- softplus: :func:`pyrovae.functional.softplus` against :func:`torch.nn.functional.softplus`;
- Bernoulli log-density: :class:`pyrovae.distributions.Bernoulli` against Pyro's
  ``dist.Bernoulli`` (torch's ``binary_cross_entropy_with_logits``);
- continuous Bernoulli log-density: :class:`pyrovae.distributions.ContinuousBernoulli` against its
  own earlier form (stop 11), whose normalizer used ``log1p`` and ``expm1``, and against torch's
  ``ContinuousBernoulli`` (which is not normalized beyond ``|logit|`` of about 16 in float32).

    python benchmarks/kernels.py --batch 128 --repeats 21
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro.distributions as dist
import torch
import torch.nn.functional as F

from pyrovae import distributions as pvdist
from pyrovae.distributions import _LOG_C, _series
from pyrovae.functional import softplus
from pyrovae.machine import describe


class _CBBefore(pvdist.ContinuousBernoulli):
    """The continuous Bernoulli's normalizer as it was at stop 11: ``log1p`` and ``expm1``."""

    def _log_norm(self) -> torch.Tensor:
        eta = self.logits
        small = eta.abs() < (0.05 if eta.dtype == torch.float64 else 0.5)
        a = torch.where(small, torch.ones_like(eta), eta.abs())
        closed = torch.log1p(torch.exp(-a)) - torch.log(-torch.expm1(-a) / a)
        return torch.where(small, _series(eta * eta, _LOG_C), closed)


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


def _time(fn, x: torch.Tensor, steps: int) -> float:
    """Seconds per call of ``fn(x).sum().backward()``."""
    for _ in range(5):
        fn(x).sum().backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn(x).sum().backward()
    return (time.perf_counter() - t0) / steps


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(args.batch, 784, generator=gen)).requires_grad_()
    binary = torch.bernoulli(torch.rand(args.batch, 784, generator=gen))
    grey = torch.rand(args.batch, 784, generator=gen)
    races = {  # name: (theirs, ours)
        "softplus vs F.softplus": (F.softplus, softplus),
        "Bernoulli log_prob vs Pyro's": (
            lambda t: dist.Bernoulli(logits=t).log_prob(binary),
            lambda t: pvdist.Bernoulli(logits=t).log_prob(binary),
        ),
        "ContinuousBernoulli log_prob vs stop 11's": (
            lambda t: _CBBefore(logits=t).log_prob(grey),
            lambda t: pvdist.ContinuousBernoulli(logits=t).log_prob(grey),
        ),
        "ContinuousBernoulli log_prob vs torch's": (
            lambda t: dist.ContinuousBernoulli(logits=t).log_prob(grey),
            lambda t: pvdist.ContinuousBernoulli(logits=t).log_prob(grey),
        ),
    }
    print(f"{describe('cpu')}; ({args.batch}, 784) float32, forward + backward, "
          f"{args.steps} calls x {args.repeats} repeats")  # fmt: skip
    print(f"{'kernel':44s} {'torch µs':>9s} {'pyrovae µs':>11s} {'speed-up (range)':>20s}")
    for name, (theirs, ours) in races.items():
        t_theirs, t_ours = [], []
        for _ in range(args.repeats):
            t_theirs.append(_time(theirs, logits, args.steps))
            t_ours.append(_time(ours, logits, args.steps))
        r = sorted(a / b for a, b in zip(t_theirs, t_ours, strict=True))
        print(f"{name:44s} {1e6 * statistics.median(t_theirs):9.0f} {1e6 * statistics.median(t_ours):11.0f} "
              f"{statistics.median(r):7.2f}x ({r[0]:.2f}-{r[-1]:.2f})")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="rows of 784 floats (default: 128)")
    p.add_argument("--steps", type=int, default=50, help="calls timed per repeat (default: 50)")
    p.add_argument(
        "--repeats", type=int, default=11, help="alternating repeats; medians reported (default: 11)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
