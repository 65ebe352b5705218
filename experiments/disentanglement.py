"""The β family on dSprites: β-VAE (β = 1, 4, 16 by default, any β by name), the capacity objective
and β-TCVAE, each with 10 latents and the convolutional networks of Burgess et al. (2018), scored
by BetaVAE, FactorVAE, MIG and DCI (``pyrovae.disentanglement``), two seeds each.

    python experiments/disentanglement.py --image-size 32 --train-size 20000 --epochs 3

Writes ``disentanglement.md`` (the table, the budget and the command), ``disentanglement.png``
(MIG against reconstruction) and ``disentanglement_<model>.png`` (seed 0's labelled traversal)
to ``experiments/results/``. Every run is an ordinary run directory under ``--runs-dir``, so
``pyrovae disentanglement RUN`` rescores it with other sample sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import time

import torch

import pyrovae
from pyrovae.config import Config, ConfigError
from pyrovae.disentanglement import SETTINGS, disentangle_run

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, run_script

METRICS = ["beta_vae", "factor_vae", "mig", "dci_disentanglement"]


def model_options(name: str, args: argparse.Namespace) -> dict:
    """The options that make the model called ``name`` (everything else is shared): ``betaB`` is the
    β-VAE with β = B, ``tcvaeB`` β-TCVAE with β = B (``tcvae``: β = ``--tc-beta``), ``capacity`` the
    capacity objective with ``--capacity``, ``--gamma`` and ``--capacity-epochs``."""
    if name == "capacity":
        return dict(capacity=args.capacity, gamma=args.gamma, capacity_epochs=args.capacity_epochs)
    if name == "tcvae":
        return dict(tc_beta=args.tc_beta)
    if m := re.fullmatch(r"(beta|tcvae)(\d+(?:\.\d+)?)", name):
        return {"beta" if m[1] == "beta" else "tc_beta": float(m[2])}
    raise ValueError(
        f"unknown model {name!r}; use betaB (the β-VAE with β = B, e.g. beta8), "
        "tcvaeB (β-TCVAE with β = B), tcvae (β = --tc-beta) or capacity"
    )


def models(args: argparse.Namespace) -> dict[str, dict]:
    """Name -> the options that make the model, for every model of ``--models``."""
    return {name: model_options(name, args) for name in args.models}


def _cpu_minutes() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) / 60


def main(args: argparse.Namespace) -> list[dict]:
    scale = {"beta_vae": args.metric_scale, "factor_vae": args.metric_scale, "dci": args.metric_scale,
             "mig": args.mig_scale}  # fmt: skip
    options = models(args)
    torch.set_num_threads(args.threads)
    runs = []
    for name in args.models:
        for seed in args.seeds:
            cfg = Config(dataset="dsprites", image_size=args.image_size, net="burgess", hidden=[256], activation="relu",
                         z_dim=args.z_dim, batch_size=args.batch_size, lr=args.lr, epochs=args.epochs,
                         train_size=args.train_size, val_size=args.val_size, seed=seed, eval_k=args.k,
                         eval_n_test=args.n_test, **options[name])  # fmt: skip
            runs.append((name, seed, cfg, args.runs_dir / f"dis-{name}-seed{seed}"))
    # --reuse reads every run before writing anything, so a missing one leaves no partial results
    reused = [_reused(out, cfg, args) for _, _, cfg, out in runs] if args.reuse else None
    args.results_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, seed, cfg, out) in enumerate(runs):
        rows.append(reused[i] if reused is not None else _run(out, cfg, name, seed, scale, args))
        if not args.quiet:
            print({k: v for k, v in rows[-1].items() if k != "factors"})
        if seed == args.seeds[0]:
            (args.results_dir / f"disentanglement_{name}.png").write_bytes(
                (out / "traversal.png").read_bytes()
            )
    _write(args, rows, options, scale)
    return rows


def _run(out, cfg: Config, name: str, seed: int, scale: dict, args: argparse.Namespace) -> dict:
    """Train and score one model; its row is also saved in the run, for ``--reuse``."""
    c0, w0 = _cpu_minutes(), time.time()
    run = pyrovae.train(cfg, out, overwrite=True, progress=not args.quiet)
    c1 = _cpu_minutes()
    res = disentangle_run(run, seed=0, scale=scale, dci_trees=args.dci_trees)
    top = res["latents"][0]
    row = dict(model=name, seed=seed, **{m: res[m] for m in METRICS}, recon=-run.results["recon"],
               kl=run.results["kl"], elbo=run.results["elbo"], au=run.results["active_units"],
               train_cpu_min=c1 - c0, metric_cpu_min=_cpu_minutes() - c1,
               top=f"z{top['dim']}: {top['factor']}", wall_min=(time.time() - w0) / 60,
               settings=res["settings"])  # fmt: skip
    (out / "experiment_row.json").write_text(json.dumps(row, indent=1))
    return {**row, "factors": _factors(res["latents"])}


def _reused(out, cfg: Config, args: argparse.Namespace) -> dict:
    """The row a previous invocation saved in ``out``, if it trained exactly ``cfg``."""
    finished = (out / "experiment_row.json").exists() and (out / "config.json").exists()
    if not finished or dataclasses.asdict(Config.load(out / "config.json")) != dataclasses.asdict(cfg):
        # a ConfigError: run_script makes it one error line and status 2, as pyrovae's own
        raise ConfigError(f"--reuse: {out} holds no finished run with these options; run without --reuse")
    args.reused = True
    row = json.loads((out / "experiment_row.json").read_text())
    # derived from the run's scores, not the saved row (older rows saved a list by another rule)
    return {**row, "factors": _factors(json.loads((out / "disentanglement.json").read_text())["latents"])}


def _factors(latents: list[dict]) -> list[str]:
    """The factor each latent with KL > 0.01 nats tells most about, by decreasing KL, where it tells
    at least 5 % of that factor's entropy: a latent that spends KL without informing on any factor
    (a capacity run's that met C with a constant mean) would otherwise be named after an arbitrary
    one. The histogram estimate of that information is biased upwards by about (bins − 1)(values −
    1)/2N nats: about 0.01 of a factor's entropy with disentanglement_lib's N = 10,000 points, but
    more than 0.05 with a few hundred (``--mig-scale`` well below 1), where the floor stops telling."""
    return [r["factor"] for r in latents if r["kl"] > 0.01 and r["mi_over_entropy"] >= 0.05]


def _f3(v: float) -> str:
    return f"{v:.3f}" if round(v, 3) != 0 else "0.000"  # not "-0.000"


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _write(args, rows: list[dict], options: dict, scale: dict) -> None:
    cpu, wall = sum(r["train_cpu_min"] + r["metric_cpu_min"] for r in rows), sum(r["wall_min"] for r in rows)
    by_model = {name: [r for r in rows if r["model"] == name] for name in args.models}
    header = [
        "model",
        "options",
        "BetaVAE",
        "FactorVAE",
        "MIG",
        "DCI dis.",
        "recon: −E log p(x∣z)",
        "KL",
        "active",
    ]
    mean_rows = [[name, ", ".join(f"{k} {v:g}" for k, v in options[name].items()),
                  *[_f3(_mean(rs, m)) for m in METRICS], _mean(rs, "recon"), _mean(rs, "kl"),
                  f"{_mean(rs, 'au'):.1f}/{args.z_dim}"] for name, rs in by_model.items()]  # fmt: skip
    seed_rows = [[r["model"], r["seed"], *[_f3(r[m]) for m in METRICS], r["recon"], r["kl"], f"{r['au']}/{args.z_dim}",
                  ", ".join(r["factors"]) or "none", f"{r['train_cpu_min']:.1f} + {r['metric_cpu_min']:.1f}"]
                 for r in rows]  # fmt: skip
    sizes = {m: {k: v for k, v in o.items() if k != "batch_size"} for m, o in SETTINGS.items()}
    used = {m: {k: v for k, v in o.items() if k != "batch_size"} for m, o in rows[0]["settings"].items()}
    reused = ("; the runs were made by earlier invocations with the same options, one process per seed, and are "
              "read back here (--reuse)") if getattr(args, "reused", False) else ""  # fmt: skip
    steps = -(-(args.train_size or 737_280 - 2 * args.val_size) // args.batch_size) * args.epochs
    pixels = f", on images {(64 // args.image_size) ** 2} times larger" if args.image_size < 64 else ""
    links = ", ".join(f"[{n}](disentanglement_{n}.png)" for n in args.models)
    per_run_header = ["model", "seed", "BetaVAE", "FactorVAE", "MIG", "DCI dis.", "recon", "KL", "active",
                      "factors", "CPU min"]  # fmt: skip
    # fmt: off
    text = f"""# The β family on dSprites: disentanglement against reconstruction

Command: `{command_line()}`

Budget: {len(rows)} runs ({len(args.models)} model{"s" if len(args.models) != 1 else ""} × seeds {", ".join(map(str, args.seeds))}), each {args.epochs} epochs of
{args.train_size or "all the"} training images ({steps} steps of batch {args.batch_size}) of dSprites rendered at
{args.image_size}×{args.image_size} (pyrovae's procedural dSprites, not DeepMind's file), Adam {args.lr:g},
{args.z_dim} latents, the Burgess et al. conv networks (`--net burgess`, dense 256), diagonal Normal guide,
Bernoulli likelihood, {args.threads} torch thread(s). {cpu:.1f} CPU-minutes in all, {wall:.1f} wall-minutes summed
over the runs on a shared 2-core machine{reused}. Reconstruction and KL: test ELBO terms in nats per image over
{args.val_size} test images (the images are binary: dynamic binarization is the identity). Active: latents whose
posterior mean varies (variance > 0.01). Metrics (seed 0) with the sample sizes {used}; disentanglement_lib's are
{sizes}, with batches of 64 as here.

Means over the seeds:

{markdown_table(header, mean_rows)}

Per run (factors: the factor each latent with KL > 0.01 nats tells most about, by decreasing KL, where it tells at
least 5 % of that factor's entropy; CPU-minutes
training + metrics):

{markdown_table(per_run_header, seed_rows)}

Published figures come from about 300,000 steps of batch 64 at 64 × 64 (Locatello et al. 2019), {300_000 / steps:.0f}
times this budget's steps{pixels}; Chen et al. (2018) plot MIG against β, with β-TCVAE above β-VAE at
each β and near 0.5 at its best (the figure the issue cites). They are not tabulated here: this
machine has no network to check the papers' exact values, and the budgets differ too much for a
like-for-like comparison.

Traversals of seed {args.seeds[0]}: {links}. MIG against reconstruction: [disentanglement.png](disentanglement.png).

{_verdict(by_model, options)}
"""
    # fmt: on
    (args.results_dir / "disentanglement.md").write_text(text)
    from pyrovae import plots

    fig, ax = plots.plt.subplots(figsize=(6, 4.5))
    for i, (name, rs) in enumerate(by_model.items()):
        ax.scatter([r["recon"] for r in rs], [r["mig"] for r in rs], color=f"C{i}", label=name)
    ax.set_xlabel("reconstruction: −E_q log p(x|z), nats (lower is better)")
    ax.set_ylabel("MIG")
    ax.legend()
    ax.set_title(f"dSprites {args.image_size}px, {args.epochs} epochs × {args.train_size or 'all'} images")
    plots.save(fig, args.results_dir / "disentanglement.png")


def _verdict(by_model: dict[str, list[dict]], options: dict[str, dict]) -> str:
    """What the figures say about the expected trade-off, computed from them."""
    vae = {o["beta"]: n for n, o in options.items() if set(o) == {"beta"}}
    tc = {o["tc_beta"]: n for n, o in options.items() if set(o) == {"tc_beta"}}
    lines = []
    if len(vae) >= 2:
        betas = [vae[b] for b in sorted(vae)]
        mig = [_mean(by_model[n], "mig") for n in betas]
        rec = [_mean(by_model[n], "recon") for n in betas]
        up = all(a < b for a, b in zip(mig, mig[1:], strict=False))
        worse = all(a < b for a, b in zip(rec, rec[1:], strict=False))
        peak = "" if up else f" (highest at β = {sorted(vae)[mig.index(max(mig))]:g})"
        lines.append(f"- Larger β ({', '.join(f'{b:g}' for b in sorted(vae))}), higher MIG "
                     f"({' → '.join(f'{m:.3f}' for m in mig)}): {'yes' if up else 'no'}{peak}; "
                     f"worse reconstruction ({' → '.join(f'{r:.1f}' for r in rec)} nats): {'yes' if worse else 'no'}.")  # fmt: skip
    for b in sorted(set(tc) & set(vae)):
        t, v = _mean(by_model[tc[b]], "mig"), _mean(by_model[vae[b]], "mig")
        lines.append(f"- β-TCVAE against β-VAE at β = {b:g}: MIG {t:.3f} against {v:.3f}: "
                     f"{'higher' if t > v else 'not higher'}.")  # fmt: skip
    dead = [n for n, rs in by_model.items() if all(r["au"] == 0 for r in rs)]
    if dead:
        lines.append(f"- No active latent in {', '.join(dead)}: the posterior means do not depend on the image, so "
                     "their scores are at chance (BetaVAE about 1/5; FactorVAE 0 when every latent is pruned); any KL "
                     "left is spent narrowing q around a constant mean.")  # fmt: skip
    best = max((r for rs in by_model.values() for r in rs), key=lambda r: r["mig"])
    lines.append(f"- Best MIG: {best['mig']:.3f} ({best['model']}, seed {best['seed']}); the goal was ≥ 0.3.")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=3, k=50, n_test=500, omit=("--data-dir",))  # dSprites is made, not read
    p.add_argument("--models", nargs="+", default=["beta1", "beta4", "beta16", "capacity", "tcvae"],
                   help="models to train: betaB (β-VAE, β = B), tcvaeB (β-TCVAE, β = B), tcvae (β = --tc-beta), "
                        "capacity (default: beta1 beta4 beta16 capacity tcvae)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of each model (default: 0 1)")
    p.add_argument(
        "--image-size", type=int, default=64, help="dSprites image side (default: 64; pass 32 on a CPU)"
    )
    p.add_argument("--z-dim", type=int, default=10, help="latent dimensions (default: 10)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="batch size (default: 64, disentanglement_lib's)"
    )
    p.add_argument(
        "--lr", type=float, default=5e-4, help="Adam learning rate (default: 5e-4, Burgess et al.'s)"
    )
    p.add_argument(
        "--val-size", type=int, default=2000, help="validation and test images each (default: 2000)"
    )
    p.add_argument(
        "--tc-beta", type=float, default=4.0, help="β-TCVAE's weight of the total correlation (default: 4)"
    )
    p.add_argument(
        "--capacity", type=float, default=25.0, help="capacity C_max in nats (default: 25, Burgess et al.)"
    )
    p.add_argument(
        "--gamma", type=float, default=1000.0, help="capacity weight γ (default: 1000, Burgess et al.)"
    )
    p.add_argument("--capacity-epochs", type=float, default=None,
                   help="epochs for C to reach C_max (default: all the epochs)")  # fmt: skip
    p.add_argument("--metric-scale", type=float, default=1.0,
                   help="fraction of disentanglement_lib's sample sizes for BetaVAE, FactorVAE and DCI (default: 1)")  # fmt: skip
    p.add_argument("--mig-scale", type=float, default=1.0, help="the same for MIG (default: 1)")
    p.add_argument("--dci-trees", type=int, default=100, help="boosting stages of DCI's trees (default: 100)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; a loaded machine)")
    p.add_argument("--reuse", action="store_true",
                   help="read back the runs an earlier invocation made with the same options (one per seed, say)")  # fmt: skip
    args = p.parse_args(argv)
    if args.capacity_epochs is None:
        args.capacity_epochs = float(args.epochs)
    try:
        models(args)
    except ValueError as e:
        p.error(f"--models: {e}")
    return args


if __name__ == "__main__":
    run_script(main, parse_args)
