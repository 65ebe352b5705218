"""Scoring and embedding whole data sets with a trained run, in batches: the functions behind
``pyrovae score`` and ``pyrovae embed``.

Rows are read a batch at a time (a ``.npy`` file through a memory map) and results are written
as they are computed, so memory stays bounded however many rows there are; row ``i`` of the
output is datum ``i`` of the input. The estimators are those of :mod:`pyrovae.evaluate` and
:mod:`pyrovae.posterior`: this module only streams data through them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from torch import Tensor

from .checkpoint import atomic_file
from .config import ConfigError
from .data import DataError, binarize, check_values, class_indices, is_binary, read_rows, trained_classes
from .evaluate import cached_prior, is_point_estimate
from .loaded import EVAL_BINARIZE_SEED, Run, check_shape, trained_rows
from .posterior import anomaly_scores, embed, posterior_samples, reconstruct
from .variants import variant_of

SPLITS = ("train", "val", "test")


@dataclass
class Rows:
    """Data to score or embed: ``x`` indexable by row (a tensor, or a memory-mapped array whose
    rows are converted batch by batch), labels ``y`` or ``None``, what it is, and, for rows taken
    out of a larger set, their positions there (``origin``), which the output's ``index`` gives."""

    x: Tensor | np.ndarray
    y: Tensor | None
    name: str
    origin: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def index(self, start: int, stop: int) -> list[int]:
        """The ``index`` column of rows ``start:stop``."""
        return list(range(start, stop)) if self.origin is None else self.origin[start:stop].tolist()


def open_rows(run: Run, data_file: str | Path | None = None, labels_file: str | Path | None = None,
              split: str | None = None) -> Rows:  # fmt: skip
    """The rows of a file (``.npy`` read through a memory map; ``.pt`` loaded whole) or of one of
    the run's splits (``"train"``, ``"val"``, ``"test"``; validation and test binarized as in
    training; of a conditional run trained on some classes, their images only, as evaluation
    takes them: see :func:`~pyrovae.loaded.trained_rows`). Exactly one of ``data_file`` and
    ``split`` must be given."""
    if (data_file is None) == (split is None):
        raise ConfigError("give either a data file (data_file) or one of the run's splits (split: test, say)",
                          "data_file")  # fmt: skip
    if split is not None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}", "split")
        part, name = getattr(run.data, split), f"the run's {split} split"
        trained = trained_rows(run, part.y)
        if trained is not None and len(trained[0]) < len(part):
            seen, classes = trained
            name += (f" (its {len(seen)} images of the classes the run was trained on, {classes}, of "
                     f"{len(part)}: a conditional model learned no others)")  # fmt: skip
            return Rows(part.x[seen], part.y[seen], name, seen.cpu())
        return Rows(part.x, part.y, name)
    path = Path(data_file)
    x, y = read_rows(path, labels_file, mmap=True)  # .npy rows stay on disk until scored
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{path} holds an array of shape {tuple(x.shape)}; expected (N, ...) rows, N >= 1")
    if y is not None:
        y = class_indices(y, labels_file or path)
        if y.shape[0] != x.shape[0]:
            raise DataError(
                f"{x.shape[0]} rows but {y.shape[0]} labels; give one label per row", "labels_file"
            )
    return Rows(x, y, str(path))


def batches(run: Run, rows: Rows, batch_size: int) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """``(start, x, y)`` for consecutive batches of ``rows``, converted as training converted its
    data: uint8 divided by 255, ``(N, H, W)`` read as ``(N, 1, H, W)``, values checked, and
    grey values binarized (once, seeded) when the run's likelihood trained on binarized data."""
    vae = run.model
    ref = vae._reference()
    needs_binary = run.config.resolve_binarize()
    g = torch.Generator().manual_seed(EVAL_BINARIZE_SEED)
    if takes_labels(run) and rows.y is None:
        raise ConfigError(
            f"the run is conditional on labels but {rows.name} has none; give labels_file", "labels_file"
        )
    if takes_labels(run):
        check_labels(run, rows.y, rows.name)
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        x = rows.x[start:stop]
        x = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x  # a copy off the memory map
        if not x.is_floating_point():
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.dim() == len(vae.x_shape):  # (N, H, W) grey images for a (1, H, W) model
            x = x.unsqueeze(1)
        check_shape(rows.name, x.shape[1:], vae.x_shape, "score data shaped like the training data")
        check_values(x, f"{rows.name} (rows {start}-{stop - 1})")
        if needs_binary and not is_binary(x):
            x = binarize(x, g)
        y = None if rows.y is None else rows.y[start:stop].to(ref.device)
        yield start, x.to(ref.device, ref.dtype), y


def takes_labels(run: Run) -> bool:
    """Whether the run's model is given labels with its data, as evaluation gives them
    (:meth:`~pyrovae.variants.Variant.test_labels`): a conditional model is; M2, which infers
    its label, and an unconditional model are not (their data's labels are only reported)."""
    vae = run.model
    return variant_of(vae).test_labels(vae, torch.zeros(1, dtype=torch.long)) is not None


def check_labels(run: Run, y: Tensor, name: str) -> None:
    """Refuse labels ``y`` of the data ``name`` that are not of a class the conditional ``run``
    was trained on, before the model meets them: it has no weights for a label past its classes,
    and untrained ones for a class it never saw (``classes``, ``exclude_classes``)."""
    cfg = run.config
    classes = trained_classes(run.model.num_classes, cfg.classes, cfg.exclude_classes)
    bad = (~torch.isin(y, torch.tensor(classes, device=y.device))).nonzero().squeeze(1)
    if len(bad):
        i, more = int(bad[0]), f" (and {len(bad) - 1} other rows)" if len(bad) > 1 else ""
        raise DataError(
            f"label {int(y[i])} is not a class this model was trained on ({', '.join(map(str, classes))}): "
            f"it labels row {i} of {name}{more}; give only labels of those classes (labels_file), or drop "
            "those rows",
            "labels_file",
        )


def score_names(run: Run) -> list[str]:
    """The score columns this run can give: a point-estimate guide (an autoencoder) has no ELBO
    or importance-sampled log p(x), and reports ``-log p(x|z*)`` and ``-log p(x, z*)``."""
    first = (
        ["neg_recon", "neg_log_joint"] if is_point_estimate(run.model) else ["neg_elbo", "neg_log_likelihood"]
    )
    return [*first, "recon_error"]


def default_threshold_score(run: Run) -> str:
    """The score a threshold applies to unless told otherwise: the importance-sampled -log p(x),
    or -log p(x|z*) for an autoencoder."""
    return "neg_recon" if is_point_estimate(run.model) else "neg_log_likelihood"


@torch.no_grad()
def score_batch(run: Run, x: Tensor, y: Tensor | None, k: int) -> dict[str, Tensor]:
    """Per-datum scores (higher is more anomalous), shape ``(batch,)`` each: those of
    :func:`~pyrovae.posterior.anomaly_scores` and ``recon_error``, the squared distance between
    the datum and the mean of p(x|z) at the posterior mean of z. The model is given the labels
    evaluation gives it (:meth:`~pyrovae.variants.Variant.test_labels`): a conditional model's,
    none for M2, whose scores sum over y as ``eval.json``'s do; M2 reconstructs with the class
    q(y|x) infers (:meth:`~pyrovae.variants.Variant.inputs`)."""
    vae, variant = run.model, variant_of(run.model)
    out = anomaly_scores(vae, x, variant.test_labels(vae, y), k=k, batch_size=len(x))
    rec = reconstruct(vae, x, variant.inputs(vae, x, y))
    out["recon_error"] = (rec - x).pow(2).flatten(1).sum(1)
    return out


def score(run: Run, rows: Rows, output: str | Path | None = None, k: int = 100, batch_size: int = 100,
          seed: int = 0, threshold: tuple[str, float] | None = None, progress: bool = True,
          keep: bool = False) -> dict:  # fmt: skip
    """Score every row, writing ``output`` (CSV) as it goes: ``index``, ``label`` (if known), the
    columns of :func:`score_names` in nats (``recon_error`` in squared pixel units) and, with a
    ``threshold`` ``(column, value)``, a boolean ``anomalous`` (score above the value).

    The ELBO and log p(x) are Monte Carlo estimates: seeded by ``seed``, they repeat exactly for
    the same ``batch_size``.

    :param keep: also return every score, as ``scores`` (a dict of ``(N,)`` tensors by column).
    :returns: ``n``, the mean of each score, ``flagged`` (the fraction flagged) with a threshold,
        and ``scores`` with ``keep``.
    """
    if k < 1 or batch_size < 1:
        raise ConfigError(f"k and batch_size must be positive, got {k} and {batch_size}", "k")
    names = score_names(run)
    if threshold is not None and threshold[0] not in names:
        raise ConfigError(
            f"this run has no score {threshold[0]!r}; choose from {', '.join(names)}", "threshold_score"
        )
    header = [
        "index",
        *(["label"] if rows.y is not None else []),
        *names,
        *(["anomalous"] if threshold else []),
    ]
    sums, flagged, kept = dict.fromkeys(names, 0.0), 0, []
    pyro.set_rng_seed(seed)
    bar = _bar(progress, len(rows), "scoring" if is_point_estimate(run.model) else f"scoring, K={k}")
    with _writer(output) as write, cached_prior(run.model):
        write(header)
        for start, x, y in batches(run, rows, batch_size):
            s = score_batch(run, x, y, k)
            for name in names:
                sums[name] += s[name].sum().item()
            columns = [rows.index(start, start + len(x)), *([y.tolist()] if y is not None else [])]
            columns += [s[name].tolist() for name in names]
            if threshold is not None:
                above = s[threshold[0]] > threshold[1]
                flagged += int(above.sum())
                columns.append(above.tolist())
            if keep:
                kept.append({name: s[name].cpu() for name in names})
            for row in zip(*columns, strict=True):
                write([f"{v:.9g}" if isinstance(v, float) else v for v in row])
            bar.update(len(x))
            bar.set_postfix({names[0]: f"{sums[names[0]] / (start + len(x)):.2f}"})
    bar.close()
    res = {"n": len(rows), **{f"mean_{n}": v / max(1, len(rows)) for n, v in sums.items()}}
    if threshold is not None:
        res["flagged"] = flagged / max(1, len(rows))
    if keep:
        res["scores"] = {name: torch.cat([part[name] for part in kept]) for name in names} if kept else {}
    return res


def threshold_from(run: Run, rows: Rows, column: str, fpr: float = 0.05, k: int = 100, batch_size: int = 100,
                   seed: int = 0, progress: bool = True) -> float:  # fmt: skip
    """The ``1 - fpr`` quantile of score ``column`` over ``rows`` (data taken to be normal, such as
    the run's validation split): flagging scores above it flags a fraction ``fpr`` of such data."""
    if not 0 < fpr < 1:
        raise ConfigError(f"fpr must be between 0 and 1, got {fpr}", "fpr")
    names = score_names(run)
    if column not in names:
        raise ConfigError(
            f"this run has no score {column!r}; choose from {', '.join(names)}", "threshold_score"
        )
    res = score(run, rows, None, k, batch_size, seed, progress=progress, keep=True)
    return float(torch.quantile(res["scores"][column].double(), 1 - fpr))


def embed_rows(run: Run, rows: Rows, output: str | Path, samples: int | None = None, batch_size: int = 1000,
               seed: int = 0, progress: bool = True) -> tuple[int, ...]:  # fmt: skip
    """Write the posterior mean E[z|x] of every row (or ``samples`` draws z ~ q(z|x)) to ``output``
    in the rows' order: ``.npy`` of shape ``(N, z_dim)`` (``(N, samples, z_dim)`` with draws), or
    ``.csv`` with ``index``, ``label`` (if known), ``sample`` (with draws) and ``z0, z1, ...``.
    The model is given the labels evaluation gives it: M2 none, so its z is of q(z|x,y) at the
    class q(y|x) infers, as its ``encode`` takes it.

    :returns: the shape written.
    """
    output = Path(output)
    if output.suffix not in (".npy", ".csv"):
        raise ConfigError(f"cannot write {output}: name a .npy or .csv file", "output")
    if samples is not None and samples < 1:
        raise ConfigError(f"samples must be positive, got {samples}", "samples")
    vae, n = run.model, len(rows)
    shape = (n, vae.z_dim) if samples is None else (n, samples, vae.z_dim)
    pyro.set_rng_seed(seed)
    bar = _bar(progress, n, "embedding")
    output.parent.mkdir(parents=True, exist_ok=True)
    npy = output.suffix == ".npy"
    with atomic_file(output) if npy else nullcontext() as tmp, _writer(None if npy else output) as write:
        array = np.lib.format.open_memmap(tmp, "w+", np.float32, shape) if npy else None
        labelled = rows.y is not None
        write(["index", *(["label"] if labelled else []), *(["sample"] if samples else []),
               *(f"z{i}" for i in range(vae.z_dim))])  # fmt: skip
        for start, x, y in batches(run, rows, batch_size):
            yy = variant_of(vae).test_labels(vae, y)
            if samples is None:
                z = embed(vae, x, yy, batch_size=len(x))  # (batch, z_dim)
            else:
                z = posterior_samples(vae, x, yy, samples).transpose(0, 1)  # (batch, samples, z_dim)
            z = z.cpu().float()
            if array is not None:
                array[start : start + len(x)] = z.numpy()
            else:
                index = rows.index(start, start + len(x))
                for i, zi in enumerate(z.reshape(len(x), -1, vae.z_dim).tolist()):
                    label = [int(y[i])] if labelled else []
                    for s, row in enumerate(zi):
                        write([index[i], *label, *([s] if samples else []), *(f"{v:.9g}" for v in row)])
            bar.update(len(x))
        if array is not None:
            array.flush()
            del array  # closed before the rename
    bar.close()
    return shape


@contextmanager
def _writer(path: str | Path | None) -> Iterator[Callable[[list], object]]:
    """A CSV row writer on ``path`` (or one that drops rows, for ``None``), as a context: rows go
    to a temporary file renamed over ``path`` at the end (:func:`~pyrovae.checkpoint.atomic_file`),
    so an error leaves no half-written file, and a file already at ``path`` as it was."""
    if path is None:
        yield lambda row: None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # as figures do
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        yield csv.writer(f).writerow


def _bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm  # not tqdm.auto: see fit.py

    return tqdm(
        total=total, desc=desc, unit="row", disable=None if progress else True
    )  # None: off when no tty
