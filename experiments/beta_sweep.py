"""Train β-VAEs for several β and record rate, distortion, the β = 1 ELBO and log p(x).

    python experiments/beta_sweep.py --epochs 5

Writes ``beta_sweep.md`` and a rate–distortion plot ``beta_sweep.png`` to ``experiments/results/``.
β is applied by ``poutine.scale`` on the latent site, so training maximizes recon − β·KL; every
figure here is measured at β = 1.
"""

from __future__ import annotations

import argparse

import pyrovae
from pyrovae.config import Config

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, run_script


def main(args: argparse.Namespace) -> list[dict]:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for beta in args.betas:
        cfg = Config(beta=beta, z_dim=args.z_dim, hidden=[400], epochs=args.epochs, train_size=args.train_size,
                     seed=args.seed, data_dir=args.data_dir, batch_size=128, eval_k=args.k,
                     eval_n_test=args.n_test)  # fmt: skip
        out = args.runs_dir / f"beta-{beta:g}"
        # the run layer evaluates at beta = 1 and writes eval.json
        res = pyrovae.train(cfg, out, overwrite=True, progress=not args.quiet).results
        rows.append(dict(beta=beta, rate=res["kl"], distortion=-res["recon"], elbo=res["elbo"], ll=res["log_likelihood"],
                         au=res["active_units"]))  # fmt: skip
        print(rows[-1])
    table = markdown_table(
        [
            "β",
            "rate: KL (nats)",
            "distortion: −E log p(x|z) (nats)",
            "test ELBO (β = 1)",
            f"log p(x), K={args.k}",
            "active units",
        ],
        [
            [r["beta"], r["rate"], r["distortion"], r["elbo"], r["ll"], f"{r['au']}/{args.z_dim}"]
            for r in rows
        ],
    )
    (args.results_dir / "beta_sweep.md").write_text(f"""# β sweep on MNIST

Command: `{command_line()}`

Budget: {args.epochs} epochs per β, batch 128, Adam 1e-3, {args.train_size or 50000} training images, MLP
784-400-{args.z_dim} (softplus), Bernoulli likelihood on dynamically binarized MNIST. Rate, distortion and
ELBO on all 10,000 test images (binarized once, seed 0); log p(x) importance-sampled with K={args.k} on the
first {args.n_test}. Nats per image.

{table}
""")
    from pyrovae import plots

    fig, ax = plots.plt.subplots(figsize=(6, 4.5))
    ax.plot([r["rate"] for r in rows], [r["distortion"] for r in rows], "o-")
    for r in rows:
        ax.annotate(
            f"β={r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points", xytext=(5, 5)
        )
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats")
    ax.set_ylabel("distortion: −E_q log p(x|z), nats")
    ax.set_title(f"Rate–distortion of β-VAEs ({args.epochs} epochs)")
    plots.save(fig, args.results_dir / "beta_sweep.png")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=5)
    p.add_argument(
        "--betas", type=float, nargs="+", default=[0.5, 1, 2, 4, 8], help="β values (default: 0.5 1 2 4 8)"
    )
    p.add_argument("--z-dim", type=int, default=32, help="latent dimensions (default: 32)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
