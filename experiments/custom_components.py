"""A prior and a guide written outside pyrovae, following only the protocol in docs/python-api.md.

    python experiments/custom_components.py --epochs 1

The prior is a Student-t (heavier tails than N(0, I)); the guide is a diagonal Normal whose scale
is shared across data (a learned vector, not an encoder output). Neither is registered: they are
passed to :class:`pyrovae.VAE` as objects, trained by Pyro's SVI, and evaluated with the library.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from pyrovae import VAE
from pyrovae.data import load_dataset
from pyrovae.evaluate import evaluate
from pyrovae.nets import MLPEncoder

try:
    from _common import run_script
except ImportError:  # imported as experiments.custom_components
    from experiments._common import run_script


class StudentTPrior(PyroModule):
    """p(z) = prod_d StudentT(z_d; nu, 0, 1) with a learned degrees-of-freedom nu."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.df = PyroParam(torch.tensor(5.0), constraint=constraints.greater_than(1.0))

    def forward(self, y=None):
        return dist.StudentT(self.df, self.loc, torch.ones_like(self.loc)).to_event(1)


class SharedScaleGuide(PyroModule):
    """q(z|x) = N(mu(x), diag(s^2)) with one learned scale vector s for all data."""

    def __init__(self, encoder: nn.Module, z_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.loc = nn.Linear(encoder.feature_dim, z_dim)
        self.raw_scale = PyroParam(torch.full((z_dim,), -1.0))

    def forward(self, x, y=None):
        loc = self.loc(self.encoder(x, y))  # (batch, z_dim)
        return dist.Normal(loc, F.softplus(self.raw_scale).expand_as(loc)).to_event(1)


def main(args: argparse.Namespace) -> dict:
    pyro.set_rng_seed(args.seed)
    data = load_dataset("mnist", args.data_dir)
    train_x = data.train.x[: args.train_size]
    shape, z_dim = data.x_shape, 16
    vae = VAE(
        shape,
        z_dim,
        prior=StudentTPrior(z_dim),
        guide=SharedScaleGuide(MLPEncoder(shape, [256]), z_dim),
        hidden=(256,),
    )
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    for epoch in range(args.epochs):
        total = 0.0
        for idx in torch.randperm(len(train_x)).split(128):
            total += svi.step(torch.bernoulli(train_x[idx]))
        print(f"epoch {epoch + 1}: -ELBO {total / len(train_x):.2f} nats/image")
    test = data.test.subset(slice(0, args.n_test))
    test.x = torch.bernoulli(test.x, generator=torch.Generator().manual_seed(0))
    res = evaluate(vae, test, k=args.k)
    print(f"test ELBO {res['elbo']:.2f}, importance-sampled log p(x) {res['log_likelihood']:.2f} (K={args.k}), "
          f"nats/image on the first {len(test.x)} MNIST test images (binarized once, seed 0; trained on "
          f"{len(train_x)} images binarized dynamically, afresh each step); "
          f"prior df {vae.prior.df.item():.2f}")  # fmt: skip
    return res


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.add_argument(
        "--train-size", type=int, default=None, help="use the first N training images (default: all)"
    )
    p.add_argument("--k", type=int, default=100, help="importance samples (default: 100)")
    p.add_argument("--n-test", type=int, default=1000, help="test images (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PYROVAE_DATA)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
