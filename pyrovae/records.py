"""What each epoch of :func:`~pyrovae.fit.fit` leaves: its ``metrics.csv`` row (validation at
β = 1), ``best.pt``, ``checkpoint.pt`` and ``metrics.csv`` written, and the line it prints."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, distributed
from .config import Config
from .data import Split
from .evaluate import split_active_units, validate
from .loop import Counters, Loop, clone_state
from .models import VAE
from .step import decay_groups

METRICS = ["epoch", "train_loss", "val_elbo", "val_recon", "val_kl", "val_active_units", "beta", "capacity",
           "lr", "weight_norm", "seconds"]  # fmt: skip
"""Columns of ``metrics.csv``, one row per epoch. ``train_loss`` is the training objective (with
β, free bits, capacity and dropout as trained); the ``val_`` figures are at β = 1 with dropout
off; ``val_active_units`` counts latent dimensions whose posterior mean varies over the validation
set (variance > 0.01); ``beta`` is the mean β of the epoch's steps; ``weight_norm`` is the 2-norm
of the networks' weight matrices, the parameters weight decay shrinks."""


def epoch_row(vae: VAE, val: Split, prepare, training, ctx, epoch: int, steps: int, lr: float, capacity,
              seconds: float) -> dict:  # fmt: skip
    """The epoch's ``metrics.csv`` row: validation ELBO terms and active units at β = 1, and the
    variant's own scores."""
    # 16 draws, not evaluate's 64, where the guide's mean is a Monte Carlo average (an IAF's): the
    # noise correction keeps the count unbiased, and 64 draws cost half an epoch's training
    units = split_active_units(vae, val, prepare, samples=16)
    recon, kl, units = ctx.broadcast([*validate(vae, val, prepare), units])
    beta = _epoch_beta(training, epoch, steps)
    return {
        "epoch": epoch + 1, "val_elbo": recon - kl, "val_recon": recon, "val_kl": kl,
        "val_active_units": int(units), "beta": beta, "capacity": capacity, "lr": lr,
        "weight_norm": _weight_norm(vae), "seconds": round(seconds, 3), **training.scores(vae),
    }  # fmt: skip


def end_epoch(loop: Loop, row: dict, cfg: Config, out: Path, ctx: distributed.Context,
              settled: bool = True) -> dict:  # fmt: skip
    """Record the row, count the epoch, write ``best.pt`` when it improved, ``checkpoint.pt`` and
    ``metrics.csv``; returns the state a NaN rollback would return to.

    An epoch before the schedules have ``settled`` (a KL warm-up or the capacity's rise) always
    becomes ``best.pt`` and leaves the first settled epoch nothing to beat: its ELBO scores a model
    trained for another objective, which a rising β or C may make worse by design."""
    c = loop.c
    row = {"epoch": row["epoch"], "train_loss": c.loss_sum / max(c.seen, 1), **row}
    c.rows.append(row)
    c.epoch, c.perm = row["epoch"], None
    score = row[f"val_{cfg.monitor}"] if cfg.monitor != "elbo" else row["val_elbo"]
    improved = score > c.best or not settled
    c.best, c.bad_epochs = (score, 0) if improved else (c.best, c.bad_epochs + 1)
    if not settled:
        c.best = -math.inf
    snap = loop.state_dict()
    # every rank's random streams (its z draws and binarization differ), so each resumes its own
    ranks = ctx.gather(snap["rng"]) if ctx.active else None
    if ctx.main:  # one writer; every rank holds the same parameters
        saved = snap if ranks is None else {**snap, "rng_ranks": ranks}
        if improved:
            checkpoint.save(saved, out / "best.pt")
        checkpoint.save(saved, out / "checkpoint.pt")
        checkpoint.write_text(out / "metrics.csv", metrics_csv(c.rows))
    return clone_state(snap)


def repair_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite ``metrics.csv`` from the rows a checkpoint holds, where they differ: a kill between
    an epoch's ``checkpoint.pt`` and its ``metrics.csv`` left the file a row short (or a row ahead
    of a checkpoint written before it), which no later epoch of a complete run would mend."""
    text = metrics_csv(rows)
    if rows and (not path.exists() or path.read_bytes() != text.encode()):
        checkpoint.write_text(path, text)


def report(row: dict, cfg: Config, c: Counters) -> None:
    extra = {k: v for k, v in row.items() if k not in METRICS}
    acc = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in extra.items())
    tqdm.write(f"epoch {row['epoch']}: train loss {c.rows[-1]['train_loss']:.2f}, "
               f"val ELBO {row['val_elbo']:.2f} nats/image{acc} ({row['seconds']:.1f}s)")  # fmt: skip
    if cfg.patience and c.bad_epochs >= cfg.patience:
        tqdm.write(f"early stop: no better validation {cfg.monitor} for {cfg.patience} epochs")


def _epoch_beta(training, epoch: int, steps: int) -> float:
    """The mean β of an epoch's steps, the weight its ``train_loss`` was trained with on average
    (a cyclical schedule may rise and fall within one epoch), to six significant digits."""
    mean = sum(training.schedule(epoch + s / steps)["beta"] for s in range(steps)) / steps
    return float(f"{mean:.6g}")


@torch.no_grad()
def _weight_norm(vae: VAE) -> float:
    decayed = decay_groups(vae, 1.0)[0]["params"]
    return torch.nn.utils.get_total_norm(decayed).item() if decayed else 0.0


def metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, METRICS + [k for k in (rows[0] if rows else {}) if k not in METRICS])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
