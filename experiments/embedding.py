"""Posterior means E[z|x] as a low-dimensional code, against PCA codes of the same dimension.

    python experiments/embedding.py --epochs 5

For each latent dimension in ``--z-dims`` (default 2, 10, 50) a VAE with the tutorial network
(784-400-z, softplus, Bernoulli likelihood on dynamically binarized MNIST) is trained through the
run layer, and every MNIST image is encoded: the probes (k-nearest-neighbours with k = 5 and a
logistic regression on standardized codes) are fitted on the codes of ``--n-probe`` training
images and scored on the codes of the test set. PCA of the same dimension, fitted on the same
training images, is the baseline. Training images are binarized once (seed 0) like the test set,
so codes of both come from the same kind of image.

Writes ``embedding.md`` and ``embedding.png`` (2-D maps: the code itself for z = 2, t-SNE of
``--n-map`` test codes otherwise, one colour per digit) to ``experiments/results/``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import pyrovae
from pyrovae.config import Config
from pyrovae.data import binarize
from pyrovae.posterior import embed

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, run_script


def probe_accuracies(train_codes: np.ndarray, y_train: np.ndarray, test_codes: np.ndarray,
                     y_test: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Test accuracy of a 5-nearest-neighbour classifier and of a logistic regression, both fitted
    on the training codes."""
    knn = KNeighborsClassifier(n_neighbors=5).fit(train_codes, y_train)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(train_codes, y_train)
    return {"knn": knn.score(test_codes, y_test), "logreg": logreg.score(test_codes, y_test)}


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    rows, maps = [], []
    for z_dim in args.z_dims:
        cfg = Config.from_preset("tutorial", z_dim=z_dim, epochs=args.epochs, train_size=args.train_size,
                                 seed=args.seed, data_dir=args.data_dir)  # fmt: skip
        start = time.process_time()
        run = pyrovae.train(cfg, args.runs_dir / f"embedding-z{z_dim}", overwrite=True, evaluate=False,
                            progress=not args.quiet)  # fmt: skip
        train_s = time.process_time() - start
        data = run.data  # on the run's device; the probes and PCA work on the CPU
        n = min(args.n_probe, len(data.train))
        g = torch.Generator().manual_seed(0)
        x_train, y_train = binarize(data.train.x[:n].cpu(), g), data.train.y[:n].cpu().numpy()
        x_test, y_test = data.test.x.cpu(), data.test.y.cpu().numpy()
        codes = {"VAE": (embed(run.model, x_train).numpy(), embed(run.model, x_test).numpy())}
        pca = PCA(n_components=z_dim, random_state=0).fit(x_train.flatten(1).numpy())
        codes["PCA"] = (pca.transform(x_train.flatten(1).numpy()), pca.transform(x_test.flatten(1).numpy()))
        for method, (tr, te) in codes.items():
            acc = probe_accuracies(tr, y_train, te, y_test)
            rows.append(
                dict(z_dim=z_dim, method=method, **acc, train_cpu_s=train_s if method == "VAE" else None)
            )
            print(rows[-1])
            maps.append((z_dim, method, te[: args.n_map], y_test[: args.n_map]))
    _write(args, rows, maps, n)
    return rows


def _two_d(codes: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    if codes.shape[1] == 2:
        return codes, "the code itself"
    perplexity = min(30.0, (len(codes) - 1) / 3)  # below the number of points in smoke runs
    return TSNE(init="pca", random_state=seed, perplexity=perplexity).fit_transform(codes), "t-SNE"


def _write(args: argparse.Namespace, rows: list[dict], maps: list, n_probe: int) -> None:
    from pyrovae import plots

    table = markdown_table(
        ["z", "code", "kNN (k=5) test accuracy", "logistic regression test accuracy"],
        [[r["z_dim"], r["method"], f"{r['knn']:.3f}", f"{r['logreg']:.3f}"] for r in rows],
    )
    train_s = sum(r["train_cpu_s"] for r in rows if r["train_cpu_s"] is not None)
    (
        args.results_dir / "embedding.md"
    ).write_text(f"""# Posterior means as codes: kNN and logistic-regression probes vs PCA

Command: `{command_line()}`

Budget: {args.epochs} epochs per latent size with the tutorial network (784-400-z, softplus, Adam
1e-3, batch 256) on {args.train_size or 50000} training images, Bernoulli likelihood on dynamically
binarized MNIST; {train_s / 60:.1f} CPU-minutes of training in all, on {args.threads} thread(s) of a
2-core machine shared with other
jobs (1-minute load average {os.getloadavg()[0]:.1f} when it ended). Probes fitted on the codes of the first {n_probe}
training images (binarized once, seed 0) and scored on all 10,000 test images (binarized once, seed 0).
VAE codes are posterior means E[z|x]; PCA (same dimension) is fitted on the same training images.

{table}

Maps (`embedding.png`): the first {args.n_map} test images, the code itself for z = 2, t-SNE otherwise.
""")
    cols = len(args.z_dims)
    fig, axes = plots.plt.subplots(2, cols, figsize=(4.2 * cols, 8.4), squeeze=False)
    cmap = plots.plt.get_cmap("tab10")
    for z_dim, method, codes, labels in maps:
        ax = axes[0 if method == "VAE" else 1][args.z_dims.index(z_dim)]
        xy, how = _two_d(codes, args.seed)
        for c in range(10):
            at = labels == c
            ax.scatter(xy[at, 0], xy[at, 1], s=3, color=cmap(c), label=str(c))
        ax.set_title(f"{method} codes, z = {z_dim} ({how})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(
        title="digit", loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=4, frameon=False
    )
    plots.save(fig, args.results_dir / "embedding.png")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=5, omit=("--k", "--n-test"))  # codes only: no log p(x)
    p.add_argument(
        "--z-dims", type=int, nargs="+", default=[2, 10, 50], help="latent sizes (default: 2 10 50)"
    )
    p.add_argument("--n-probe", type=int, default=10000,
                   help="training images whose codes fit the probes (default: 10000)")  # fmt: skip
    p.add_argument("--n-map", type=int, default=2000, help="test images in the 2-D maps (default: 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
