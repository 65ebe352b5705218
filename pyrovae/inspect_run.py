"""``pyrovae inspect RUN``: every inspection figure of a run, with an ``index.md`` explaining each."""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import torch

from . import plots
from .data import trained_classes
from .evaluate import active_units, kl_per_dim, posterior_mean_and_noise
from .loaded import Run, trained_rows
from .posterior import (
    anomaly_scores,
    embed,
    interpolate,
    posterior_predictive,
    reconstruct,
    sample_prior,
    traverse,
)
from .score import takes_labels
from .variants import variant_of


def inspect_run(run: Run, k: int = 100, n: int = 2000, seed: int = 0) -> Path:
    """Write the figures to ``run.path / "figures"`` and return the path of ``index.md``.

    :param k: importance samples per image for the anomaly scores.
    :param n: test images used for the latent map, KL bars and anomaly ranking.
    """
    pyro.set_rng_seed(seed)
    vae, test, variant = run.model, run.data.test, variant_of(run.model)
    if (trained := trained_rows(run, test.y)) is not None:
        test = test.subset(trained[0])  # a conditional model learned no other class
    test = test.subset(slice(0, n)).to(run.device)
    out = run.path / "figures"
    out.mkdir(exist_ok=True)  # once the data is read: data refused leaves no empty folder
    y = variant.inputs(
        vae, test.x, test.y
    )  # labels of a conditional model, the images a structured one completes
    # M2: labels it infers (y above), where a conditional model is given them
    inferred = bool(vae.num_classes) and not takes_labels(run)
    entries: list[tuple[str, str, str]] = []

    def add(name: str, title: str, text: str) -> None:  # name "": a section without a figure
        entries.append((name, title, text))

    # 1. samples from the model
    if vae.num_classes:
        cfg = run.config  # the classes it was trained on: it never learned the others
        classes = trained_classes(vae.num_classes, cfg.classes, cfg.exclude_classes)
        labels = torch.tensor(classes, device=run.device).repeat_interleave(8)
        plots.image_grid(
            sample_prior(vae, len(labels), labels), out / "samples.png", "Samples, one row per class", nrow=8
        )
        add(
            "samples.png",
            "Class-conditional samples",
            f"Each row decodes z ~ {'p(z)' if inferred else 'p(z|y)'} with one label y (mean of p(x|z,y)).",
        )
    elif variant.generates:
        plots.image_grid(sample_prior(vae, 64), out / "samples.png", "Samples from the model")
        add(
            "samples.png",
            "Prior samples",
            "Mean of p(x|z) for z ~ p(z): what the model has learned to generate.",
        )

    variant.figures(vae, test, out, add)  # the variant's own figures

    # 2. reconstructions and posterior predictive
    x8, y8 = test.x[:16], None if y is None else y[:16]
    rec = reconstruct(vae, x8, y8)
    plots.image_grid(torch.stack([x8, rec], 1).flatten(0, 1), out / "reconstructions.png",
                     "Test images (odd columns) and reconstructions (even)", nrow=16)  # fmt: skip
    add(
        "reconstructions.png",
        "Reconstructions",
        "Each test image next to the mean of p(x|z) at the posterior mean of z.",
    )
    pp = posterior_predictive(vae, x8[:8], y8[:8] if y8 is not None else None, num_samples=7)[
        "x"
    ]  # (7, 8, ...)
    grid = torch.cat([x8[:8, None], pp.transpose(0, 1)], 1).flatten(0, 1)
    plots.image_grid(
        grid, out / "posterior_predictive.png", "Posterior predictive: data, then 7 replicates", nrow=8
    )
    add("posterior_predictive.png", "Posterior predictive check",
        "Rows: a test image, then seven draws x_rep ~ p(x|z), z ~ q(z|x) (via pyro.infer.Predictive). "
        "Replicates far from their image show what the model cannot explain.")  # fmt: skip

    # 3. interpolation and traversal (a model that only completes given data has no prior to walk)
    kl = kl_per_dim(vae, test.x, y)
    z = embed(vae, test.x, y)  # posterior means
    if variant.generates:
        # a conditional model decodes the whole path with one label, so both ends are of that class
        # (a change of style within it); an unconditional one walks to the next image
        same = vae.num_classes and y is not None
        a = 0
        b = next((i for i in range(1, len(test.x)) if not same or y[i] == y[0]), 0)
        rows = []
        for method in ("linear", "spherical"):
            rows.append(
                interpolate(
                    vae, test.x[a], test.x[b], steps=10, method=method, y=None if y is None else y[a]
                )[1]
            )
        plots.image_grid(
            torch.cat(rows),
            out / "interpolation.png",
            "Interpolation: linear (top), spherical (bottom)",
            nrow=10,
        )
        add("interpolation.png", "Latent interpolation",
            "Decoded points on a path between the posterior means of two test images"
            + (f" {'q(y|x) puts in' if inferred else 'of'} class {y[a].item()}, decoded with that label: a "
               "change of style within the class."
               if same else "."))  # fmt: skip
        # without a KL per dimension (a VampPrior, say), the spread of the posterior means ranks them
        spread = z.var(0) if kl is None and z.shape[-1] == vae.z_dim and len(z) > 1 else None
        ranks, why = (
            (kl, "the dimensions with the largest KL first")
            if kl is not None
            else (spread, "the most active dimensions first, by the variance of their posterior means")
        )
        dims = (
            ranks.argsort(descending=True)[:8] if ranks is not None else torch.arange(min(8, vae.z_dim))
        ).tolist()
        _, trav = traverse(vae, test.x[0], dims, y=None if y is None else y[0])
        plots.image_grid(trav.flatten(0, 1), out / "traversal.png",
                         f"Traversal of dimensions {dims} from -3 to 3 (one row each)", nrow=trav.shape[1])  # fmt: skip
        add("traversal.png", "Latent traversal",
            "Each row changes one latent dimension of a test image's posterior mean from -3 to 3 "
            + (f"({why})." if ranks is not None else "(the first dimensions)."))  # fmt: skip

    # 4. latent map, KL per dimension, active units
    plots.latent_map(z, test.y, out / "latent_map.png")
    add("latent_map.png", "Latent map", "Posterior means of test images in 2-D, coloured by their label.")
    if kl is not None:
        plots.kl_bars(kl, out / "kl_per_dim.png")
        add("kl_per_dim.png", "KL per dimension",
            f"Average KL(q||p) per latent dimension over the first {len(test)} test images"
            + (", q(z|x,y) at the class q(y|x) infers, as in eval.json. " if inferred else ". ")
            + _active_units_text(run, vae, test.x, y))  # fmt: skip
    else:  # said, not silently left out: the docs list this figure
        add("", "KL per dimension",
            f"Not drawn: KL(q||p) of this run (prior `{run.config.prior_family}`, guide `{run.config.guide}`) "
            "does not split into one term per latent dimension, which needs q(z|x) and p(z) both "
            "diagonal Normals (a VampPrior is a mixture); eval.json's kl_per_dim is null for the same "
            "reason. " + _active_units_text(run, vae, test.x, y))  # fmt: skip

    # 5. training curves
    if (run.path / "metrics.csv").exists():
        plots.training_curves(run.path / "metrics.csv", out / "training.png")
        add(
            "training.png",
            "Training curves",
            "Training objective and validation ELBO, rate and distortion per epoch.",
        )

    # 6. anomalies
    # the labels evaluation gives: M2's log p(x) sums over y, as eval.json's does
    all_scores = anomaly_scores(vae, test.x, variant.test_labels(vae, test.y), k=k)
    if "neg_log_likelihood" in all_scores:
        scores, what = all_scores["neg_log_likelihood"], f"importance-sampled -log p(x) (K={k})"
    else:  # an autoencoder has no log p(x)
        scores, what = all_scores["neg_log_joint"], "-log p(x, z*) (point-estimate guide: no log p(x))"
    order = scores.argsort(descending=True)
    pick = torch.cat([order[:16], order[-16:]])
    plots.image_grid(test.x[pick], out / "anomalies.png",
                     f"Most anomalous (top 2 rows) and most typical (bottom 2 rows) of {len(scores)} test images", nrow=8)  # fmt: skip
    add("anomalies.png", "Anomalies",
        f"Test images ranked by {what}; top: highest, "
        f"{scores[order[0]]:.0f} nats; bottom: lowest, {scores[order[-1]]:.0f} nats.")  # fmt: skip

    lines = [f"# Inspection of `{run.path}`", "", f"Model: prior `{run.config.prior_family}`, guide `{run.config.guide}`, "
             f"likelihood `{run.config.likelihood}`, net `{run.config.net}`, z_dim {vae.z_dim}.", ""]  # fmt: skip
    if trained is not None:
        lines += [f"Test images: those of the classes the run was trained on, {trained[1]} (a "
                  "conditional model learned no others).", ""]  # fmt: skip
    for name, title, text in entries:
        lines += [f"## {title}", "", *([f"![{title}]({name})", ""] if name else []), text, ""]
    index = out / "index.md"
    index.write_text("\n".join(lines))
    return index


def _active_units_text(run: Run, vae, x: torch.Tensor, y: torch.Tensor | None) -> str:
    """Active units over the images shown here, counted as ``eval.json`` counts them, and
    ``eval.json``'s own figure when it was made over other images."""
    parts = [posterior_mean_and_noise(vae, x[i : i + 500], None if y is None else y[i : i + 500])
             for i in range(0, len(x), 500)]  # fmt: skip
    here = active_units(torch.cat([m for m, _ in parts]), noise=torch.cat([v for _, v in parts]))
    text = (f"{here} of {vae.z_dim} dimensions are active over these {len(x)} images (variance of the "
            "posterior mean above 0.01)")  # fmt: skip
    try:
        res = json.loads((run.path / "eval.json").read_text())
        if res.get("n_images") != len(x):
            text += f"; eval.json counts {res['active_units']} over all {res['n_images']} test images"
    except (OSError, ValueError, KeyError):
        pass
    return text + "."
