"""From a :class:`~pyrovae.config.Config` to objects: the model a config describes, and the
device it names.

A component says which options it takes: by default the options whose names its constructor
accepts are passed (see :func:`construct`); a component may instead define a classmethod
``from_config(cfg, **context)``. So a prior, guide or likelihood written to the protocol in
:mod:`pyrovae.priors`, :mod:`pyrovae.guides` or :mod:`pyrovae.likelihoods` and added to its
registry trains from a config with no edit here.
"""

from __future__ import annotations

import inspect

import torch

from .config import Config, ConfigError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .nets import NETS
from .priors import PRIORS


def construct(cls, *args, **options):
    """``cls(*args, **options)``, passing only the options its constructor accepts (all of them if
    it takes ``**kwargs``); ``cls.from_config(*args, **options)`` if it defines one."""
    if hasattr(cls, "from_config"):
        return cls.from_config(*args, **options)
    return cls(*args, **{k: v for k, v in options.items() if _takes(cls, k)})


def _takes(cls, name: str) -> bool:
    """Whether :func:`construct` passes ``cls`` the option ``name`` (or cannot tell: ``from_config``)."""
    if cls is None or hasattr(cls, "from_config"):
        return True
    params = inspect.signature(cls).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def unused_options(cfg: Config, given) -> list[tuple[str, str]]:
    """Of the option names ``given``, those ``cfg``'s run does not read, each with what would read
    it: a schedule's length without the schedule, a component's option that the chosen component
    does not take (``components`` with the normal prior, say), where a label enters without a
    label. Only what is certain is named; a model variant that builds its own parts may ignore more.
    """
    prior, guide = PRIORS.get(cfg.prior_family), GUIDES.get(cfg.guide)
    point = getattr(guide, "point_estimate", False)
    # model structured builds its own q(z|x,c) (softplus scale), whatever guide_scale says
    scale_read = _takes(guide, "scale") and cfg.model != "structured"
    scale_reader = ("a model whose guide is --guide's (--model structured's q(z|x,c) is its own)"
                    if cfg.model == "structured" else "a guide that takes it (--guide diag, fullrank or iaf)")  # fmt: skip
    rules = {
        "warmup_epochs": (cfg.beta_schedule != "constant", "a β schedule (--beta-schedule linear or cyclical)"),
        "capacity_epochs": (cfg.capacity is not None, "--capacity"),
        "gamma": (cfg.capacity is not None, "--capacity"),
        "lr_decay": (cfg.lr_schedule == "exponential", "--lr-schedule exponential"),
        "components": (_takes(prior, "components"), "a prior that takes it (--prior mixture)"),
        "pseudo_inputs": (_takes(prior, "pseudo_inputs"), "a prior that takes it (--prior vamp)"),
        "flow_layers": (_takes(prior, "layers") or _takes(guide, "layers"), "--prior flow or --guide iaf"),
        "likelihood_scale": (_takes(LIKELIHOODS.get(cfg.likelihood), "scale"),
                             "a likelihood that takes it (--likelihood normal or laplace)"),
        "guide_scale": (scale_read, scale_reader),
        "label_layers": (cfg.conditional or cfg.semi_supervised, "a model with a label (--conditional or "
                         "--semi-supervised)"),
        # a point estimate draws nothing: K copies of it are one particle, and it has no log p(x) to sample
        "num_particles": (not point, "a guide that samples (not --guide delta)"),
        "eval_k": (not point, "a guide that samples (not --guide delta; an autoencoder has no log p(x))"),
    }  # fmt: skip
    return [(name, what) for name, (used, what) in rules.items() if name in given and not used]


def build_model(cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0):
    """The model a config describes, for data of shape ``x_shape``: the variant
    ``cfg.model`` names builds it (see :data:`~pyrovae.variants.MODELS`); the VAE's components
    from the options :func:`vae_parts` lists."""
    from .variants import MODELS

    try:
        model = MODELS[cfg.model].build(cfg, tuple(x_shape), num_classes)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None
    model.variant = cfg.model
    return model


def vae_parts(cfg: Config, x_shape: tuple[int, ...], k: int = 0) -> dict:
    """The parts of a :class:`~pyrovae.models.VAE` a config describes, conditioned on ``k``
    classes (0: none): ``prior``, ``guide``, ``likelihood``, ``decoder``, ``num_classes``.

    Options offered to the components (each takes those its constructor names): networks get
    ``label_layers`` and ``dropout`` (when it is not 0, which a user's network must then accept);
    guides ``scale`` (``cfg.guide_scale``) and ``layers``; priors ``x_shape``, ``components``,
    ``pseudo_inputs``, ``layers`` and ``num_classes``; likelihoods ``scale``
    (``cfg.likelihood_scale``). Guides, priors and likelihoods also get ``cfg``; networks only the
    options above. The prior is ``cfg.prior_family``
    (what ``prior="auto"`` stands for).
    """
    Encoder, Decoder = NETS[cfg.net]
    nets = net_options(cfg)
    encoder = construct(Encoder, x_shape, cfg.hidden, cfg.activation, k, **nets)
    decoder = construct(Decoder, x_shape, cfg.z_dim, cfg.hidden, cfg.activation, k, **nets)
    guide = construct(GUIDES[cfg.guide], encoder, cfg.z_dim, cfg=cfg, scale=cfg.guide_scale,
                      layers=cfg.flow_layers)  # fmt: skip
    prior = construct(cfg.prior_cls(), cfg.z_dim, cfg=cfg, x_shape=x_shape, components=cfg.components,
                      pseudo_inputs=cfg.pseudo_inputs, layers=cfg.flow_layers, num_classes=k)  # fmt: skip
    likelihood = construct(LIKELIHOODS[cfg.likelihood], x_shape, cfg=cfg, scale=cfg.likelihood_scale)
    return dict(prior=prior, guide=guide, likelihood=likelihood, decoder=decoder, num_classes=k)


def net_options(cfg: Config) -> dict:
    """The options every network of ``cfg.net`` gets: ``label_layers``, and ``dropout`` when set."""
    return dict(label_layers=cfg.label_layers_used, **_net_options(cfg, *NETS[cfg.net]))


def _net_options(cfg: Config, *nets) -> dict:
    """``dropout`` for networks whose constructors take it; a user's pair that does not may only
    be used without dropout."""
    if not cfg.dropout:
        return {}
    for cls in nets:
        if "dropout" not in inspect.signature(cls).parameters:
            raise ConfigError(
                f"net {cfg.net}: {cls.__name__} takes no dropout argument; give it a keyword `dropout` "
                "or train without dropout", "dropout",
            )  # fmt: skip
    return {"dropout": cfg.dropout}


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without it is an error; ``cpu:N`` is the
    CPU. Any case is accepted (``CPU``), as for every choice on the command line."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", "device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name} asks for CUDA, but no CUDA device is available; use cpu", "device"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name}: only {torch.cuda.device_count()} CUDA device(s) present", "device"
            )
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N", "device")
    else:
        device = torch.device("cpu")  # cpu:N is the one CPU device; torch.load cannot map onto "cpu:0"
    return device


def run_device(name: str) -> torch.device:
    """The device ``train`` would use for a run saved with device option ``name``, on this machine:
    that device where it exists, else the CPU (a run trained on a GPU opens on a laptop), so the
    commands that use a trained run (``evaluate``, ``sample``, ``score``, ...) compute where
    training did and repeat its figures."""
    try:
        return resolve_device(name)
    except ConfigError:
        if name.lower() == "cpu" or not name.lower().startswith("cuda"):
            raise
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
