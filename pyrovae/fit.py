"""``fit``: train any :class:`~pyrovae.models.VAE` by SVI, with checkpoints and exact resume.

The loop follows Pyro's recipe for custom training loops: the ELBO's differentiable loss as a
module (:class:`~pyrovae.objectives.ELBOLoss`), ``backward`` and a torch optimizer over the
model's parameters. β and the capacity C are computed per step from the options and passed in;
nothing is stored on the model. Everything a resumed run needs is in one place, :class:`Loop`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm import tqdm  # plain: tqdm.auto warns and falls back badly in a notebook without ipywidgets

from . import checkpoint, distributed, records
from .config import Config
from .data import DataError, Dataset, Split, is_binary
from .evaluate import Prepare, in_model_dtype
from .graphs import fused_adam, make_steps
from .loop import Counters, Loop, Signals, clone_state, deterministic_algorithms
from .models import VAE
from .step import TRACE_PAYS_FROM, decay_groups, make_optimizer, resolve_step
from .variants import variant_of

#: A hook called after every epoch with its ``metrics.csv`` row (a dict keyed by :data:`~pyrovae.records.METRICS`),
#: once the epoch's checkpoint is written; an exception it raises (a pruned Optuna trial, say)
#: ends the fit there and propagates, leaving a resumable run.
EpochHook = Callable[[dict], None]
#: A hook called after every optimizer step with the step count and that step's loss in nats per
#: image: the objective summed over the step's batch (over all processes under torchrun) divided
#: by its number of images, as ``train_loss`` is per image over an epoch.
StepHook = Callable[[int, float], None]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says where and what to do."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""


def fit(
    vae: VAE,
    data: Dataset,
    out: str | Path,
    options: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    prepare: Prepare | None = None,
    meta: dict | None = None,
    on_epoch: EpochHook | None = None,
    on_step: StepHook | None = None,
) -> VAE:
    """Train ``vae`` on ``data.train`` by SVI, validating on ``data.val`` at β = 1 every epoch. The
    images are taken in the model's dtype (float32 MNIST for a ``.double()`` model, say).

    ``out`` receives ``config.json`` (``options``: so :func:`~pyrovae.loaded.load_run` opens the
    run, where ``vae`` is the model they describe), ``metrics.csv``, ``checkpoint.pt`` (every epoch
    and on SIGINT/SIGTERM, atomically) and ``best.pt`` (best validation ELBO among the epochs from
    the one that ends a KL warm-up or the capacity's rise). ``options`` are checked before ``out``
    is touched. A folder that holds a run is refused unless ``resume`` (the run continues from
    ``checkpoint.pt``; on CPU it then ends with exactly the parameters of an uninterrupted run) or
    ``overwrite`` (its run files are replaced, other files kept).

    :param options: a :class:`~pyrovae.config.Config`; fit reads the objective, optimization,
        binarization, seed and device fields and ignores the model's.
    :param prepare: makes each batch's condition ``y`` from ``(x, y)``; see :data:`Prepare`.
    :param meta: extra entries for every checkpoint (what a loader needs to rebuild the model).
    :param on_epoch: called after each epoch with its metrics row (see :data:`EpochHook`).
    :param on_step: called after each step with the step count and loss per image (see
        :data:`StepHook`).
        Hooks run in the main process only (rank 0 under torchrun).
    :returns: the model with the best validation ELBO's parameters (or accuracy: ``options.monitor``),
        in eval mode (dropout off).

    The model is in training mode for the steps and in eval mode for validation, so dropout acts
    on training batches only. The loss, the batches, the schedule of β and C and any extra
    per-epoch figures come from the model's variant (:meth:`~pyrovae.variants.Variant.training`):
    the semi-supervised VAE, say, trains on its own loss over batches mixing labelled and
    unlabelled images and logs the accuracies of q(y|x) (``val_accuracy``, ``test_accuracy``).
    """
    cfg, out = options.validate(), Path(out)
    from .build import resolve_device
    from .runs import refuse_resume_and_overwrite

    refuse_resume_and_overwrite(resume, overwrite)

    _check_binary_validation(vae, data)
    data = _in_model_dtype(vae, data)
    ctx = distributed.init(resolve_device(cfg.device))
    progress = progress and ctx.main

    # 1. the run directory; model, data and random streams on the device
    if ctx.main:
        _open_out(out, cfg, resume, overwrite)
        checkpoint.remove_temporaries(out)  # this run's files are written by this process alone from here on
    pyro.set_rng_seed((cfg.seed + 1000 * ctx.rank) % 2**32)  # each rank its own z draws, a valid seed
    vae.to(ctx.device)
    train, val = data.train.to(ctx.device), data.val.to(ctx.device)
    labels = bool(getattr(vae, "num_classes", 0) or getattr(vae, "condition_shape", None))
    prepare = prepare or (lambda x, y: y if labels else None)

    # 2. the variant's objective, the optimizer and the step
    training = variant_of(vae).training(vae, data, cfg, ctx.world, progress)
    val_prepare = prepare if training.validation_labels else (lambda x, y: None)
    loop, steps = _loop_and_steps(vae, training, data, cfg, ctx, meta)
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"

    # 3. resume
    if resume and ckpt_path.exists():
        from .loaded import _check_same_config  # loaded imports runs, which imports this module

        saved = checkpoint.load(ckpt_path, map_location=ctx.device)
        _check_same_config(cfg, saved, out, "checkpoint.pt")  # an edited config.json must not train on
        loop.load_state_dict(saved)
        if ctx.main:
            records.repair_metrics(out / "metrics.csv", loop.c.rows)
    good = clone_state(loop.state_dict())  # what a NaN rollback returns to
    if progress:
        tqdm.write(f"training step: {steps.description}")

    # 4. epochs
    first, binarize = True, cfg.resolve_binarize()
    with Signals() as signals, deterministic_algorithms(cfg.deterministic and ctx.device.type == "cuda"):
        while loop.c.epoch < cfg.epochs and not (cfg.patience and loop.c.bad_epochs >= cfg.patience):
            c, epoch = loop.c, loop.c.epoch
            lr = _start_epoch(loop, cfg, train)
            batches = training.batches(c.perm, cfg.batch_size)
            bar = _bar(c, epoch, cfg.epochs, len(batches), progress)
            t0, failed, since, images = time.perf_counter() - c.seconds, None, c.step_in_epoch, 0
            coefs = training.schedule(epoch + max(c.step_in_epoch - 1, 0) / len(batches))

            # 4a. steps; the loss is read every steps.every steps (1 for the eager step), and at once
            # after an eager step (a first or last one) that found a non-finite loss
            vae.train()
            for s in range(c.step_in_epoch, len(batches)):
                coefs = training.schedule(epoch + s / len(batches))  # at the fractional epoch
                x, y = _batch(train, ctx.shard(batches[s]), binarize, loop.noise_rng)
                steps(x, prepare(x, y), coefs["beta"], validate=first)  # Pyro's checks: first step only
                first, images = False, images + len(x) * ctx.world
                c.step, c.step_in_epoch = c.step + 1, s + 1
                read = on_step or signals.caught or steps.bad is not None or s + 1 == len(batches)
                if (s + 1 - since) % steps.every and not read:
                    continue
                total, done, bad = steps.read()
                if bad is not None:
                    failed = (since, s, *bad)
                    break
                if on_step is not None and ctx.main:  # per image, as train_loss: batches differ in size
                    on_step(c.step, total / images)
                c.loss_sum, c.seen, since, images = c.loss_sum + total, c.seen + images, s + 1, 0
                bar.update(done)
                bar.set_postfix(loss=f"{c.loss_sum / c.seen:.2f}", refresh=False)
                if signals.caught is not None:
                    bar.close()
                    c.seconds = time.perf_counter() - t0
                    _interrupt(loop, ctx, ckpt_path, signals.caught, epoch, s)
            bar.close()

            # 4b. a non-finite loss or gradient: stop, or roll back with half the learning rate
            if failed is not None:
                _roll_back(loop, good, cfg, failed, epoch, ckpt_path, ctx.main)
                steps.reset()
                continue
            seconds = time.perf_counter() - t0

            # 4c. validate at beta = 1, record, checkpoint, early stopping
            row = records.epoch_row(vae, val, val_prepare, training, ctx, epoch, len(batches), lr, coefs["capacity"],
                            seconds)  # fmt: skip
            good = records.end_epoch(loop, row, cfg, out, ctx, settled=epoch + 1 >= training.settled())
            if on_epoch is not None and ctx.main:
                on_epoch(dict(loop.c.rows[-1]))
            if progress:
                records.report(loop.c.rows[-1], cfg, loop.c)
            if signals.caught is not None:  # during validation or the hook: nothing after the steps reads it
                raise Interrupted(f"stopped by signal {signals.caught} after epoch {epoch + 1}; checkpoint "
                                  f"written to {ckpt_path}: the run can be resumed")  # fmt: skip

    # 5. the best parameters
    if ctx.active:
        torch.distributed.barrier()  # rank 0 has written best.pt
    if best_path.exists():
        vae.load_state_dict(checkpoint.load(best_path, map_location=ctx.device)["model"])
    return vae.eval()


def _open_out(out: Path, cfg: Config, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run (a stale ``config.json`` would describe the wrong
    model), as :func:`~pyrovae.runs.train` does, then write ``config.json``."""
    from .runs import RUN_FILES, _refuse_occupied, _remove_run_files, refuse_lost_checkpoint, resumed_config

    if resume and (out / "config.json").exists():
        refuse_lost_checkpoint(out)
        resumed_config(out, dataclasses.asdict(cfg))
    elif not resume and any((out / name).exists() for name in RUN_FILES if name != "config.json"):
        _refuse_occupied(out, overwrite)  # a config.json alone is a start that failed: replaced
        _remove_run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(out / "config.json", cfg.to_json())  # so load_run and `pyrovae evaluate` open it


def _loop_and_steps(vae: VAE, training, data: Dataset, cfg: Config, ctx, meta: dict | None):
    """The run's state (a :class:`Loop` with its optimizer) and the training step it takes
    (``cfg.step``: see :mod:`pyrovae.graphs`)."""
    params = [p for p in vae.parameters() if p.requires_grad]
    planned = cfg.epochs * math.ceil(len(data.train) / cfg.batch_size)
    kind = resolve_step(cfg.step, ctx.device, ctx.world, steps=planned)
    why = training.uncapturable if kind != "eager" else None
    kind = "eager" if why else kind
    if kind != "eager":
        training.coefficients_on(ctx.device, params[0].dtype)
    groups = decay_groups(vae, cfg.weight_decay) if cfg.weight_decay else params
    opt = (make_optimizer if kind == "eager" else fused_adam)(groups, cfg.lr, cfg.weight_decay)
    # train_images: what a default from the data's size was (M2's α), for `runs`, which loads no data
    meta = {"config": cfg.to_json(), "x_shape": list(data.x_shape), "num_classes": data.num_classes,
            "train_images": len(data.train), "made_by": "fit", **(meta or {})}  # fmt: skip
    loop = Loop(vae, opt, ctx.device, cfg.seed, ctx.rank, meta)
    steps = make_steps(kind, distributed.wrap(training.loss, ctx), opt, params, cfg.clip_norm)
    if why:
        steps.description = f"eager (not graphed: {why}; the loss read after every step)"
    elif cfg.step == "auto" and kind == "eager" and ctx.world == 1:
        steps.description = (f"eager (a run of {planned} steps, too short to repay tracing the graphed step, "
                             f"which auto takes from {TRACE_PAYS_FROM}; the loss read after every step)")  # fmt: skip
    return loop, steps


def _bar(c: Counters, epoch: int, epochs: int, steps: int, progress: bool) -> tqdm:
    return tqdm(
        total=steps,
        initial=c.step_in_epoch,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=None if progress else True,
        leave=False,
        unit="step",
    )  # fmt: skip  (None: off without a tty)


# -- the epoch's parts ------------------------------------------------------------------------
def _start_epoch(loop: Loop, cfg: Config, train: Split) -> float:
    """Set this epoch's learning rate, and draw its order unless resuming mid-epoch; returns the rate."""
    c = loop.c
    lr = _lr(cfg, c.epoch, c.lr_factor)
    for group in loop.opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):  # a graphed step's optimizer reads it on the device
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    if c.perm is None:
        c.perm = torch.randperm(len(train), generator=loop.data_rng, device=loop.device)
        c.step_in_epoch, c.loss_sum, c.seen, c.seconds = 0, 0.0, 0, 0.0
    return lr


def _interrupt(loop: Loop, ctx, ckpt_path: Path, signum: int, epoch: int, s: int):
    """Write a checkpoint and stop: a signal arrived between steps."""
    if ctx.main:
        checkpoint.save(loop.state_dict(), ckpt_path)
    raise Interrupted(
        f"stopped by signal {signum} at epoch {epoch + 1}, step {s + 1}; "
        f"checkpoint written to {ckpt_path}: the run can be resumed"
    )


def _roll_back(loop: Loop, good: dict, cfg: Config, failed: tuple, epoch: int, ckpt_path: Path,
               main: bool) -> None:  # fmt: skip
    """After a non-finite step: restore the last good state with half the learning rate
    (``on_nan="rollback"``, at most 5 times), else stop with a :class:`TrainingError`."""
    if cfg.on_nan == "rollback" and loop.c.rollbacks < 5:
        loop.load_state_dict(clone_state(good), keep_lr=True)
        c = loop.c
        c.rollbacks, c.lr_factor = c.rollbacks + 1, c.lr_factor * 0.5
        if main:
            tqdm.write(f"{_describe(failed, epoch)}: rolled back to the last good state, lr x{c.lr_factor}")
        return
    remedy = ("after 5 rollbacks, each halving the learning rate: lower lr or clip the gradient norm "
              "(clip_norm)" if cfg.on_nan == "rollback" else "lower lr, clip the gradient norm "
              "(clip_norm), or roll back on NaN (on_nan rollback)")  # fmt: skip
    raise TrainingError(
        f"{_describe(failed, epoch)}; {'parameters were not updated and ' if failed[0] == failed[1] else ''}"
        f"the last good checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) is intact. "
        f"{remedy[0].upper()}{remedy[1:]}"
    )


# -- helpers --------------------------------------------------------------------------------
def _lr(cfg: Config, epoch: int, factor: float) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * factor * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.lr_schedule == "exponential":
        return cfg.lr * factor * cfg.lr_decay**epoch
    return cfg.lr * factor


def _batch(split: Split, idx: torch.Tensor, binarize: bool, noise: torch.Generator):
    x = split.x[idx]  # (batch, *x_shape)
    if binarize:
        x = torch.bernoulli(x, generator=noise)
    return x, None if split.y is None else split.y[idx]


def _describe(failed: tuple, epoch: int) -> str:
    first, last, loss, norm = failed
    if first == last:
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        return f"non-finite {what} at epoch {epoch + 1}, step {last + 1}"
    return f"a non-finite loss or gradient at epoch {epoch + 1}, within steps {first + 1}-{last + 1}"


def _in_model_dtype(vae: VAE, data: Dataset) -> Dataset:
    """``data`` with its images in the model's dtype, as :func:`~pyrovae.evaluate.evaluate` takes
    them: MNIST is float32 whatever the model's, and a float64 model fails in its first layer on it."""
    splits = {name: getattr(data, name) for name in ("train", "val", "test")}
    return dataclasses.replace(
        data, **{n: dataclasses.replace(s, x=in_model_dtype(vae, s.x)) for n, s in splits.items()}
    )


def _check_binary_validation(vae: VAE, data: Dataset) -> None:
    """A likelihood for binary data is scored on validation images as they are (training images
    are binarized afresh each epoch when ``binarize`` says so): under Pyro's validation grey ones
    would fail deep in Pyro (a Bernoulli on grey targets with validation off, as Pyro's CVAE
    tutorial trains, is the user's choice)."""
    needs_binary = getattr(getattr(vae, "likelihood", None), "needs_binary", False)
    if needs_binary and is_validation_enabled() and not is_binary(data.val.x):
        raise DataError(
            "the validation images are grey but the likelihood is for binary data: binarize them once "
            "(pyrovae.loaded.load_data(config) does, with a fixed seed) or use a likelihood for grey "
            "values (cbernoulli, normal, laplace)", "binarize",
        )  # fmt: skip
