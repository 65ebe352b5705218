"""Run configuration: one flat dataclass saved as ``config.json``, its checks, and presets.

Each field carries its help text and, where it has them, its choices and its domain in the
field's metadata, so the command line shows and checks them; choices of component families are
the live registries (:data:`~pyrovae.priors.PRIORS` and friends), so a registered component is a
choice. Rules that join several fields live with the part that uses them (see :meth:`Config.validate`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import data, objectives
from .errors import ConfigError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS, LABEL_LAYERS, NETS
from .priors import PRIORS
from .semisupervised import BATCHINGS
from .step import STEPS, TRACE_PAYS_FROM


def _opt(default, help: str, choices=None, domain=None):
    """A config field with its help text, choices and domain (see :func:`_check_field`); list
    defaults are copied per instance."""
    meta = {"help": help, "choices": choices, "domain": domain}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# A field's domain: (whether a value is in it, what the message says it must be). None is always
# in it (an option left unset).
POSITIVE_INT = (lambda v: v >= 1, "a positive integer")
POSITIVE = (lambda v: v > 0, "positive")
AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
NATS = (lambda v: v >= 0, ">= 0 nats")
PROBABILITY = (lambda v: 0 <= v < 1, "a probability in [0, 1)")
SIZES = (lambda v: bool(v) and min(v) >= 1, "positive layer sizes")
CLASSES = (lambda v: bool(v) and min(v) >= 0, "class indices 0, 1, ...")
SEED = (lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1")  # what NumPy, and so Pyro, is seeded with


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


#: The models a switch option also chooses: --conditional and --semi-supervised are spellings of
#: --model conditional and --model semisupervised.
_SWITCHES = {"semisupervised": "semi_supervised", "conditional": "conditional"}


@dataclass
class Config:
    """Everything that defines a run, in sections: data, model, objective, optimization,
    evaluation.

    Each field declares its help text, choices and domain, which :meth:`validate` checks field by
    field; the rules that join fields live with the part that uses them, which :meth:`validate`
    asks in turn (the section's comment names it).
    """

    # -- data; rules across fields: pyrovae.data.check_options -------------------------------------
    dataset: str = _opt(
        "mnist", "data set; 'file' reads --data-file; 'dsprites' is rendered (or DeepMind's .npz as --data-file)",
        data.DATASETS,
    )  # fmt: skip
    data_dir: str | None = _opt(None, "folder holding MNIST/raw/ (else $PYROVAE_DATA, else ~/.cache/pyrovae)")
    data_file: str | None = _opt(None, "a .pt or .npy array (N, ...) in [0, 1] for --dataset file")
    labels_file: str | None = _opt(None, "labels for --data-file (.pt or .npy, one class index per row)")
    image_size: int = _opt(64, "dsprites: image side in pixels (64 as published; 32 for CPU budgets)")
    binarize: str = _opt(
        "auto", "'dynamic': a fresh Bernoulli draw every epoch; 'auto': dynamic for Bernoulli",
        ("auto", "dynamic", "none"),
    )  # fmt: skip
    val_size: int = _opt(
        data.DEFAULT_VAL_SIZE, "validation images held out of the training set (a data file's or dSprites' validation and test "
        "splits hold at most a tenth of its images each)", domain=POSITIVE_INT,
    )  # fmt: skip
    train_size: int | None = _opt(
        None, "use only the first N training images, for quick runs (None: all)", domain=POSITIVE
    )
    split_seed: int = _opt(0, "seed of the train/validation split (fixed across runs)")
    classes: list[int] | None = _opt(
        None,
        "train and validate on these classes only, e.g. 0,1,2 (labelled data; the test set keeps all, but a conditional run is tested on these)",
        domain=CLASSES,
    )
    exclude_classes: list[int] | None = _opt(
        None,
        "leave these classes out of training and validation, e.g. 7 (the test set keeps all; a conditional run is tested without them)",
        domain=CLASSES,
    )
    # -- model; rules across fields: the variant's check (pyrovae.variants), pyrovae.build ---------
    model: str = _opt(
        "vae", "model variant (docs/adding-a-model.md); --conditional and --semi-supervised choose theirs",
        _Models(),
    )  # fmt: skip
    z_dim: int = _opt(50, "latent dimensions", domain=POSITIVE_INT)
    hidden: list[int] = _opt([400], "hidden layer sizes of encoder and decoder", domain=SIZES)
    activation: str = _opt("softplus", "activation of the networks", ACTIVATIONS)
    dropout: float = _opt(
        0.0,
        "dropout probability on the hidden units of encoder and decoder while training",
        domain=PROBABILITY,
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
    components: int = _opt(10, "mixture prior: number of components", domain=POSITIVE_INT)
    pseudo_inputs: int = _opt(
        500,
        "VampPrior: number of pseudo-inputs (split over the classes with --conditional)",
        domain=POSITIVE_INT,
    )
    flow_layers: int = _opt(2, "flow prior / IAF guide: number of autoregressive layers", domain=POSITIVE_INT)
    likelihood_scale: float | None = _opt(
        None, "normal/laplace: fixed scale (None: a learned scale per pixel)", domain=POSITIVE
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
        10, "structured: epochs of the baseline, trained alone (with --patience) before the CVAE's --epochs",
        domain=POSITIVE_INT,
    )  # fmt: skip
    # -- objective; rules across fields: pyrovae.objectives.OBJECTIVES -----------------------------
    elbo: str = _opt(
        "trace",
        "'trace' (Trace_ELBO), 'meanfield' (analytic KL), 'iwae' (importance-weighted bound)",
        objectives.ELBOS,
    )
    num_particles: int = _opt(
        1, "samples per datum in the ELBO (vectorized); K for --elbo iwae", domain=POSITIVE_INT
    )
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE); the maximum of a schedule", domain=AT_LEAST_0)
    beta_schedule: str = _opt(
        "constant", "'linear': warm-up from 0; 'cyclical': cycles of --warmup-epochs, rising over the first half of each",
        ("constant", "linear", "cyclical"),
    )  # fmt: skip
    warmup_epochs: float = _opt(
        10.0, "epochs of linear warm-up, or of one cycle for 'cyclical'", domain=POSITIVE
    )
    capacity: float | None = _opt(
        None, "C_max in nats: train on gamma*|KL - C(t)| (Burgess et al. 2018)", domain=NATS
    )
    capacity_epochs: float = _opt(10.0, "epochs for C(t) to rise from 0 to C_max", domain=POSITIVE)
    gamma: float = _opt(100.0, "weight of the capacity term", domain=POSITIVE)
    tc_beta: float | None = _opt(
        None,
        "beta-TCVAE: weight of the total correlation of q(z), the KL's other terms kept at 1 (Chen et al. 2018)",
        domain=AT_LEAST_0,
    )
    free_bits: float | None = _opt(
        None,
        "free bits: floor each latent dimension's KL at this many nats (Kingma et al. 2016)",
        domain=NATS,
    )
    # -- optimization; no rule across fields -------------------------------------------------------
    epochs: int = _opt(10, "training epochs", domain=POSITIVE_INT)
    batch_size: int = _opt(256, "images per step", domain=POSITIVE_INT)
    lr: float = _opt(1e-3, "Adam learning rate", domain=POSITIVE)
    lr_schedule: str = _opt("none", "per-epoch learning-rate schedule", ("none", "cosine", "exponential"))
    lr_decay: float = _opt(0.95, "per-epoch factor for 'exponential'", domain=POSITIVE)
    clip_norm: float | None = _opt(None, "clip the gradient norm to this value", domain=POSITIVE)
    weight_decay: float = _opt(
        0.0, "decoupled weight decay (AdamW) on the networks' weight matrices", domain=AT_LEAST_0
    )
    patience: int | None = _opt(
        None, "stop after this many epochs without a better validation --monitor (counted from the epoch "
        "that ends a linear warm-up or the capacity's rise)", domain=POSITIVE,
    )  # fmt: skip
    monitor: str = _opt(
        "elbo", "validation figure that picks best.pt and drives --patience ('accuracy': of q(y|x))",
        ("elbo", "accuracy"),
    )  # fmt: skip
    on_nan: str = _opt(
        "stop", "on a NaN/inf loss: stop, or roll back to the last good state with half the lr",
        ("stop", "rollback"),
    )  # fmt: skip
    seed: int = _opt(0, "seeds torch, Pyro and the batch order", domain=SEED)
    device: str = _opt("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    deterministic: bool = _opt(
        False, "bit-exact resume on CUDA: deterministic kernels and a fixed cuBLAS workspace (slower on a "
        "GPU; CPU runs are deterministic already)",
    )  # fmt: skip
    step: str = _opt(
        "auto", "training step: 'graphed' replays the step captured once for full batches (a CUDA graph on "
        "CUDA, a graph of tensor operations on a CPU), reading the loss every 50 steps; 'compiled' is the CPU's "
        "graphed step compiled by torch.compile (faster, after seconds of compiling); 'eager' reads the loss "
        f"every step; 'auto' is graphed in one process (on a CPU for runs of {TRACE_PAYS_FROM} steps or more), else "
        "eager",
        STEPS,
    )  # fmt: skip
    tensorboard: bool = _opt(False, "write TensorBoard event files to the run directory (needs tensorboard)")
    # -- evaluation at the end of training ---------------------------------------------------------
    eval_k: int = _opt(1000, "importance samples per test image for log p(x)", domain=POSITIVE_INT)
    eval_n_test: int | None = _opt(
        1000, "test images for the importance-sampled log p(x) (None: all)", domain=POSITIVE
    )

    def __post_init__(self) -> None:
        if self.model == "vae":
            self.model = next((m for m, flag in _SWITCHES.items() if getattr(self, flag)), "vae")
        if self.model in _SWITCHES:
            setattr(self, _SWITCHES[self.model], True)

    # -- (de)serialization -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        switch = _SWITCHES.get(d.get("model"))
        # given off, not left at its default: the model would turn it back on silently
        if switch and d.get(switch) is False:
            raise ConfigError(
                f"{switch} is off, but model {d['model']} is the model it chooses: leave it on, or use model vae",
                switch,
            )  # fmt: skip
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

    # -- checks ------------------------------------------------------------------------------------
    def validate(self) -> Config:
        """Refuse invalid values with a message naming the option; returns ``self``.

        Each field is checked against its choices and its domain; then each part checks the
        combinations of its own options: the data (:func:`pyrovae.data.check_options`), the
        objective (:func:`pyrovae.objectives.choose_objective`) and the model variant
        (:meth:`Variant.check <pyrovae.variants.base.Variant.check>`, which also refuses the
        options of other variants).
        """
        fields = dataclasses.fields(self)
        for f in fields:
            if f.metadata.get("choices") is not None:
                _choice(f.name, getattr(self, f.name), f.metadata["choices"])
        for f in fields:
            if f.metadata.get("domain") is not None:
                _check_field(f.name, getattr(self, f.name), f.metadata["domain"])
        data.check_options(self)
        objectives.choose_objective(self)
        from .variants import MODELS

        MODELS[self.model].check(self)
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
            return getattr(LIKELIHOODS[self.likelihood], "needs_binary", False)  # optional in the protocol
        return self.binarize == "dynamic"


def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed outside 0 to 2**32 - 1 (:data:`SEED`), naming the option ``name``."""
    _check_field(name, seed, SEED)


def _check_field(name: str, value, domain) -> None:
    """Refuse a value outside a field's domain (:data:`POSITIVE_INT` and friends); None is unset."""
    holds, what = domain
    if value is not None and not holds(value):
        raise ConfigError(f"{name} must be {what}, got {value}", name)


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
