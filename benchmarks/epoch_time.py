"""Epoch time and test ELBO of ``pyrovae.train`` against a loop written the way Pyro's VAE example
is, and importance-sampled evaluation against a bare batched encoder+decoder forward pass.

1. Training: the same tutorial network (784-400-50, softplus), batch, optimizer settings (Adam
   1e-3) and epochs on the 50,000 MNIST training images, dynamically binarized. The Pyro-example
   loop is a ``DataLoader`` over the cached tensor with ``pyro.infer.SVI.step``, ``pyro.optim.Adam``
   and ``Trace_ELBO``, its networks written out as in the example. Both end with the test ELBO on
   the 10,000 test images binarized once (seed 0), so the comparison covers correctness as well.
2. Evaluation: ``pyrovae.evaluate.log_likelihood`` (K samples, through Pyro traces) against the
   same estimate computed by hand from one encoder pass and batched decoder passes; the median
   of ``--eval-repeats`` timings of each, alternating which goes first.

    python benchmarks/epoch_time.py --epochs 10
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyrovae
from pyrovae.build import resolve_device
from pyrovae.config import PRESETS, Config
from pyrovae.data import binarize, load_dataset
from pyrovae.evaluate import MAX_ELEMENTS, log_likelihood
from pyrovae.loaded import EVAL_BINARIZE_SEED
from pyrovae.machine import describe


class ExampleVAE(nn.Module):
    """The VAE of Pyro's tutorial and ``examples/vae/vae.py``, written the same way."""

    def __init__(self, z_dim: int = 50, hidden: int = 400) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.enc1, self.enc_loc, self.enc_scale = (
            nn.Linear(784, hidden),
            nn.Linear(hidden, z_dim),
            nn.Linear(hidden, z_dim),
        )
        self.dec1, self.dec2 = nn.Linear(z_dim, hidden), nn.Linear(hidden, 784)

    def encode(self, x):
        h = F.softplus(self.enc1(x))
        return self.enc_loc(h), torch.exp(self.enc_scale(h))

    def decode(self, z):
        return self.dec2(F.softplus(self.dec1(z)))  # logits

    def model(self, x):
        pyro.module("decoder", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encode(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


def pyro_example(train_x, test_x, args) -> tuple[float, float]:
    """Seconds per epoch and test ELBO of the Pyro-example loop."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = ExampleVAE().to(train_x.device)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    loader = DataLoader(
        TensorDataset(train_x.reshape(len(train_x), -1)), batch_size=args.batch_size, shuffle=True
    )
    seconds = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        for (x,) in loader:
            svi.step(torch.bernoulli(x))
        seconds.append(time.perf_counter() - t0)
    flat = test_x.reshape(len(test_x), -1)
    with torch.no_grad():
        loss = sum(
            pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, flat[i : i + 1000])
            for i in range(0, len(flat), 1000)
        )
    return sum(seconds) / len(seconds), -loss / len(flat)


def pyrovae_train(args) -> tuple[float, float, pyrovae.VAE]:
    """Seconds per epoch (training steps only, as the example's figure) and test ELBO of pyrovae."""
    cfg = Config(**{**PRESETS["tutorial"], "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed,
                    "data_dir": args.data_dir, "train_size": args.train_size, "device": args.device})  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        run = pyrovae.train(cfg, out, progress=False, evaluate=False)  # the test ELBO alone, below
        with open(Path(out) / "metrics.csv") as f:
            seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
        elbo = pyrovae.evaluate(run.model, run.data.test, k=1, n_ll=1)["elbo"]
    return sum(seconds) / len(seconds), elbo, run.model


@torch.no_grad()
def bare_log_likelihood(vae: pyrovae.VAE, x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """log p(x) for the diagonal-Normal / N(0, I) / Bernoulli model, with torch ops only."""
    q = vae.encode(x)
    loc, scale = q.base_dist.loc, q.base_dist.scale
    lws = []
    for i in range(0, k, chunk):
        eps = torch.randn(min(chunk, k - i), *loc.shape, dtype=loc.dtype, device=loc.device)
        z = loc + scale * eps
        logits = vae.decoder(z)
        log_px = (
            -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
            .flatten(2)
            .sum(-1)
        )
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - scale.log()).sum(-1)
        lws.append(log_px + log_pz - log_qz)
    return torch.logsumexp(torch.cat(lws), 0) - math.log(k)


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = resolve_device(args.device)  # both loops and both estimators on the same device
    data = load_dataset("mnist", args.data_dir)
    test_x = binarize(data.test.x, torch.Generator().manual_seed(EVAL_BINARIZE_SEED)).to(device)
    train_x = data.train.x[: args.train_size].to(device)  # pyrovae's train_size takes the same first images
    ex_s, ex_elbo = pyro_example(train_x, test_x, args)
    pv_s, pv_elbo, vae = pyrovae_train(args)

    x = test_x[: args.n_test]
    chunk = max(1, min(args.k, MAX_ELEMENTS // (args.batch_eval * 784)))
    estimators = {
        "pyrovae log_likelihood": lambda xb: log_likelihood(vae, xb, None, args.k),
        "bare forward pass": lambda xb: bare_log_likelihood(vae, xb, args.k, chunk),
    }
    seconds, lls = {name: [] for name in estimators}, {}
    for r in range(args.eval_repeats):  # alternating which goes first, as load drifts
        for name in list(estimators)[:: 1 if r % 2 == 0 else -1]:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            lls[name] = torch.cat([estimators[name](x[i : i + args.batch_eval])
                                   for i in range(0, len(x), args.batch_eval)]).mean().item()  # fmt: skip
            seconds[name].append(time.perf_counter() - t0)
    timings = {name: (statistics.median(seconds[name]), lls[name]) for name in estimators}

    n = len(train_x)
    print(f"{describe(device)}; batch {args.batch_size}, {args.epochs} epochs, {n} images/epoch")
    print(f"{'training':34s} {'s/epoch':>8s} {'images/s':>9s} {'speed-up':>9s} {'test ELBO':>10s}")
    for name, (s, e) in {
        "Pyro example (DataLoader, svi.step)": (ex_s, ex_elbo),
        "pyrovae.train": (pv_s, pv_elbo),
    }.items():
        print(f"{name:34s} {s:8.2f} {n / s:9.0f} {ex_s / s:8.2f}x {e:10.2f}")
    base = timings["bare forward pass"][0]
    print(f"{f'log p(x), K={args.k}, {len(x)} images':34s} {'seconds':>8s} {'vs bare':>9s} {'log p(x)':>10s}"
          f"   (median of {args.eval_repeats} alternating repeats)")  # fmt: skip
    for name, (s, ll) in timings.items():
        print(f"{name:34s} {s:8.2f} {base / s:8.2f}x {ll:10.2f}")
    return {"example": (ex_s, ex_elbo), "pyrovae": (pv_s, pv_elbo), "eval": timings}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="training epochs for both (default: 10)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--train-size", type=int, default=None, help="first N training images (default: all 50,000)"
    )
    p.add_argument("--k", type=int, default=1000, help="importance samples (default: 1000)")
    p.add_argument("--n-test", type=int, default=1000, help="test images for log p(x) (default: 1000)")
    p.add_argument("--batch-eval", type=int, default=100, help="images per evaluation batch (default: 100)")
    p.add_argument(
        "--eval-repeats", type=int, default=3, help="timed repeats of each log p(x) estimator (default: 3)"
    )
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PYROVAE_DATA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N, for both loops (default: auto)"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
