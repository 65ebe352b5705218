"""Train a preset VAE on MNIST, evaluate it and write its figures: an SVI experiment to copy.

    python experiments/mnist_vae.py --preset tutorial --epochs 10 --out runs/mnist_tutorial

Writes the run directory (config, metrics, checkpoints, eval.json) plus samples, reconstructions
and the training curve as PNG files, and prints the test figures in nats per image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyrovae
from pyrovae import posterior
from pyrovae.config import PRESETS, Config
from pyrovae.evaluate import evaluate


def main(args: argparse.Namespace) -> dict:
    # 1. configure: a preset, then the options given here
    cfg = Config(
        **{**PRESETS[args.preset], "epochs": args.epochs, "seed": args.seed, "data_dir": args.data_dir}
    )
    if args.batch_size:
        cfg.batch_size = args.batch_size

    # 2. train by SVI (checkpoints every epoch; --resume continues an interrupted run)
    vae = pyrovae.train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)

    # 3. evaluate on the (fixed-seed binarized) test set
    run = pyrovae.load_run(args.out)
    test = run.data.test
    res = evaluate(vae, test, k=args.k, n_ll=args.n_test)
    Path(args.out, "eval.json").write_text(json.dumps(res, indent=2))
    print(f"test ELBO {res['elbo']:.2f} nats/image; importance-sampled log p(x) {res['log_likelihood']:.2f} "
          f"nats/image (K={args.k}, {res['n_ll_images']} images); dynamically binarized MNIST")  # fmt: skip

    # 4. figures
    from pyrovae import plots

    plots.image_grid(
        posterior.sample_prior(vae, 64), Path(args.out, "samples.png"), "Samples from p(x|z), z ~ p(z)"
    )
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
    main(parse_args())
