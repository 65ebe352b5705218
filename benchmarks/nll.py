"""Test-set -log p(x) of Burda et al.'s models at one stated budget, beside their published figures.

Every row trains on dynamically binarized MNIST with the same data, optimizer (Adam, lr 1e-3,
constant or ``--lr-schedule cosine``; batches of ``--batch-size``, 20 as in the paper by default)
and number of epochs, Burda et al.'s networks (``--preset iwae``: tanh layers of
200, z 50; two-layer rows: ``--model hierarchical``, 200-200-z1 100-100-100-z2 50), and differs
only in the objective, the number of layers, the prior or the guide. Each is scored by the
importance-sampled -log p(x) with ``--k`` samples over the first ``--n-test`` test images (K = 5000
over all 10,000 in the papers); the published figures come from thousands of epochs.

    python benchmarks/nll.py --epochs 10 --k 5000 --n-test 10000 --out runs/nll

Rows are printed as they finish, then the table, in nats per image (lower is better), with each
row's training CPU time (the process's, all threads; on a GPU it counts the host's work only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro

from pyrovae import Config, Split, evaluate, train
from pyrovae.machine import describe
from pyrovae.runs import load_data

#: (row, options on top of the iwae preset, published -log p(x) or None)
ROWS = [
    ("VAE, 1 layer", {}, 86.76),
    ("IWAE k=5, 1 layer", {"elbo": "iwae", "num_particles": 5}, 85.54),
    ("IWAE k=50, 1 layer", {"elbo": "iwae", "num_particles": 50}, 84.78),
    ("VAE, 2 layers", {"model": "hierarchical"}, 85.33),
    ("IWAE k=5, 2 layers", {"model": "hierarchical", "elbo": "iwae", "num_particles": 5}, 83.89),
    ("IWAE k=50, 2 layers", {"model": "hierarchical", "elbo": "iwae", "num_particles": 50}, 82.90),
    ("VampPrior, 1 layer", {"prior": "vamp"}, 85.57),
    ("IAF guide, 1 layer", {"guide": "iaf"}, None),
]
SOURCES = "published: Burda et al. 2016 (VAE/IWAE rows), Tomczak & Welling 2018 (VampPrior)"


def run_dir(row: str) -> str:
    """The folder of a row's run: ``"IWAE k=5, 2 layers"`` -> ``"iwae-k5-2-layers"``."""
    return row.lower().replace("=", "").replace(",", "").replace(" ", "-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every row (default: 10)")
    p.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    p.add_argument(
        "--batch-size", type=int, default=20, help="training batch size (default: 20, as Burda et al.)"
    )
    p.add_argument(
        "--lr-schedule",
        default="none",
        choices=["none", "cosine"],
        help="learning-rate schedule (default: none)",
    )
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image (default: 5000)")
    p.add_argument("--n-test", type=int, default=10000, help="test images scored (default: 10000)")
    p.add_argument("--pseudo-inputs", type=int, default=500, help="VampPrior pseudo-inputs (default: 500)")
    p.add_argument("--only", default=None, help="run only rows whose name contains this text")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/ (default: $PYROVAE_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/nll"), help="folder of the runs (default: runs/nll)"
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> list[dict]:
    rows = [r for r in ROWS if args.only is None or args.only in r[0]]
    if not rows:
        raise SystemExit(f"error: no row's name contains {args.only!r}")
    base = dict(epochs=args.epochs, train_size=args.train_size, eval_k=args.k, eval_n_test=args.n_test,
                batch_size=args.batch_size, lr_schedule=args.lr_schedule,
                pseudo_inputs=args.pseudo_inputs, device=args.device, data_dir=args.data_dir)  # fmt: skip
    data = load_data(Config.from_preset("iwae", **base))  # the same data for every row
    test = data.test
    results = []
    for name, options, published in rows:
        cfg = Config.from_preset("iwae", **base, **options)
        t0, c0 = time.perf_counter(), time.process_time()
        run = train(cfg, args.out / run_dir(name), overwrite=True, progress=False, evaluate=False, data=data)
        train_cpu = time.process_time() - c0  # all threads': a budget in CPU-minutes, whatever the load
        pyro.set_rng_seed(0)  # the ELBO and log p(x) over the same first n_test test images
        res = evaluate(run.model, Split(test.x[: args.n_test], None), k=args.k, ll_batch_size=20)
        row = {"row": name, "nll": -res["log_likelihood"], "neg_elbo": -res["elbo"],
               "published": published, "seconds": time.perf_counter() - t0,
               "train_cpu_minutes": train_cpu / 60, "k": res["k"],
               "n_test": res["n_ll_images"], "active_units": res["active_units"], "z_dim": res["z_dim"],
               "epochs": args.epochs, "batch_size": args.batch_size, "lr_schedule": args.lr_schedule,
               "train_images": len(data.train)}  # fmt: skip
        results.append(row)
        print(f"{name}: -log p(x) {row['nll']:.2f}, -ELBO {row['neg_elbo']:.2f} nats/image", flush=True)
    k, n = results[0]["k"], results[0]["n_test"]
    print(f"\n-log p(x) (importance-sampled, K={k}, first {n} test images; MNIST dynamically binarized), "
          f"every row {args.epochs} epoch{'s' if args.epochs != 1 else ''} on {len(data.train)} images, Adam lr 1e-3 "
          f"({'cosine schedule' if args.lr_schedule == 'cosine' else 'constant'}), batches of {args.batch_size}; "
          f"{SOURCES}")  # fmt: skip
    print(f"measured on: {describe(test.x.device)}")
    print(
        "| model | -log p(x) | -ELBO | published | active units | training CPU-min | training + evaluation s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        pub = f"{r['published']:.2f}" if r["published"] is not None else "-"
        print(f"| {r['row']} | {r['nll']:.2f} | {r['neg_elbo']:.2f} | {pub} | {r['active_units']}/{r['z_dim']} "
              f"| {r['train_cpu_minutes']:.1f} | {r['seconds']:.0f} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nll.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(parse_args())
