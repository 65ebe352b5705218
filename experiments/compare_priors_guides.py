"""Train a grid of prior x guide combinations on MNIST for a fixed budget and compare them.

    python experiments/compare_priors_guides.py --epochs 5

Writes ``compare_priors_guides.md`` (test ELBO, importance-sampled log p(x) with K, active units,
seconds per epoch) and ``compare_priors_guides.png`` to ``experiments/results/``.
"""

from __future__ import annotations

import argparse
import csv
import time

import pyrovae
from pyrovae.config import Config, ConfigError

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:  # imported as experiments.compare_priors_guides
    from experiments._common import budget_options, command_line, markdown_table, run_script

PRIORS = ["normal", "mixture", "vamp", "flow"]
GUIDES = ["diag", "iaf"]


def main(args: argparse.Namespace) -> list[dict]:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for prior in args.priors:
        for guide in args.guides:
            cfg = Config(prior=prior, guide=guide, z_dim=args.z_dim, hidden=[args.hidden], epochs=args.epochs,
                         train_size=args.train_size, seed=args.seed, data_dir=args.data_dir, batch_size=128,
                         eval_k=args.k, eval_n_test=args.n_test)  # fmt: skip
            out = args.runs_dir / f"compare-{prior}-{guide}"
            t0 = time.time()
            try:
                res = pyrovae.train(cfg, out, overwrite=True, progress=not args.quiet).results
            except ConfigError as e:
                print(f"skipped {prior} x {guide}: {e}")
                rows.append(dict(prior=prior, guide=guide, skipped=str(e).split(";")[0]))
                continue
            with open(out / "metrics.csv") as f:
                secs = [float(r["seconds"]) for r in csv.DictReader(f)]
            rows.append(dict(prior=prior, guide=guide, elbo=res["elbo"], ll=res["log_likelihood"],
                             au=res["active_units"], sec=sum(secs) / len(secs), total=time.time() - t0))  # fmt: skip
            print(rows[-1])
    done = [r for r in rows if "elbo" in r]
    table = markdown_table(
        ["prior", "guide", "test ELBO", f"log p(x), K={args.k}", "active units", "s / epoch"],
        [[r["prior"], r["guide"], r["elbo"], r["ll"], f"{r['au']}/{args.z_dim}", r["sec"]] for r in done],
    )
    skipped = "\n".join(
        f"- {r['prior']} x {r['guide']}: refused ({r['skipped']})" for r in rows if "skipped" in r
    )
    best = max(done, key=lambda r: r["ll"]) if done else None
    text = f"""# Priors x guides on MNIST

Command: `{command_line()}`

Budget: {args.epochs} epochs, batch 128, Adam 1e-3, {args.train_size or 50000} training images, MLP 784-{args.hidden}-{args.z_dim}
(softplus), Bernoulli likelihood on dynamically binarized MNIST (test set binarized once, seed 0).
Test ELBO on all 10,000 test images; log p(x) is the importance-sampled estimate with K={args.k}
on the first {args.n_test} test images. Nats per image; higher is better.

{table}

{skipped}
"""
    if best:
        base = next((r for r in done if r["prior"] == "normal" and r["guide"] == "diag"), None)
        gain = f", {best['ll'] - base['ll']:+.2f} nats over normal x diag" if base else ""
        text += (
            f"\nBest at this budget: {best['prior']} x {best['guide']} (log p(x) {best['ll']:.2f}{gain}).\n"
        )
    (args.results_dir / "compare_priors_guides.md").write_text(text)
    if done:
        _figure(done, args)
    return rows


def _figure(done, args):
    from pyrovae import plots

    fig, ax = plots.plt.subplots(figsize=(8, 4))
    names = [f"{r['prior']}\n{r['guide']}" for r in done]
    ax.bar([i - 0.2 for i in range(len(done))], [r["elbo"] for r in done], 0.4, label="test ELBO")
    ax.bar([i + 0.2 for i in range(len(done))], [r["ll"] for r in done], 0.4, label=f"log p(x), K={args.k}")
    ax.set_xticks(range(len(done)), names)
    lo = min(r["elbo"] for r in done)
    ax.set_ylim(lo - 3, max(r["ll"] for r in done) + 2)
    ax.set_ylabel("nats per image")
    ax.set_title(f"Priors x guides, {args.epochs} epochs")
    ax.legend()
    plots.save(fig, args.results_dir / "compare_priors_guides.png")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=5)
    # a mistyped name is a usage error before anything trains; only a known pair can be refused
    p.add_argument(
        "--priors",
        nargs="+",
        default=PRIORS,
        choices=sorted(pyrovae.PRIORS),
        metavar="PRIOR",
        help=f"priors to compare, of {', '.join(sorted(pyrovae.PRIORS))} (default: {' '.join(PRIORS)})",
    )
    p.add_argument(
        "--guides",
        nargs="+",
        default=GUIDES,
        choices=sorted(pyrovae.GUIDES),
        metavar="GUIDE",
        help=f"guides to compare, of {', '.join(sorted(pyrovae.GUIDES))} (default: {' '.join(GUIDES)})",
    )
    p.add_argument("--z-dim", type=int, default=32, help="latent dimensions (default: 32)")
    p.add_argument("--hidden", type=int, default=400, help="hidden units (default: 400)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
