"""Run configuration: one flat dataclass saved as ``config.json``, presets, and model building."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .models import VAE
from .nets import ACTIVATIONS, NETS
from .priors import PRIORS


def _opt(default, help: str):
    """A config field with its ``--help`` text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class ConfigError(ValueError):
    """An invalid option, with a message saying which and what to use instead."""


@dataclass
class Config:
    """Everything that defines a run; each field's metadata holds its ``--help`` text."""

    # data
    dataset: str = _opt("mnist", "'mnist' or 'file' (with --data-file)")
    data_dir: str | None = _opt(None, "folder holding MNIST/raw/ (else $PYROVAE_DATA, else ~/.cache/pyrovae)")
    data_file: str | None = _opt(None, "a .pt or .npy array (N, ...) in [0, 1] for --dataset file")
    labels_file: str | None = _opt(None, "labels for --data-file (.pt or .npy, one class index per row)")
    binarize: str = _opt(
        "auto",
        "'dynamic' (fresh Bernoulli draw every epoch), 'none', or 'auto' (dynamic for Bernoulli)",
    )
    val_size: int = _opt(10000, "validation images held out of the training set")
    train_size: int | None = _opt(None, "use only the first N training images, for quick runs (default: all)")
    split_seed: int = _opt(0, "seed of the train/validation split (fixed across runs)")
    # model
    z_dim: int = _opt(50, "latent dimensions")
    hidden: list[int] = _opt([400], "hidden layer sizes of encoder and decoder")
    activation: str = _opt("softplus", "activation of the networks")
    net: str = _opt("mlp", "encoder/decoder pair")
    prior: str = _opt("normal", "prior family p(z)")
    guide: str = _opt("diag", "guide family q(z|x)")
    likelihood: str = _opt("bernoulli", "likelihood family p(x|z)")
    guide_scale: str = _opt("softplus", "how the guide makes its scale positive: 'softplus' or 'exp'")
    components: int = _opt(10, "mixture prior: number of components")
    pseudo_inputs: int = _opt(500, "VampPrior: number of pseudo-inputs")
    flow_layers: int = _opt(2, "flow prior / IAF guide: number of autoregressive layers")
    likelihood_scale: float | None = _opt(None, "normal/laplace: fixed scale (default: learned per pixel)")
    conditional: bool = _opt(False, "condition prior, guide and decoder on the labels")
    init_bias: bool = _opt(True, "set the decoder's output bias from the mean training image")
    # objective
    elbo: str = _opt(
        "trace",
        "'trace' (Trace_ELBO), 'meanfield' (analytic KL), 'iwae' (importance-weighted bound)",
    )
    num_particles: int = _opt(1, "samples per datum in the ELBO (vectorized); K for --elbo iwae")
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE); the maximum of a schedule")
    beta_schedule: str = _opt("constant", "'constant', 'linear' (warm-up from 0) or 'cyclical'")
    warmup_epochs: float = _opt(10.0, "epochs of linear warm-up, or of one cycle for 'cyclical'")
    capacity: float | None = _opt(None, "C_max in nats: train on gamma*|KL - C(t)| (Burgess et al. 2018)")
    capacity_epochs: float = _opt(10.0, "epochs for C(t) to rise from 0 to C_max")
    gamma: float = _opt(100.0, "weight of the capacity term")
    # optimization
    epochs: int = _opt(10, "training epochs")
    batch_size: int = _opt(256, "images per step")
    lr: float = _opt(1e-3, "Adam learning rate")
    lr_schedule: str = _opt("none", "'none', 'cosine' or 'exponential' (per epoch)")
    lr_decay: float = _opt(0.95, "per-epoch factor for 'exponential'")
    clip_norm: float | None = _opt(None, "clip the gradient norm to this value")
    patience: int | None = _opt(None, "stop after this many epochs without a better validation ELBO")
    on_nan: str = _opt(
        "stop", "on a NaN/inf loss: 'stop', or 'rollback' to the last good state with half the lr"
    )
    seed: int = _opt(0, "seeds torch, Pyro and the batch order")
    device: str = _opt("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    # evaluation at the end of training
    eval_k: int = _opt(1000, "importance samples per test image for log p(x)")
    eval_n_test: int | None = _opt(1000, "test images for the importance-sampled log p(x) (None: all)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def validate(self) -> Config:
        """Refuse invalid values with a message naming the option; returns ``self``."""
        for name, reg in [("prior", PRIORS), ("guide", GUIDES), ("likelihood", LIKELIHOODS),
                          ("net", NETS), ("activation", ACTIVATIONS)]:  # fmt: skip
            _choice(name, getattr(self, name), reg)
        _choice("elbo", self.elbo, ["trace", "meanfield", "iwae"])
        _choice("binarize", self.binarize, ["auto", "dynamic", "none"])
        _choice("beta_schedule", self.beta_schedule, ["constant", "linear", "cyclical"])
        _choice("lr_schedule", self.lr_schedule, ["none", "cosine", "exponential"])
        _choice("guide_scale", self.guide_scale, ["softplus", "exp"])
        _choice("on_nan", self.on_nan, ["stop", "rollback"])
        _choice("dataset", self.dataset, ["mnist", "file"])
        for name in ["z_dim", "epochs", "batch_size", "num_particles", "components", "pseudo_inputs",
                     "flow_layers", "val_size", "eval_k"]:  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be a positive integer, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"--hidden must be positive layer sizes, got {self.hidden}")
        for name in ["lr", "warmup_epochs", "capacity_epochs", "gamma", "lr_decay"]:
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {self.beta}")
        if self.capacity is not None and self.capacity < 0:
            raise ConfigError(f"--capacity must be >= 0 nats, got {self.capacity}")
        if self.capacity is not None and (
            self.beta != 1 or self.beta_schedule != "constant" or self.elbo != "trace"
        ):
            raise ConfigError(
                "--capacity replaces beta: use it with --beta 1, a constant schedule and --elbo trace"
            )
        if self.elbo == "iwae" and (self.beta != 1 or self.beta_schedule != "constant"):
            raise ConfigError(
                "--elbo iwae trains the importance-weighted bound, which has no beta: use --beta 1"
            )
        if self.elbo == "iwae" and self.num_particles < 2:
            raise ConfigError("--elbo iwae needs --num-particles K >= 2 (K=1 is the plain ELBO)")
        for name in ["clip_norm", "likelihood_scale", "patience", "eval_n_test", "train_size"]:
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {v}")
        if self.prior == "conditional" and not self.conditional:
            raise ConfigError("--prior conditional is p(z|y): add --conditional to train on labels")
        if self.conditional and not getattr(PRIORS[self.prior], "conditionable", True):
            raise ConfigError(
                f"--prior {self.prior} cannot be conditioned on a label; use --prior normal or "
                "--prior conditional with --conditional"
            )
        return self

    def resolve_binarize(self) -> bool:
        """Whether training batches are dynamically binarized."""
        if self.binarize == "auto":
            return LIKELIHOODS[self.likelihood].needs_binary
        return self.binarize == "dynamic"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        close = difflib.get_close_matches(value, list(options), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown --{_flag(name)} {value!r}; choose from {', '.join(options)}.{hint}")


PRESETS: dict[str, dict] = {
    # Pyro's VAE tutorial (examples/vae/vae.py): 784-400-50 softplus MLPs, exp scale, Adam 1e-3.
    "tutorial": dict(
        z_dim=50, hidden=[400], activation="softplus", guide_scale="exp", lr=1e-3, batch_size=256
    ),
    # Burda et al. (2015), one stochastic layer: 784-200-200-50 tanh MLPs.
    "iwae": dict(z_dim=50, hidden=[200, 200], activation="tanh", guide_scale="exp", lr=1e-3, batch_size=20),
}


def build_model(cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0) -> VAE:
    """The :class:`~pyrovae.models.VAE` a config describes, for data of shape ``x_shape``."""
    k = num_classes if cfg.conditional else 0
    if cfg.conditional and not num_classes:
        raise ConfigError("--conditional needs labelled data (MNIST, or --labels-file for a data file)")
    Encoder, Decoder = NETS[cfg.net]
    try:
        encoder = Encoder(x_shape, cfg.hidden, cfg.activation, k)
        decoder = Decoder(x_shape, cfg.z_dim, cfg.hidden, cfg.activation, k)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    guide_opts = {"delta": {}, "iaf": dict(layers=cfg.flow_layers, scale=cfg.guide_scale)}
    guide = GUIDES[cfg.guide](encoder, cfg.z_dim, **guide_opts.get(cfg.guide, dict(scale=cfg.guide_scale)))
    prior_opts = {
        "mixture": dict(components=cfg.components),
        "vamp": dict(x_shape=x_shape, pseudo_inputs=cfg.pseudo_inputs),
        "flow": dict(layers=cfg.flow_layers),
        "conditional": dict(num_classes=k),
    }
    prior = PRIORS[cfg.prior](cfg.z_dim, **prior_opts.get(cfg.prior, {}))
    lik_opts = {
        "normal": dict(scale=cfg.likelihood_scale),
        "laplace": dict(scale=cfg.likelihood_scale),
    }
    likelihood = LIKELIHOODS[cfg.likelihood](x_shape, **lik_opts.get(cfg.likelihood, {}))
    try:
        return VAE(x_shape, cfg.z_dim, prior=prior, guide=guide, likelihood=likelihood,
                   decoder=decoder, num_classes=k, beta=cfg.beta)  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from None


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name} asked for CUDA, but no CUDA device is available; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported --device {name!r}; use auto, cpu, cuda or cuda:N")
    return device
