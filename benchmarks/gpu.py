"""Training steps per second on one GPU: pyrovae's step eager and captured as a CUDA graph, against
the lean eager PyTorch loop a user writes, that loop captured as a graph (the practical limit), and
a user's plain ``pyro.infer.SVI`` script; and importance-sampled evaluation against a bare batched
forward pass.

Contestants, all on the tutorial network (784-400-50, softplus, Bernoulli likelihood, Adam 1e-3),
the training images resident on the device and binarized there every step:

- **lean eager**: ``nn.Linear`` layers, ``binary_cross_entropy_with_logits``, the analytic KL,
  torch's ``Adam``; the loss summed on the device (no ``.item()`` per step). The reference (1.00x).
- **lean graphed**: the same step captured once with ``torch.cuda.graph`` (``capturable`` Adam).
- **pyrovae eager**: what ``fit`` runs today, :func:`pyrovae.step.svi_step` on ``ELBOLoss`` (one
  host read of loss and gradient norm per step, to skip a non-finite update).
- **pyrovae graphed**: :class:`pyrovae.graphs.GraphedStep`: the same loss, the finiteness check on
  the device (fused Adam's ``found_inf``), captured once and replayed.
- **user's SVI script**: ``SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
  Trace_ELBO()).step(x)``.

Rounds alternate between the contestants, each timing ``--steps`` steps between two
``torch.cuda.synchronize()``; the table gives the median steps per second and the ratio to lean
eager, per batch size. Evaluation: log p(x) with K importance samples over the test images,
:func:`pyrovae.evaluate.log_likelihood` against ``benchmarks/epoch_time.py``'s bare estimator on the
same model (median of alternating repeats).

    python benchmarks/gpu.py                           # on a GPU: batch 128 and 1024, K = 1000, 10,000 images
    python benchmarks/gpu.py --device cpu --synthetic --steps 3 --rounds 1 --batch-sizes 16 --k 5 --n-eval 20
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.build import build_model, resolve_device
from pyrovae.config import Config
from pyrovae.evaluate import log_likelihood
from pyrovae.graphs import GraphedStep, fused_adam
from pyrovae.machine import describe
from pyrovae.objectives import ELBOLoss, make_elbo
from pyrovae.step import svi_step


class LeanVAE(nn.Module):
    """The tutorial VAE as a user writes it in plain PyTorch."""

    def __init__(self, z_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        self.enc, self.loc, self.scale = (
            nn.Linear(784, hidden),
            nn.Linear(hidden, z_dim),
            nn.Linear(hidden, z_dim),
        )
        self.dec, self.out = nn.Linear(z_dim, hidden), nn.Linear(hidden, 784)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The negative ELBO summed over the batch (one z per image, analytic KL)."""
        x = x.flatten(1)  # (batch, 784)
        h = F.softplus(self.enc(x))
        loc, scale = self.loc(h), F.softplus(self.scale(h))
        z = loc + scale * torch.randn_like(loc)
        logits = self.out(F.softplus(self.dec(z)))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - scale.log().sum()
        return recon + kl


def lean_eager(data: torch.Tensor, batch: int, device) -> tuple:
    model = LeanVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    total = torch.zeros((), device=device)

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = model(torch.bernoulli(x))
        loss.backward()
        opt.step()
        total.add_(loss.detach())

    return step


def lean_graphed(data: torch.Tensor, batch: int, device):
    model = LeanVAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    static_x = data[:batch].clone()

    def body():
        loss = model(torch.bernoulli(static_x))
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()

    def step(x):
        static_x.copy_(x)
        graph.replay()

    return step


def _pyrovae_vae(device):
    cfg = Config.from_preset("tutorial")
    pyro.set_rng_seed(0)
    return build_model(cfg, (1, 28, 28), 0).to(device), make_elbo(cfg.elbo, cfg.num_particles)


def pyrovae_eager(data, batch, device):
    vae, elbo = _pyrovae_vae(device)
    params = [p for p in vae.parameters() if p.requires_grad]
    loss_fn, opt = ELBOLoss(vae, elbo), torch.optim.Adam(params, lr=1e-3, fused=device.type == "cuda")

    def step(x):
        with pyro.validation_enabled(False):  # as fit runs after its first step
            svi_step(loss_fn, opt, params, torch.bernoulli(x))

    return step


def pyrovae_graphed(data, batch, device):
    vae, elbo = _pyrovae_vae(device)
    params = [p for p in vae.parameters() if p.requires_grad]
    graphed = GraphedStep(ELBOLoss(vae, elbo), params, fused_adam(params, 1e-3), data[:batch], binarize=True)
    return graphed


def user_svi(data, batch, device):
    vae, _ = _pyrovae_vae(device)
    pyro.clear_param_store()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())

    def step(x):
        svi.step(torch.bernoulli(x))

    return step


CONTESTANTS = {"lean eager": lean_eager, "lean graphed": lean_graphed, "pyrovae eager": pyrovae_eager,
               "pyrovae graphed": pyrovae_graphed, "user's SVI script": user_svi}  # fmt: skip


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def race(data: torch.Tensor, batch: int, args, device) -> dict[str, float]:
    """Median steps per second of each contestant at ``batch``, in alternating rounds."""
    names = [n for n in CONTESTANTS if device.type == "cuda" or "graphed" not in n or n == "pyrovae graphed"]
    steps = {n: CONTESTANTS[n](data, batch, device) for n in names}
    perm = torch.randperm(len(data), device=device)
    batches = [data[perm[i : i + batch]] for i in range(0, len(data) - batch + 1, batch)]
    rates = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names[:: 1 if r % 2 == 0 else -1]:
            _sync(device)
            t0 = time.perf_counter()
            for s in range(args.steps):
                steps[n](batches[s % len(batches)])
            _sync(device)
            rates[n].append(args.steps / (time.perf_counter() - t0))
    return {n: statistics.median(v) for n, v in rates.items()}


def evaluation(test: torch.Tensor, args, device) -> dict[str, tuple[float, float]]:
    """Seconds and mean log p(x) of pyrovae's estimator and the bare one, same model and draws."""
    spec = importlib.util.spec_from_file_location("epoch_time", Path(__file__).with_name("epoch_time.py"))
    et = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(et)
    vae, _ = _pyrovae_vae(device)
    vae.eval()
    x = torch.bernoulli(test[: args.n_eval], generator=torch.Generator(device).manual_seed(0))
    chunk = max(1, min(args.k, et.MAX_ELEMENTS // (args.batch_eval * 784)))
    fns = {"pyrovae log_likelihood": lambda xb: log_likelihood(vae, xb, None, args.k),
           "bare forward pass": lambda xb: et.bare_log_likelihood(vae, xb, args.k, chunk)}  # fmt: skip
    seconds, value = {n: [] for n in fns}, {}
    for r in range(args.eval_repeats):
        for n in list(fns)[:: 1 if r % 2 == 0 else -1]:
            torch.manual_seed(0)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                value[n] = torch.cat([fns[n](x[i : i + args.batch_eval])
                                      for i in range(0, len(x), args.batch_eval)]).mean().item()  # fmt: skip
            _sync(device)
            seconds[n].append(time.perf_counter() - t0)
    return {n: (statistics.median(seconds[n]), value[n]) for n in fns}


def _data(args, device) -> tuple[torch.Tensor, torch.Tensor]:
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        return torch.rand(2048, 1, 28, 28, generator=g).to(device), torch.rand(
            512, 1, 28, 28, generator=g
        ).to(device)
    from pyrovae.data import load_mnist

    train, test, _ = load_mnist(args.data_dir)
    return train.x.to(device), test.x.to(device)


def main(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    train, test = _data(args, device)
    graphs = "" if device.type == "cuda" else (" (no CUDA: the lean graphed loop is left out; pyrovae's graphed "
                                                 "step is its traced CPU graph)")  # fmt: skip
    print(f"{describe(device)}{graphs}; {args.steps} steps x {args.rounds} rounds")
    results = {"train": {}, "eval": None}
    for batch in args.batch_sizes:
        rates = race(train, batch, args, device)
        base = rates["lean eager"]
        results["train"][batch] = rates
        print(f"\nbatch {batch}: {'contestant':20s} {'steps/s':>9s} {'images/s':>10s} {'vs lean eager':>14s}")
        for n, v in rates.items():
            print(f"{'':9s}{n:20s} {v:9.1f} {v * batch:10.0f} {v / base:13.2f}x")
    results["eval"] = ev = evaluation(test, args, device)
    base = ev["bare forward pass"][0]
    print(
        f"\nlog p(x), K={args.k}, {min(args.n_eval, len(test))} images: {'seconds':>8s} {'vs bare':>8s} {'log p(x)':>9s}"
    )
    for n, (s, v) in ev.items():
        print(f"  {n:24s} {s:8.3f} {base / s:7.2f}x {v:9.2f}")
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default: auto)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024], help="default: 128 1024")
    p.add_argument("--steps", type=int, default=200, help="steps per contestant per round (default: 200)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default: 5)")
    p.add_argument("--k", type=int, default=1000, help="importance samples for log p(x) (default: 1000)")
    p.add_argument("--n-eval", type=int, default=10000, help="test images for log p(x) (default: 10000)")
    p.add_argument("--batch-eval", type=int, default=100, help="images per evaluation batch (default: 100)")
    p.add_argument("--eval-repeats", type=int, default=3, help="repeats of each estimator (default: 3)")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PYROVAE_DATA)")
    p.add_argument("--synthetic", action="store_true", help="random images instead of MNIST (smoke runs)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
