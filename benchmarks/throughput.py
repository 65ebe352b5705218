"""Images per second of the pyrovae SVI step against a hand-written PyTorch VAE loop.

Both sides train the same networks (Pyro's tutorial VAE, 784-400-50 softplus MLPs) on the same
batches with Adam. The hand-written loop computes the analytic-KL ELBO with torch ops and steps
``torch.optim.Adam`` as a user writes it (torch's default, a loop over parameters on a CPU), and
again with ``fused=True``. pyrovae runs its training step (``pyrovae.step.svi_step``: the loss,
a NaN/inf check of loss and gradients, fused Adam) on ``make_elbo("meanfield")`` (Pyro's
``TraceMeanField_ELBO``, analytic KL, the same objective) and on ``Trace_ELBO``. Steps alternate
between the contestants in rounds so drift in machine load hits all equally.

    python benchmarks/throughput.py --batch-size 128 --steps 200 --rounds 9
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.build import build_model
from pyrovae.config import PRESETS, Config
from pyrovae.objectives import ELBOLoss
from pyrovae.objectives import make_elbo
from pyrovae.step import make_optimizer, svi_step


class HandVAE(nn.Module):
    """The tutorial VAE written directly in PyTorch, with the same layer shapes and activations."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.enc = vae.guide_net.encoder
        self.loc, self.raw_scale = vae.guide_net.loc, vae.guide_net.raw_scale
        self.dec = vae.decoder

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        loc, scale = self.loc(h), self.raw_scale(h).exp()
        z = loc + scale * torch.randn_like(loc)
        logits = self.dec(z)
        recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - scale.log().sum()
        return kl - recon


def _fresh(cfg: Config):
    torch.manual_seed(0)
    return build_model(cfg, (1, 28, 28))


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    cfg = Config(**PRESETS["tutorial"])
    x_all = torch.bernoulli(
        torch.rand(args.steps * args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    )
    x_all = x_all.to(device)
    batches = x_all.split(args.batch_size)

    def hand_loop(fused: bool):
        hand = HandVAE(_fresh(cfg).to(device))
        opt = torch.optim.Adam(hand.parameters(), lr=1e-3, fused=fused)

        def step(x):
            loss = hand.loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    def pyrovae_step(kind: str):
        vae = _fresh(cfg).to(device)
        params = list(vae.parameters())
        opt, loss_fn = make_optimizer(params, 1e-3), ELBOLoss(vae, make_elbo(kind))

        def step(x):
            with pyro.validation_enabled(False):  # as in the training loop after its first step
                return svi_step(loss_fn, opt, params, x)[0]

        return step

    contestants = {
        "hand-written PyTorch (analytic KL)": hand_loop(fused=False),
        "hand-written, fused Adam": hand_loop(fused=True),
        "pyrovae svi_step (meanfield)": pyrovae_step("meanfield"),
        "pyrovae svi_step (trace)": pyrovae_step("trace"),
    }

    times = {name: [] for name in contestants}
    names = list(contestants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            step = contestants[name]
            for x in batches[:10]:  # warm-up
                step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x in batches:
                step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)

    n = args.steps * args.batch_size
    hand, fused = times["hand-written PyTorch (analytic KL)"], times["hand-written, fused Adam"]
    print(f"pyro {pyro.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds")  # fmt: skip
    print(
        "speed ratios: median over rounds of (reference time / contestant time) in the same round, with their range"
    )
    print(f"{'contestant':36s} {'images/s':>9s} {'vs hand-written':>24s} {'vs hand, fused Adam':>24s}")
    for name, ts in times.items():
        cols = []
        for ref in (hand, fused):
            r = sorted(a / b for a, b in zip(ref, ts, strict=True))
            cols.append(f"{statistics.median(r):.3f}x ({r[0]:.2f}-{r[-1]:.2f})")
        print(f"{name:36s} {n / statistics.median(ts):9.0f} {cols[0]:>24s} {cols[1]:>24s}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--steps", type=int, default=200, help="timed steps per round (default: 200)")
    p.add_argument(
        "--rounds", type=int, default=9, help="alternating rounds; the median is reported (default: 9)"
    )
    p.add_argument("--device", default="cpu", help="device (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
