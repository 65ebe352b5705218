"""Train a preset VAE on MNIST, evaluate it and write its figures: an SVI experiment to copy.

    python experiments/mnist_vae.py --preset tutorial --epochs 10 --out runs/mnist_tutorial

Writes the run directory (config, metrics, checkpoints, eval.json) plus samples, reconstructions
and the training curve as PNG files, and prints the test figures in nats per image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyrovae
from pyrovae.config import PRESETS, Config
from pyrovae.evaluate import summary

try:
    from _common import run_script
except ImportError:  # imported as experiments.mnist_vae
    from experiments._common import run_script


def main(args: argparse.Namespace) -> dict:
    # 1. configure: a preset, then the options given here
    cfg = Config.from_preset(args.preset, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
                             eval_k=args.k, eval_n_test=args.n_test)  # fmt: skip
    if args.batch_size:
        cfg.batch_size = args.batch_size

    # 2. train by SVI (checkpoints every epoch; --resume continues an interrupted run), then
    # evaluate on the fixed-seed binarized test set and draw samples and reconstructions: the run
    # layer writes eval.json, samples.png and reconstructions.png, as `pyrovae train` does
    run = pyrovae.train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    res = run.results
    print(summary(res) + "; dynamically binarized MNIST")

    # 3. one more figure: the training curves
    from pyrovae import plots

    plots.training_curves(Path(args.out, "metrics.csv"), Path(args.out, "training.png"))
    return res


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="tutorial",
        help="network and optimizer (default: tutorial)",
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--k", type=int, default=1000, help="importance samples for log p(x) (default: 1000)")
    p.add_argument("--n-test", type=int, default=1000, help="test images for log p(x) (default: 1000)")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PYROVAE_DATA)")
    p.add_argument("--out", default="runs/mnist_vae", help="run directory (default: runs/mnist_vae)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
