"""The SVI training loop: Pyro's ELBO as the loss, a torch optimizer, checkpoints and resume.

The step follows Pyro's recipe for custom training loops: ``elbo.differentiable_loss(model,
guide, x, y)`` and a plain :class:`torch.optim.Adam` over the model's parameters, which keeps the
hot loop free of parameter-store traffic and lets DDP or ``torch.compile`` wrap the networks.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from tqdm.auto import tqdm

from . import checkpoint, distributed
from .config import Config, ConfigError, build_model, resolve_device
from .data import DataError, Dataset, binarize, check_values, is_binary, load_dataset
from .evaluate import elbo_terms
from .likelihoods import LIKELIHOODS
from .models import VAE
from .objectives import beta_at, capacity_at, make_elbo
from .step import make_optimizer, svi_step

#: Options that may change when a run is resumed; every other option must match the saved one.
RESUMABLE = {"epochs", "patience", "device", "eval_k", "eval_n_test", "data_dir", "on_nan"}
METRICS = [
    "epoch",
    "train_loss",
    "val_elbo",
    "val_recon",
    "val_kl",
    "beta",
    "capacity",
    "lr",
    "seconds",
]
EVAL_BINARIZE_SEED = 0  # validation and test sets are binarized once, identically in every run


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says where and what to do."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""


@dataclass
class _State:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0
    perm: torch.Tensor | None = None  # this epoch's order, kept so a mid-epoch resume is exact
    loss_sum: float = 0.0
    seen: int = 0
    best: float = -math.inf
    bad_epochs: int = 0
    lr_factor: float = 1.0
    rollbacks: int = 0
    rows: list = field(default_factory=list)


# -- data -----------------------------------------------------------------------------------
def load_data(cfg: Config) -> Dataset:
    """The config's data set, checked against the likelihood; validation and test are binarized
    once with a fixed seed when training binarizes, so figures compare across runs."""
    data = load_dataset(
        cfg.dataset, cfg.data_dir, cfg.data_file, cfg.labels_file, cfg.val_size, cfg.split_seed
    )
    if cfg.train_size is not None:
        data.train = data.train.subset(slice(0, cfg.train_size))
    check_values(data.train.x, "training data")
    if (
        LIKELIHOODS[cfg.likelihood].needs_binary
        and not cfg.resolve_binarize()
        and not is_binary(data.train.x)
    ):
        raise DataError(
            f"--likelihood {cfg.likelihood} is only normalized on {{0, 1}} but the data has grey values; "
            "use --binarize dynamic, or a likelihood for grey values (--likelihood cbernoulli, normal, laplace)"
        )
    if cfg.batch_size > len(data.train):
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the {len(data.train)} training data; lower it"
        )
    if cfg.resolve_binarize():
        g = torch.Generator().manual_seed(EVAL_BINARIZE_SEED)
        data.val.x = binarize(data.val.x, g)
        data.test.x = binarize(data.test.x, g)
    return data


# -- run directory --------------------------------------------------------------------------
def prepare_run_dir(out: Path, cfg: Config, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run; on resume, refuse a config that contradicts it."""
    saved = out / "config.json"
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume: {out} holds no run (no config.json); drop --resume to start one")
        old = Config.load(saved)
        diff = {k: (getattr(old, k), getattr(cfg, k)) for k in vars(cfg) if k not in RESUMABLE
                and getattr(old, k) != getattr(cfg, k)}  # fmt: skip
        if diff:
            lines = ", ".join(
                f"{k}: saved {a!r}, given {b!r}" for k, a, b in ((k, *v) for k, v in diff.items())
            )
            raise ConfigError(f"--resume with options that contradict the saved run ({lines}); "
                              "drop them to continue the run as configured, or start a new run")  # fmt: skip
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out} already holds files; pass --resume to continue that run or --overwrite to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in ["checkpoint.pt", "best.pt", "metrics.csv", "eval.json"]:
            (out / name).unlink(missing_ok=True)
    checkpoint.write_text(saved, cfg.to_json())


def _metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, METRICS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# -- the loop -------------------------------------------------------------------------------
def _lr(cfg: Config, epoch: int, factor: float) -> float:
    if cfg.lr_schedule == "cosine":
        return cfg.lr * factor * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.lr_schedule == "exponential":
        return cfg.lr * factor * cfg.lr_decay**epoch
    return cfg.lr * factor


@torch.no_grad()
def validate(vae: VAE, data, batch_size: int = 1000) -> tuple[float, float]:
    """Mean reconstruction and KL per datum (β = 1) over a split."""
    recon, kl = 0.0, 0.0
    for i in range(0, len(data), batch_size):
        part = data.subset(slice(i, i + batch_size))
        r, k = elbo_terms(vae, part.x, part.y)
        recon += r.sum().item()
        kl += k.sum().item()
    return recon / len(data), kl / len(data)


class _Signals:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a checkpoint can be written."""

    def __init__(self) -> None:
        self.caught: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.caught = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def train(
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
) -> VAE:
    """Train a VAE by SVI as ``cfg`` describes, writing the run to ``out``.

    ``out`` receives ``config.json``, ``metrics.csv``, ``checkpoint.pt`` (every epoch, atomically)
    and ``best.pt`` (best validation ELBO). With ``resume`` the run continues from
    ``checkpoint.pt``; on CPU it then ends with exactly the parameters of an uninterrupted run.

    :returns: the model with the best validation ELBO's parameters.
    """
    cfg.validate()
    out = Path(out)
    ctx = distributed.init(resolve_device(cfg.device))
    device = ctx.device

    # 1. seeds, data, model; all checked before the run directory is touched, so refused input
    # leaves nothing behind
    pyro.set_rng_seed(cfg.seed + 1000 * ctx.rank)  # each rank its own z draws
    progress = progress and ctx.main
    data = data if data is not None else load_data(cfg)
    vae = build_model(cfg, data.x_shape, data.num_classes)
    if ctx.main:
        prepare_run_dir(out, cfg, resume, overwrite)
    if cfg.init_bias:
        vae.init_output_bias(data.train.x.mean(0))
    vae.to(device)
    train_x = data.train.x.to(device)
    train_y = data.train.y.to(device) if cfg.conditional else None
    val = data.val.to(device) if cfg.conditional else type(data.val)(data.val.x.to(device))
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # the same data order on every rank
    noise = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * ctx.rank + 1)  # binarization
    do_binarize = cfg.resolve_binarize()

    # 2. objective and optimizer
    capacity = dict(gamma=cfg.gamma, capacity=0.0) if cfg.capacity is not None else {}
    elbo = make_elbo(cfg.elbo, cfg.num_particles, **capacity)
    params = [p for p in vae.parameters() if p.requires_grad]
    loss_fn = distributed.wrap(distributed.ELBOLoss(vae, elbo, ctx.world), ctx)
    opt = make_optimizer(params, cfg.lr)
    state = _State()

    # 3. resume
    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    if resume and ckpt_path.exists():
        ck = checkpoint.load(ckpt_path, map_location=device)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"]["torch"])
        gen.set_state(ck["rng"]["data"].to(gen.get_state().device))
        noise.set_state(ck["rng"]["noise"].to(noise.get_state().device))
        if device.type == "cuda" and ck["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], device)
        for k, v in ck["state"].items():
            setattr(state, k, v)
        if state.perm is not None:
            state.perm = state.perm.to(device)

    def snapshot() -> dict:
        return {
            "model": vae.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "data": gen.get_state(),
                "noise": noise.get_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
            "state": dict(vars(state)),
            "config": cfg.to_json(),
            "x_shape": list(data.x_shape),
            "num_classes": data.num_classes,
        }

    def restore(snap: dict) -> None:
        vae.load_state_dict(snap["model"])
        opt.load_state_dict(snap["optimizer"])
        torch.set_rng_state(snap["rng"]["torch"])
        gen.set_state(snap["rng"]["data"])
        noise.set_state(snap["rng"]["noise"])
        keep = state.lr_factor, state.rollbacks
        for k, v in snap["state"].items():
            setattr(state, k, v)
        state.lr_factor, state.rollbacks = keep

    good = _clone(snapshot())
    n = train_x.shape[0]

    # 4. epochs
    first_step = True
    with _Signals() as signals:
        while state.epoch < cfg.epochs:
            epoch = state.epoch
            lr = _lr(cfg, epoch, state.lr_factor)
            for group in opt.param_groups:
                group["lr"] = lr
            if state.perm is None:
                state.perm = torch.randperm(n, generator=gen, device=device)
                state.step_in_epoch, state.loss_sum, state.seen = 0, 0.0, 0
            index = state.perm.split(cfg.batch_size)
            bar = tqdm(total=len(index), initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress, leave=False, unit="step")  # fmt: skip
            t0 = time.perf_counter()
            nan_at = None
            for s in range(state.step_in_epoch, len(index)):
                t = epoch + s / len(index)  # fractional epoch, for the KL schedules
                vae.beta = beta_at(cfg, t)
                if capacity:
                    elbo.capacity = capacity_at(t, cfg.capacity, cfg.capacity_epochs)
                idx = ctx.shard(index[s])
                x = train_x[idx]  # (batch, *x_shape)
                if do_binarize:
                    x = torch.bernoulli(x, generator=noise)
                y = train_y[idx] if train_y is not None else None

                # Pyro's argument checks run on the first step of a run; after that the loss and
                # gradient checks below catch NaNs at a fraction of the per-step cost.
                with pyro.validation_enabled(first_step and is_validation_enabled()):
                    loss_v, norm_v = svi_step(loss_fn, opt, params, x, y, cfg.clip_norm)
                first_step = False
                if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                    nan_at = (s, loss_v, norm_v)
                    break
                state.step += 1
                state.step_in_epoch = s + 1
                state.loss_sum += loss_v
                state.seen += len(idx) * ctx.world
                bar.update()
                bar.set_postfix(loss=f"{state.loss_sum / state.seen:.2f}", refresh=False)
                if signals.caught is not None:
                    bar.close()
                    if ctx.main:
                        checkpoint.save(snapshot(), ckpt_path)
                    raise Interrupted(
                        f"stopped by signal {signals.caught} at epoch {epoch + 1}, step {s + 1}; "
                        f"checkpoint written to {ckpt_path}: continue with --resume"
                    )
            bar.close()
            if nan_at is not None:
                s, loss_v, norm_v = nan_at
                what = f"loss {loss_v}" if not math.isfinite(loss_v) else f"gradient norm {norm_v}"
                where = f"epoch {epoch + 1}, step {s + 1}"
                if cfg.on_nan == "rollback" and state.rollbacks < 5:
                    state.rollbacks += 1
                    state.lr_factor *= 0.5
                    restore(_clone(good))
                    tqdm.write(
                        f"non-finite {what} at {where}: rolled back to the last good state, lr x{state.lr_factor}"
                    )
                    continue
                raise TrainingError(
                    f"non-finite {what} at {where}; parameters were not updated and the last good checkpoint "
                    f"({ckpt_path if ckpt_path.exists() else 'none yet'}) is intact. Lower --lr, set --clip-norm, "
                    "or pass --on-nan rollback"
                )
            seconds = time.perf_counter() - t0

            # 5. validate at beta = 1, record, checkpoint
            vae.beta = 1.0
            recon, kl = ctx.broadcast(list(validate(vae, val)))
            val_elbo = recon - kl
            state.rows.append({
                "epoch": epoch + 1, "train_loss": state.loss_sum / max(state.seen, 1), "val_elbo": val_elbo,
                "val_recon": recon, "val_kl": kl, "beta": beta_at(cfg, epoch + 1 - 1e-9),
                "capacity": elbo.capacity if capacity else "", "lr": lr, "seconds": round(seconds, 3),
            })  # fmt: skip
            state.epoch, state.perm = epoch + 1, None
            improved = val_elbo > state.best
            if improved:
                state.best, state.bad_epochs = val_elbo, 0
            else:
                state.bad_epochs += 1
            snap = snapshot()
            if ctx.main:  # one writer; every rank holds the same parameters
                if improved:
                    checkpoint.save(snap, best_path)
                checkpoint.save(snap, ckpt_path)
                checkpoint.write_text(out / "metrics.csv", _metrics_csv(state.rows))
            good = _clone(snap)
            if progress:
                tqdm.write(f"epoch {epoch + 1}: train loss {state.rows[-1]['train_loss']:.2f}, "
                           f"val ELBO {val_elbo:.2f} nats/image ({seconds:.1f}s)")  # fmt: skip
            if cfg.patience and state.bad_epochs >= cfg.patience:
                if progress:
                    tqdm.write(f"early stop: no better validation ELBO for {cfg.patience} epochs")
                break

    vae.beta = cfg.beta if cfg.beta_schedule == "constant" else 1.0
    if ctx.active:
        torch.distributed.barrier()  # rank 0 has written best.pt
    if best_path.exists():
        vae.load_state_dict(checkpoint.load(best_path, map_location=device)["model"])
    return vae


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj
