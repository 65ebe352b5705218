"""Run configuration: one flat dataclass saved as ``config.json``, its checks, and presets.

Each field carries its help text and, where it has them, its choices in the field's metadata,
so the command line shows and checks them; choices of component families are the live
registries (:data:`~pyrovae.priors.PRIORS` and friends), so a registered component is a choice.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .graphs import STEPS
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS, LABEL_LAYERS, NETS
from .objectives import ELBOS
from .priors import PRIORS
from .semisupervised import BATCHINGS


class ConfigError(ValueError):
    """An invalid option, with a message saying which and what to use instead.

    :param option: the :class:`Config` field at fault, if one is (the CLI names its flag).
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _opt(default, help: str, choices=None):
    """A config field with its help text and choices; list defaults are copied per instance."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


class _Models:
    """The live names of :data:`~pyrovae.variants.MODELS` (imported when first asked: the
    variants import this module)."""

    def _names(self):
        from .variants import MODELS

        return MODELS

    def __iter__(self):
        yield from self._names()

    def __contains__(self, value) -> bool:
        return value in self._names()


class _WithAuto:
    """The live choices of a registry, with ``"auto"`` first (a registered component is a choice)."""

    def __init__(self, registry: dict) -> None:
        self.registry = registry

    def __iter__(self):
        yield "auto"
        yield from self.registry

    def __contains__(self, value) -> bool:
        return value == "auto" or value in self.registry


@dataclass
class Config:
    """Everything that defines a run."""

    # data
    dataset: str = _opt(
        "mnist", "data set; 'file' reads --data-file; 'dsprites' is rendered (or DeepMind's .npz as --data-file)",
        ("mnist", "file", "dsprites"),
    )  # fmt: skip
    data_dir: str | None = _opt(None, "folder holding MNIST/raw/ (else $PYROVAE_DATA, else ~/.cache/pyrovae)")
    data_file: str | None = _opt(None, "a .pt or .npy array (N, ...) in [0, 1] for --dataset file")
    labels_file: str | None = _opt(None, "labels for --data-file (.pt or .npy, one class index per row)")
    image_size: int = _opt(64, "dsprites: image side in pixels (64 as published; 32 for CPU budgets)")
    binarize: str = _opt(
        "auto", "'dynamic': a fresh Bernoulli draw every epoch; 'auto': dynamic for Bernoulli",
        ("auto", "dynamic", "none"),
    )  # fmt: skip
    val_size: int = _opt(10000, "validation images held out of the training set")
    train_size: int | None = _opt(None, "use only the first N training images, for quick runs (None: all)")
    split_seed: int = _opt(0, "seed of the train/validation split (fixed across runs)")
    classes: list[int] | None = _opt(
        None, "train and validate on these classes only, e.g. 0,1,2 (labelled data; the test set keeps all)"
    )
    exclude_classes: list[int] | None = _opt(
        None, "leave these classes out of training and validation, e.g. 7 (the test set keeps all)"
    )
    # model
    model: str = _opt(
        "vae", "model variant (docs/adding-a-model.md); --conditional and --semi-supervised choose theirs",
        _Models(),
    )  # fmt: skip
    z_dim: int = _opt(50, "latent dimensions")
    hidden: list[int] = _opt([400], "hidden layer sizes of encoder and decoder")
    activation: str = _opt("softplus", "activation of the networks", ACTIVATIONS)
    dropout: float = _opt(
        0.0, "dropout probability on the hidden units of encoder and decoder while training"
    )
    net: str = _opt("mlp", "encoder/decoder pair", NETS)
    prior: str = _opt(
        "auto", "prior family p(z); 'auto': normal, or with --conditional vamp, a VampPrior p(z|y) per class "
        "(conditional, a Gaussian per class, with a guide that cannot score any z: iaf, delta)",
        _WithAuto(PRIORS),
    )  # fmt: skip
    guide: str = _opt("diag", "guide family q(z|x)", GUIDES)
    likelihood: str = _opt("bernoulli", "likelihood family p(x|z)", LIKELIHOODS)
    guide_scale: str = _opt("softplus", "how the guide makes its scale positive", ("softplus", "exp"))
    components: int = _opt(10, "mixture prior: number of components")
    pseudo_inputs: int = _opt(
        500, "VampPrior: number of pseudo-inputs (split over the classes with --conditional)"
    )
    flow_layers: int = _opt(2, "flow prior / IAF guide: number of autoregressive layers")
    likelihood_scale: float | None = _opt(
        None, "normal/laplace: fixed scale (None: a learned scale per pixel)"
    )
    conditional: bool = _opt(False, "condition prior, guide and decoder on the labels")
    label_layers: str = _opt(
        "auto", "where a label enters encoder and decoder: 'every' layer (FiLM, and a weight matrix per "
        "class in the decoder's first layer) or the first layer's 'input' only; 'auto': every with "
        "--conditional, input with --semi-supervised (what measured best for each)",
        ("auto", *LABEL_LAYERS),
    )  # fmt: skip
    init_bias: bool = _opt(True, "set the decoder's output bias from the mean training image")
    semi_supervised: bool = _opt(
        False, "semi-supervised VAE (Kingma M2): labels of --labeled images, the rest summed out"
    )
    labeled: int | None = _opt(
        None, "semi-supervised: training images that keep their label, balanced by class"
    )
    aux_weight: float | None = _opt(
        None, "semi-supervised: weight alpha of each labelled image's -log q(y|x); unset: 0.1*N/labeled"
    )
    labeled_batches: str = _opt(
        "mixed", "semi-supervised: 'mixed': every batch holds --batch-size unlabelled images and a share "
        "of the labelled ones; 'separate': whole batches of labelled images spread among the unlabelled "
        "ones (Pyro's example's schedule)",
        BATCHINGS,
    )  # fmt: skip
    quadrants: int | None = _opt(
        None, "structured: given quadrants of each image, to complete the rest from (1: bottom-left, 2: left "
        "half, 3: all but bottom-right)",
    )  # fmt: skip
    baseline_epochs: int = _opt(
        10, "structured: epochs of the baseline, trained alone (with --patience) before the CVAE's --epochs"
    )
    # objective
    elbo: str = _opt(
        "trace", "'trace' (Trace_ELBO), 'meanfield' (analytic KL), 'iwae' (importance-weighted bound)", ELBOS
    )
    num_particles: int = _opt(1, "samples per datum in the ELBO (vectorized); K for --elbo iwae")
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE); the maximum of a schedule")
    beta_schedule: str = _opt(
        "constant", "'linear': warm-up from 0; 'cyclical': that ramp every --warmup-epochs",
        ("constant", "linear", "cyclical"),
    )  # fmt: skip
    warmup_epochs: float = _opt(10.0, "epochs of linear warm-up, or of one cycle for 'cyclical'")
    capacity: float | None = _opt(None, "C_max in nats: train on gamma*|KL - C(t)| (Burgess et al. 2018)")
    capacity_epochs: float = _opt(10.0, "epochs for C(t) to rise from 0 to C_max")
    gamma: float = _opt(100.0, "weight of the capacity term")
    tc_beta: float | None = _opt(
        None,
        "beta-TCVAE: weight of the total correlation of q(z), the KL's other terms kept at 1 (Chen et al. 2018)",
    )
    free_bits: float | None = _opt(
        None, "free bits: floor each latent dimension's KL at this many nats (Kingma et al. 2016)"
    )
    # optimization
    epochs: int = _opt(10, "training epochs")
    batch_size: int = _opt(256, "images per step")
    lr: float = _opt(1e-3, "Adam learning rate")
    lr_schedule: str = _opt("none", "per-epoch learning-rate schedule", ("none", "cosine", "exponential"))
    lr_decay: float = _opt(0.95, "per-epoch factor for 'exponential'")
    clip_norm: float | None = _opt(None, "clip the gradient norm to this value")
    weight_decay: float = _opt(0.0, "decoupled weight decay (AdamW) on the networks' weight matrices")
    patience: int | None = _opt(None, "stop after this many epochs without a better validation --monitor")
    monitor: str = _opt(
        "elbo", "validation figure that picks best.pt and drives --patience ('accuracy': of q(y|x))",
        ("elbo", "accuracy"),
    )  # fmt: skip
    on_nan: str = _opt(
        "stop", "on a NaN/inf loss: stop, or roll back to the last good state with half the lr",
        ("stop", "rollback"),
    )  # fmt: skip
    seed: int = _opt(0, "seeds torch, Pyro and the batch order")
    device: str = _opt("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    deterministic: bool = _opt(
        False, "bit-exact resume on CUDA: deterministic kernels and a fixed cuBLAS workspace (slower on a "
        "GPU; CPU runs are deterministic already)",
    )  # fmt: skip
    step: str = _opt(
        "auto", "training step: 'graphed' replays a captured CUDA graph for full batches, reading the loss "
        "every 50 steps (on a CPU the same step runs eagerly); 'eager' reads it every step; 'auto' is graphed "
        "on one CUDA device, else eager", STEPS,
    )  # fmt: skip
    tensorboard: bool = _opt(False, "write TensorBoard event files to the run directory (needs tensorboard)")
    # evaluation at the end of training
    eval_k: int = _opt(1000, "importance samples per test image for log p(x)")
    eval_n_test: int | None = _opt(1000, "test images for the importance-sampled log p(x) (None: all)")

    def __post_init__(self) -> None:
        # --conditional and --semi-supervised are spellings of --model conditional / semisupervised
        flags = {"semisupervised": "semi_supervised", "conditional": "conditional"}
        if self.model == "vae":
            self.model = next((m for m, flag in flags.items() if getattr(self, flag)), "vae")
        if self.model in flags:
            setattr(self, flags[self.model], True)

    # -- (de)serialization ----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        try:
            d = json.loads(Path(path).read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); restore it from a copy of the run") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} holds no options (expected a JSON object); restore it from a copy")
        if (d.get("conditional") or d.get("semi_supervised")) and "label_layers" not in d:
            d["label_layers"] = "input"  # runs saved before the option existed fed the label to the input
        return cls.from_dict(d)

    @classmethod
    def from_preset(cls, name: str | None = None, **overrides) -> Config:
        """A preset's options (see :data:`PRESETS`) with ``overrides`` on top.

        >>> Config.from_preset("tutorial", epochs=3).guide_scale
        'exp'
        """
        if name is not None and name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}", "preset")
        return cls.from_dict({**PRESETS.get(name, {}), **overrides})

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> Config:
        """Refuse invalid values with a message naming the option; returns ``self``."""
        for f in dataclasses.fields(self):
            if f.metadata.get("choices") is not None:
                _choice(f.name, getattr(self, f.name), f.metadata["choices"])
        for name in ["z_dim", "epochs", "batch_size", "num_particles", "components", "pseudo_inputs",
                     "flow_layers", "val_size", "eval_k"]:  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}", name)
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be positive layer sizes, got {self.hidden}", "hidden")
        for name in ["lr", "warmup_epochs", "capacity_epochs", "gamma", "lr_decay"]:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}", name)
        for name in ["clip_norm", "likelihood_scale", "patience", "eval_n_test", "train_size"]:
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{name} must be positive, got {v}", name)
        for name in ["classes", "exclude_classes"]:
            v = getattr(self, name)
            if v is not None and (not v or min(v) < 0):
                raise ConfigError(f"{name} must be class indices 0, 1, ..., got {v}", name)
        if self.classes is not None and self.exclude_classes is not None:
            raise ConfigError("give classes (those to keep) or exclude_classes (those to drop), not both",
                              "classes")  # fmt: skip
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}", "beta")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a probability in [0, 1), got {self.dropout}", "dropout")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}", "weight_decay")
        if self.free_bits is not None:
            if self.free_bits < 0:
                raise ConfigError(f"free_bits must be >= 0 nats, got {self.free_bits}", "free_bits")
            if self.elbo == "iwae" or self.capacity is not None:
                raise ConfigError(
                    "free_bits floors the KL term of the trace or meanfield ELBO; the iwae bound and the "
                    "capacity objective have none to floor", "free_bits",
                )  # fmt: skip
        if self.capacity is not None:
            if self.capacity < 0:
                raise ConfigError(f"capacity must be >= 0 nats, got {self.capacity}", "capacity")
            if self.beta != 1 or self.beta_schedule != "constant" or self.elbo != "trace":
                raise ConfigError(
                    "capacity replaces beta: use it with beta 1, a constant beta schedule and the trace ELBO",
                    "capacity",
                )
        if self.tc_beta is not None:
            if self.tc_beta < 0:
                raise ConfigError(f"tc_beta must be >= 0, got {self.tc_beta}", "tc_beta")
            if (
                self.beta != 1
                or self.beta_schedule != "constant"
                or self.elbo != "trace"
                or self.capacity is not None
            ):
                raise ConfigError("tc_beta replaces beta: use it with beta 1, a constant beta schedule, the trace "
                                  "ELBO and no capacity", "tc_beta")  # fmt: skip
            if self.guide != "diag" or self.free_bits is not None:
                raise ConfigError("tc_beta needs the factorized guide diag and no free_bits (it splits the KL "
                                  "term per dimension of q)", "tc_beta")  # fmt: skip
        if self.elbo == "iwae":
            if self.beta != 1 or self.beta_schedule != "constant":
                raise ConfigError(
                    "the iwae objective is the importance-weighted bound, which has no beta: use beta 1 "
                    "and a constant schedule", "elbo",
                )  # fmt: skip
            if self.num_particles < 2:
                raise ConfigError("elbo iwae needs num_particles K >= 2 (K = 1 is the plain ELBO)", "elbo")
        if self.image_size != 64 and self.dataset != "dsprites":
            raise ConfigError("image_size applies only to dataset dsprites; drop it or set dataset dsprites",
                              "image_size")  # fmt: skip
        if self.dataset == "dsprites" and self.labels_file:
            raise ConfigError("dsprites has its own labels (the shape); drop labels_file", "labels_file")
        if self.dataset == "mnist" and (self.data_file or self.labels_file):
            raise ConfigError(
                "data_file was given but dataset is 'mnist': set dataset 'file' to train on the file",
                "dataset",
            )
        from .variants import MODELS

        MODELS[self.model].check(self)  # the options the model variant owns, and what it refuses
        return self

    @property
    def label_layers_used(self) -> str:
        """What ``label_layers`` builds: ``"auto"`` is ``"every"`` for a conditional VAE (its
        samples then show their label, where with ``"input"`` the decoder learns to ignore it) and
        ``"input"`` for the semi-supervised VAE (with ``"every"`` its classifier q(y|x) does not
        learn); the measurements are in ``experiments/results/README.md``."""
        if self.label_layers != "auto":
            return self.label_layers
        return "input" if self.semi_supervised else "every"

    @property
    def prior_family(self) -> str:
        """The registered prior ``prior`` names: ``"auto"`` stands for ``normal``, and with
        ``conditional`` for the class-wise VampPrior ``vamp`` (``conditional``, a Gaussian per
        class, with a guide that cannot score any z, as IAF and Delta)."""
        if self.prior != "auto":
            return self.prior
        if not self.conditional:
            return "normal"
        return "vamp" if getattr(GUIDES.get(self.guide), "scores_any_z", True) else "conditional"

    def prior_cls(self):
        return PRIORS[self.prior_family]

    def resolve_binarize(self) -> bool:
        """Whether training batches are dynamically binarized."""
        if self.binarize == "auto":
            return LIKELIHOODS[self.likelihood].needs_binary
        return self.binarize == "dynamic"


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        close = difflib.get_close_matches(str(value), list(options), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {name} {value!r}; choose from {', '.join(options)}.{hint}", name)


PRESETS: dict[str, dict] = {
    # Pyro's VAE tutorial (examples/vae/vae.py): 784-400-50 softplus MLPs, exp scale, Adam 1e-3.
    "tutorial": dict(
        z_dim=50, hidden=[400], activation="softplus", guide_scale="exp", lr=1e-3, batch_size=256
    ),
    # Burda et al. (2015), one stochastic layer: 784-200-200-50 tanh MLPs.
    "iwae": dict(z_dim=50, hidden=[200, 200], activation="tanh", guide_scale="exp", lr=1e-3, batch_size=20),
}
"""Published networks and optimizers by name (``--preset``, :meth:`Config.from_preset`): the
options each sets; any option given with it goes on top."""
