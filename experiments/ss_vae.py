"""Semi-supervised VAE (Kingma et al. 2014, M2) on MNIST: test accuracy of q(y|x) against the
number of labelled training images, beside the paper's and Pyro's tutorial's figures.

    OMP_NUM_THREADS=1 python experiments/ss_vae.py --labels 100 600 1000 3000 --epochs-each 8 4 4 4

Writes ``ss_vae.md``, the accuracy-against-epoch curves ``ss_vae.png`` and the style/content
figure of the first run (``ss_vae_style.png``) to ``experiments/results/`` (``ss_vae_alpha46.md``
and so on with ``--aux-weight 46``). Each run is a
``pyrovae train --semi-supervised --labeled N`` run directory; a run with the same options (up to
--epochs) is resumed, one with other options is replaced.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time

import torch

import pyrovae
from pyrovae.config import Config

try:
    from _common import budget_options, command_line, markdown_table, resumable, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, resumable, run_script

#: test accuracy (%) of the anchors: Kingma et al. (2014), Table 1 (M2); Pyro's SS-VAE tutorial
ANCHORS = {100: (88.03, 93.19), 1000: (96.40, None), 3000: (None, 95.82)}


def _run(args: argparse.Namespace, n: int, epochs: int) -> dict:
    cfg = Config(semi_supervised=True, labeled=n, z_dim=50, hidden=[500], batch_size=200, lr=args.lr,
                 epochs=epochs, monitor="accuracy", train_size=args.train_size, seed=args.seed,
                 data_dir=args.data_dir, eval_k=args.k, eval_n_test=args.n_test, aux_weight=args.aux_weight,
                 label_layers=args.label_layers, labeled_batches=args.labeled_batches)  # fmt: skip
    out = args.runs_dir / f"ss_vae-{n}{_suffix(args).replace('_', '-')}-seed{args.seed}"
    resume = resumable(out, cfg)  # the same run, unfinished or to more epochs; other options train afresh
    cpu = time.process_time()
    run = pyrovae.train(cfg, out, resume=resume, overwrite=not resume, progress=not args.quiet)
    # CPU time of every sitting of the run (a resumed run adds to it)
    spent = out / "cpu_seconds.txt"
    cpu = time.process_time() - cpu + (float(spent.read_text()) if resume and spent.exists() else 0.0)
    spent.write_text(f"{cpu:.1f}\n")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    res = run.results
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    return dict(labels=n, epochs=len(rows), rows=rows, test=100 * res["test_accuracy"],
                best_epoch=int(best["epoch"]), val=100 * float(best["val_accuracy"]),
                last=100 * float(rows[-1]["test_accuracy"]), elbo=res["elbo"], ll=res["log_likelihood"],
                train_s=sum(float(r["seconds"]) for r in rows), cpu_s=cpu,
                run=run, out=out)  # fmt: skip


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    each = args.epochs_each or [args.epochs] * len(args.labels)
    if len(each) != len(args.labels):
        raise SystemExit("--epochs-each needs one epoch count per --labels value")
    results = []
    for n, epochs in zip(args.labels, each, strict=True):
        results.append(_run(args, n, epochs))
        r = results[-1]
        print(f"{n} labels: test accuracy {r['test']:.2f} % after {r['epochs']} epochs (best validation "
              f"epoch {r['best_epoch']}), {r['cpu_s'] / 60:.1f} CPU-minutes")  # fmt: skip
    _figures(args, results)
    _report(args, results)
    return [{k: v for k, v in r.items() if k not in ("rows", "run", "out")} for r in results]


def _figures(args: argparse.Namespace, results: list[dict]) -> None:
    from pyrovae import plots
    from pyrovae.semisupervised import style_and_content

    fig, ax = plots.plt.subplots(figsize=(7, 4.5))
    for r, color in zip(results, plots.plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        ep = [int(x["epoch"]) for x in r["rows"]]
        ax.plot(ep, [100 * float(x["test_accuracy"]) for x in r["rows"]], "o-", color=color,
                label=f"{r['labels']} labels")  # fmt: skip
        for value, style in zip(ANCHORS.get(r["labels"], (None, None)), (":", "--"), strict=True):
            if value is not None:
                ax.axhline(value, color=color, ls=style, lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy of q(y|x), %")
    ax.set_title("SS-VAE (M2) on MNIST; dotted: Kingma et al. M2, dashed: Pyro tutorial")
    ax.legend()
    plots.save(fig, args.results_dir / f"ss_vae{_suffix(args)}.png")
    first = results[0]
    run, test = first["run"], first["run"].data.test
    x = test.x[:8].to(run.device)
    grid = torch.cat([x[:, None], style_and_content(run.model, x)], 1)  # (8, 1 + K, ...)
    plots.image_grid(grid.flatten(0, 1), args.results_dir / f"ss_vae{_suffix(args)}_style.png",
                     f"{first['labels']} labels: a test image, then its style z with each class y = 0..9",
                     nrow=grid.shape[1])  # fmt: skip


def _report(args: argparse.Namespace, results: list[dict]) -> None:
    def anchor(n, i):
        v = ANCHORS.get(n, (None, None))[i]
        return "—" if v is None else f"{v:.2f}"

    table = markdown_table(
        ["labels", "epochs", "test accuracy % (best val. epoch)", "last epoch", "val. accuracy %",
         "Kingma M2", "Pyro tutorial", "test ELBO", f"log p(x), K={args.k}", "train s", "CPU-min"],
        [[r["labels"], r["epochs"], f"{r['test']:.2f} (epoch {r['best_epoch']})", f"{r['last']:.2f}",
          f"{r['val']:.2f}", anchor(r["labels"], 0), anchor(r["labels"], 1), r["elbo"], r["ll"],
          round(r["train_s"]), f"{r['cpu_s'] / 60:.1f}"] for r in results],
    )  # fmt: skip
    cfg = json.loads((results[0]["out"] / "config.json").read_text())
    (args.results_dir / f"ss_vae{_suffix(args)}.md").write_text(f"""# Semi-supervised VAE (M2) on MNIST

Command: `{command_line()}`

Hardware and load: {platform.processor() or platform.machine()}, {args.threads} torch thread(s), on a
2-core machine shared with other jobs (the wall-clock seconds are not those of an idle machine). Seed
{args.seed}, one run per label count (the wall-clock budget on a shared machine did not allow three).

Protocol: {cfg["train_size"] or 50000} training images (10,000 held out for validation, split_seed 0),
`labeled` of them keep their label (balanced by class), the rest are unlabelled; dynamically binarized,
Bernoulli likelihood; MLPs 784-500-50 (softplus) for q(z|x,y), p(x|y,z) and q(y|x), the label entering
{_label_text(args)}; {_batches_text(args)}; Adam lr {cfg["lr"]}; classification weight
alpha {_alpha_text(args)};
TraceEnum_ELBO summing over y exactly. Test accuracy of argmax q(y|x) on all 10,000 test images
(binarized once, seed 0) at the epoch of best validation accuracy (best.pt); ELBO and importance-sampled
log p(x) (K={args.k}, first {args.n_test} test images) are the unlabelled ones, marginal over y, nats per
image.

{table}

Differences from the anchors' protocols: far fewer epochs (Pyro's script defaults to 50, Kingma et al.
train to convergence and report mean ± std over several runs; one seed here); Adam lr {cfg["lr"]}
(Pyro: 4.2e-4); {_batches_difference(args)}; dynamically binarized images with a normalized
Bernoulli likelihood (Pyro: Bernoulli on grey values); softplus scale of q(z|x,y) (Pyro: exp), logits
for q(y|x) (Pyro: clipped softmax), decoder bias initialised at the mean image.

![accuracy against epochs](ss_vae{_suffix(args)}.png)

![style and content](ss_vae{_suffix(args)}_style.png)
""")


def _suffix(args: argparse.Namespace) -> str:
    """Results of a run with a given alpha, label layers or labelled batches go to their own files
    (ss_vae_alpha46.md, ss_vae_alpha46_every.md, ss_vae_alpha46_separate.md, ...)."""
    alpha = "" if args.aux_weight is None else f"_alpha{args.aux_weight:g}"
    layers = "" if args.label_layers == "input" else f"_{args.label_layers}"
    return alpha + layers + ("" if args.labeled_batches == "mixed" else f"_{args.labeled_batches}")


def _label_text(args: argparse.Namespace) -> str:
    if args.label_layers == "input":
        return "at the first layer's input (`--label-layers input`, as Pyro's example does)"
    return ("every layer (`--label-layers every`: a weight matrix per class in the decoder's first layer, "
            "FiLM on the others)")  # fmt: skip


def _batches_text(args: argparse.Namespace) -> str:
    if args.labeled_batches == "mixed":
        return (
            "batch 200 unlabelled images plus an even share of the labelled ones (`--labeled-batches mixed`)"
        )
    return ("whole batches of 200 unlabelled or up to 200 labelled images, the labelled batches spread evenly "
            "among the unlabelled ones (`--labeled-batches separate`, Pyro's schedule)")  # fmt: skip


def _batches_difference(args: argparse.Namespace) -> str:
    if args.labeled_batches == "mixed":
        return ("every batch mixes unlabelled images with an even share of the labelled ones (Pyro alternates "
                "whole labelled and unlabelled batches)")  # fmt: skip
    return ("a labelled batch takes one step on its ELBO plus the classification loss (Pyro takes two steps, "
            "one on each, and a second Adam step on every unlabelled batch, on a zero gradient)")  # fmt: skip


def _alpha_text(args: argparse.Namespace) -> str:
    if args.aux_weight is None:
        return (
            "= 0.1·N/labeled per labelled image (Kingma et al.'s α = 0.1·N on the mean over labelled images)"
        )
    return f"= {args.aux_weight:g} per labelled image (`--aux-weight`; Pyro's example uses 46)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=4, k=100, n_test=1000)
    p.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000],
                   help="numbers of labelled training images (default: 100 600 1000 3000)")  # fmt: skip
    p.add_argument("--epochs-each", type=int, nargs="+", default=None,
                   help="epochs for each --labels value (default: --epochs for all)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--label-layers", choices=["input", "every"], default="input",
                   help="where the label enters encoder and decoder (default: input, as Pyro's example and "
                        "pyrovae's default for a semi-supervised VAE)")  # fmt: skip
    p.add_argument("--labeled-batches", choices=["mixed", "separate"], default="mixed",
                   help="mixed: each batch 200 unlabelled images + a share of the labelled ones; separate: whole "
                        "labelled batches among the unlabelled ones, as Pyro's example (default: mixed)")  # fmt: skip
    p.add_argument("--aux-weight", type=float, default=None,
                   help="alpha per labelled image (default: 0.1*N/labels, Kingma et al.; Pyro's example uses 46)")  # fmt: skip
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
