"""Figures as PNG files: image grids via :func:`torchvision.utils.make_grid`, charts via matplotlib.

Imported only where figures are made, so the rest of the package does not load matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402


def _wrap(text: str, width_in: float, fontsize: float = 12) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points, so a title
    is never clipped by the figure's edge."""
    import textwrap

    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))  # about 0.55 em per character
    return textwrap.fill(text, chars)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 2:  # flat vectors: show a square if they make one, else a strip
        side = int(round(x.shape[1] ** 0.5))
        x = x.reshape(-1, 1, side, side) if side * side == x.shape[1] else x[:, None, None, :]
    if x.dim() == 3:
        x = x[:, None]
    return x


def image_grid(
    images: torch.Tensor, path: str | Path, title: str, nrow: int = 8, xlabel: str = "", ylabel: str = ""
) -> Path:
    """Save ``images`` (N, C, H, W) in [0, 1] as one titled grid picture."""
    grid = make_grid(_as_images(images), nrow=nrow, padding=2, pad_value=1.0)  # (C, H, W)
    h, w = grid.shape[1:]
    width = max(3.0, w / 40)
    title = _wrap(title, width)
    fig, ax = plt.subplots(figsize=(width, max(3.0, h / 40) + 0.4 + 0.25 * title.count("\n")))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if grid.shape[0] == 1 else None, vmin=0, vmax=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks([])
    ax.set_yticks([])
    return save(fig, path)


def sample_grid(vae, path: str | Path, n: int | None = None, label: int | None = None, seed: int = 0,
                classes: list[int] | None = None) -> Path:  # fmt: skip
    """``n`` images generated from the model (mean of p(x|z), z ~ p(z)): 64 by default; for a
    conditional model one row per class (``n`` rounded up to whole rows), or images of class
    ``label``.

    :param classes: the classes the model was trained on (default: all its classes); a label
        outside them is refused, since the model never learned what it looks like.
    """
    import pyro

    from .posterior import sample_prior

    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    pyro.set_rng_seed(seed)
    device = next(vae.parameters()).device
    if vae.num_classes:
        classes = list(range(vae.num_classes)) if classes is None else classes
        if label is None:
            # one row per class, about 64 images by default, else n rounded up to whole rows: cutting
            # the last rows short left out the last classes under a title that promised them all
            per = max(1, 64 // len(classes)) if n is None else -(-n // len(classes))
            y = torch.tensor(classes, device=device).repeat_interleave(per)
            title, nrow = f"Samples, one row of {per} per class ({_ranges(classes)})", per
        else:
            if label not in classes:
                raise ValueError(
                    f"label {label} is not a class this model was trained on ({_ranges(classes)})"
                )
            y, title, nrow = torch.full((n or 64,), label, device=device), f"Samples of class {label}", 8
        return image_grid(sample_prior(vae, len(y), y), path, title, nrow=nrow)
    if label is not None:
        raise ValueError(
            "a label needs a conditional model (trained with --conditional; model='conditional' in Python)"
        )
    return image_grid(sample_prior(vae, n or 64), path, "Samples from the model (mean of p(x|z), z ~ p(z))")


def _ranges(classes: list[int]) -> str:
    return ", ".join(map(str, classes))


def reconstruction_grid(vae, x: torch.Tensor, y: torch.Tensor | None, path: str | Path) -> Path:
    """Data next to their reconstructions (mean of p(x|z) at the posterior mean)."""
    from .posterior import reconstruct
    from .variants import variant_of

    device = next(vae.parameters()).device
    x = x.to(device)
    y = variant_of(vae).inputs(vae, x, None if y is None else y.to(device))  # labels, or what it completes
    pairs = torch.stack([x, reconstruct(vae, x, y)], 1).flatten(0, 1)  # alternate data, reconstruction
    return image_grid(pairs, path, "Data (odd columns) and reconstructions (even)", nrow=16)


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names (PNG, JPEG, PDF, SVG) and close it."""
    from .outputs import image_format

    path = Path(path)
    try:
        fmt = image_format(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120))
    finally:
        plt.close(fig)
    return path


def training_curves(metrics_csv: str | Path, path: str | Path) -> Path:
    """Training loss and validation ELBO (with its terms) per epoch, from ``metrics.csv``; and the
    accuracies of q(y|x) where the run is semi-supervised."""
    import csv

    rows = list(csv.DictReader(open(metrics_csv)))
    ep = [int(r["epoch"]) for r in rows]
    accuracy = "val_accuracy" in rows[0]  # a semi-supervised run: a third panel for q(y|x)
    fig, (a, b, *c) = plt.subplots(1, 3 if accuracy else 2, figsize=(15 if accuracy else 10, 4))
    a.plot(ep, [-float(r["train_loss"]) for r in rows], "o-", label="training objective (-loss)")
    a.plot(ep, [float(r["val_elbo"]) for r in rows], "s-", label="validation ELBO (beta = 1)")
    a.set_xlabel("epoch")
    a.set_ylabel("nats per datum")
    a.set_title("Objective")
    a.legend()
    b.plot(ep, [-float(r["val_recon"]) for r in rows], "o-", label="distortion: -E[log p(x|z)]")
    b.plot(ep, [float(r["val_kl"]) for r in rows], "s-", label="rate: KL(q(z|x) || p(z))")
    b.set_xlabel("epoch")
    b.set_ylabel("nats per datum")
    b.set_title("Validation rate and distortion")
    b.legend()
    if accuracy:
        for key, mark in (("val_accuracy", "o-"), ("test_accuracy", "s-")):
            c[0].plot(ep, [100 * float(r[key]) for r in rows], mark, label=key.replace("_", " "))
        c[0].set_xlabel("epoch")
        c[0].set_ylabel("accuracy of argmax q(y|x), %")
        c[0].set_title("Classification")
        c[0].legend()
    return save(fig, path)


def latent_map(z: torch.Tensor, labels: torch.Tensor | None, path: str | Path, method: str = "auto") -> Path:
    """Posterior means in 2-D, coloured by label: the means themselves for a 2-D latent space,
    else t-SNE (when scikit-learn is installed and ``method`` allows it) or PCA."""
    z = z.detach().double().cpu()
    how = "latent dimensions 0 and 1"  # numbered from 0, as the traversal's title and z[:, d] index them
    axes = ("latent dimension 0", "latent dimension 1")
    if z.shape[1] > 2:
        if method in ("auto", "tsne"):
            try:
                from sklearn.manifold import TSNE

                # perplexity must stay below the number of points (a few dozen in quick runs)
                tsne = TSNE(init="pca", random_state=0, perplexity=min(30.0, (len(z) - 1) / 3))
                z2, how = torch.as_tensor(tsne.fit_transform(z.numpy())), "t-SNE"
                axes = ("t-SNE 1", "t-SNE 2")
            except ImportError:
                if method == "tsne":
                    raise
                method = "pca"
        if method == "pca":
            zc = z - z.mean(0)
            _, s, v = torch.linalg.svd(zc, full_matrices=False)
            z2 = zc @ v[:2].T
            var = (s[:2] ** 2 / (s**2).sum()).tolist()
            how = f"PCA (components explain {var[0]:.0%} and {var[1]:.0%} of the variance)"
            axes = ("component 1", "component 2")
    else:
        z2 = z
    fig, ax = plt.subplots(figsize=(7, 6))
    if labels is not None:  # one colour per class, named in a legend
        labels = labels.cpu()
        classes = labels.unique().tolist()
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo")
        for i, c in enumerate(classes):
            at = labels == c
            colour = cmap(i) if len(classes) <= 20 else cmap(i / max(1, len(classes) - 1))
            ax.scatter(z2[at, 0], z2[at, 1], color=colour, s=6, alpha=0.8, label=str(c))
        ax.legend(title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=3, frameon=False,
                  ncol=1 if len(classes) <= 25 else 2)  # fmt: skip
    else:
        ax.scatter(z2[:, 0], z2[:, 1], s=6, alpha=0.8)
    ax.set_title(_wrap(f"Posterior means E[z|x] of {len(z)} test images, {how}", 6.0))
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    return save(fig, path)


def kl_bars(kl: list[float] | torch.Tensor, path: str | Path, threshold: float = 0.01) -> Path:
    """KL(q || p) per latent dimension, averaged over data, sorted from largest."""
    kl = torch.as_tensor(kl).cpu()
    order = kl.argsort(descending=True)
    fig, ax = plt.subplots(figsize=(max(6, len(kl) * 0.18), 4))
    ax.bar(range(len(kl)), kl[order], color=["C0" if v > threshold else "C7" for v in kl[order]])
    ax.set_xticks(range(len(kl)), [str(int(i)) for i in order], fontsize=6, rotation=90)
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("KL per image (nats)")
    ax.set_title(f"KL per latent dimension: total {kl.sum():.1f} nats")
    return save(fig, path)


def labelled_rows(images: torch.Tensor, labels: list[str], path: str | Path, title: str) -> Path:
    """Rows of images ``(rows, cols, C, H, W)`` in [0, 1], each row named by its label at its left."""
    rows, cols = images.shape[:2]
    grid = make_grid(_as_images(images.flatten(0, 1)), nrow=cols, padding=2, pad_value=1.0)  # (C, H, W)
    h, w = grid.shape[1:]
    fig, ax = plt.subplots(figsize=(max(3.0, w / 40) + 2.5, max(3.0, h / 40) + 0.5))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray" if grid.shape[0] == 1 else None, vmin=0, vmax=1)
    step = (h - 2) / rows
    ax.set_yticks([2 + step * (i + 0.5) for i in range(rows)], labels, fontsize=8)
    ax.set_xticks([])
    ax.set_title(_wrap(title, max(3.0, w / 40) + 2.5), fontsize=10)
    return save(fig, path)
