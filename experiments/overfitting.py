"""Overfitting on 1,000 MNIST images, and the usual remedies: dropout, weight decay, early
stopping, learning-rate decay, and all of them together.

    python experiments/overfitting.py

Each setting is an ordinary run (``pyrovae.train``) of the tutorial networks on the first 1,000
training images (``--train-size``). After every epoch the hook of the run layer reads the epoch's
checkpoint and measures the *training* ELBO the way the validation ELBO is measured (eval mode, the
1,000 images binarized once), so the two curves compare. Writes ``overfitting.md`` and
``overfitting.png`` to ``experiments/results/``. Nats per image, dynamically binarized MNIST.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time

import torch

import pyrovae
from pyrovae import checkpoint
from pyrovae.build import build_model
from pyrovae.config import Config
from pyrovae.data import binarize
from pyrovae.evaluate import validate
from pyrovae.loaded import load_data

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, run_script


def settings(args: argparse.Namespace) -> dict[str, dict]:
    """Options of each setting on top of the base config."""
    remedies = {
        "dropout": dict(dropout=args.dropout),
        "weight decay": dict(weight_decay=args.weight_decay),
        "early stopping": dict(patience=args.patience),
        "LR decay": dict(lr_schedule="cosine"),
    }
    everything = {k: v for d in remedies.values() for k, v in d.items()}
    return {"none": {}, **remedies, "all": everything}


def main(args: argparse.Namespace) -> list[dict]:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    base = Config.from_preset("tutorial", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              train_size=args.train_size,
                              val_size=args.val_size, seed=args.seed, data_dir=args.data_dir, eval_k=args.k,
                              eval_n_test=args.n_test)  # fmt: skip
    data = load_data(base)
    # the training images binarized once, like the validation set, to measure the training ELBO
    train_fixed = dataclasses.replace(data.train, x=binarize(data.train.x, torch.Generator().manual_seed(0)))
    rows, curves, t0 = [], {}, time.perf_counter()
    for name, options in settings(args).items():
        cfg = dataclasses.replace(base, **options)
        out = args.runs_dir / f"overfit-{name.replace(' ', '-')}"
        probe = build_model(cfg, data.x_shape).eval()
        train_elbo: list[float] = []

        def measure(row: dict, probe=probe, out=out, train_elbo=train_elbo) -> None:
            probe.load_state_dict(checkpoint.load(out / "checkpoint.pt")["model"])
            with torch.random.fork_rng():  # leave the run's random streams alone
                torch.manual_seed(0)
                recon, kl = validate(probe, train_fixed, lambda x, y: None)
            train_elbo.append(recon - kl)

        res = pyrovae.train(
            cfg, out, overwrite=True, progress=not args.quiet, data=data, on_epoch=measure
        ).results
        metrics = list(csv.DictReader(open(out / "metrics.csv")))
        val = [float(r["val_elbo"]) for r in metrics]
        best = max(range(len(val)), key=val.__getitem__)
        curves[name] = (train_elbo, val)
        rows.append(dict(setting=name, epochs=len(val), best_epoch=best + 1, best_val=val[best],
                         final_train=train_elbo[-1], final_val=val[-1], test_elbo=res["elbo"],
                         ll=res["log_likelihood"]))  # fmt: skip
        print(rows[-1])
    minutes = (time.perf_counter() - t0) / 60
    table = markdown_table(
        [
            "setting",
            "epochs run",
            "best epoch",
            "best val ELBO",
            "last train ELBO",
            "last val ELBO",
            "test ELBO (best.pt)",
            f"test log p(x), K={args.k}",
        ],  # fmt: skip
        [
            [
                r["setting"],
                r["epochs"],
                r["best_epoch"],
                r["best_val"],
                r["final_train"],
                r["final_val"],
                r["test_elbo"],
                r["ll"],
            ]
            for r in rows
        ],  # fmt: skip
    )
    (
        args.results_dir / "overfitting.md"
    ).write_text(f"""# Overfitting on {args.train_size:,} images, and its remedies

Command: `{command_line()}`

Budget: up to {args.epochs} epochs per setting on the first {args.train_size} training images, batch
{args.batch_size}, Adam {args.lr:g}; Pyro's tutorial networks (784-400-50 softplus MLPs), Bernoulli
likelihood on dynamically binarized MNIST. Remedies: dropout {args.dropout} on the hidden units of
encoder and decoder; decoupled weight decay {args.weight_decay} (AdamW) on the weight matrices; early
stopping with patience {args.patience}; cosine learning-rate decay to 0 over the epochs; "all" combines
them. Validation ELBO on {args.val_size} held-out training images; training ELBO measured the same way
(eval mode, binarized once) on the {args.train_size} training images; test figures of the best-validation
checkpoint on all 10,000 test images, log p(x) importance-sampled with K={args.k} on the first
{args.n_test}. Nats per image. Wall time {minutes:.1f} min, one thread (OMP_NUM_THREADS=1) on a 2-core
machine shared with other jobs.

{table}
""")
    from pyrovae import plots

    fig, axes = plots.plt.subplots(2, 3, figsize=(13, 7), sharex=True, sharey=True)
    for ax, (name, (train, val)) in zip(axes.flat, curves.items(), strict=True):
        ax.plot(range(1, len(train) + 1), train, label="training ELBO")
        ax.plot(range(1, len(val) + 1), val, label="validation ELBO")
        ax.set_title(name)
        ax.set_ylim(min(min(v[1]) for v in curves.values()) - 5, max(max(v[0]) for v in curves.values()) + 5)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("ELBO, nats/image")
    axes.flat[0].legend()
    fig.suptitle(f"Training vs validation ELBO, {args.train_size} training images")
    plots.save(fig, args.results_dir / "overfitting.png")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=200, k=200, n_test=300, train_size=1000)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    p.add_argument("--val-size", type=int, default=2000, help="validation images (default: 2000)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout of that setting (default: 0.2)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience (default: 10)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
