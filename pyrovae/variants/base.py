"""The protocol of a model variant, and the training every variant starts from.

A variant is a class of classmethods registered in :data:`~pyrovae.variants.MODELS` under the
name ``Config.model`` takes. The run layer, :func:`~pyrovae.fit.fit`, evaluation, inspection and
the command line call only these hooks, so a new model is one module and one registry line:

- :meth:`Variant.check`: refuse options it cannot honour (its own options are checked here, once);
- :meth:`Variant.build`: the model (a :class:`~pyro.nn.PyroModule` with ``model(x, y, beta=)``
  and ``guide(x, y, beta=)``, the ``"data"`` plate, an observed site ``"x"``);
- :meth:`Variant.prepare_data`: change the data before training (hide labels, say);
- :meth:`Variant.training`: the loss, batches, schedule and per-epoch metrics (:class:`Training`);
- :meth:`Variant.test_labels`, :meth:`Variant.test_scores`: what evaluation gives the model and
  the figures it adds to ``eval.json``;
- :meth:`Variant.inputs`: what the model is given beside the data when inspected (labels, images);
- :meth:`Variant.samples`: the figure ``pyrovae sample`` and ``samples.png`` draw;
- :meth:`Variant.figures`: the variant's own inspection figures;
- :meth:`Variant.describe`: the run's model in a few words, for ``pyrovae runs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..elbos import CapacityELBO
from ..objectives import ELBOLoss, beta_at, capacity_at, describe_objective, make_elbo
from ..schedules import settled_epoch

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset, Split

#: The config's choices of the shared parts :func:`~pyrovae.build.vae_parts` builds, which a
#: variant's :attr:`Variant.parts` may leave unread.
SHARED_PARTS = ("prior", "guide", "likelihood", "net", "dropout")

#: An inspection figure: ``(file name, title, explanation)``.
Figure = tuple[str, str, str]


class Training:
    """How :func:`~pyrovae.fit.fit` trains a model: the ELBO of ``cfg.elbo`` (with capacity, free
    bits or β-TCVAE's total correlation), batches of ``perm``, and β and C from one :meth:`schedule`.

    A variant with another loss subclasses it and overrides :meth:`objective` (the Pyro ELBO) or
    :meth:`make_loss` (the whole loss module); one that logs more per epoch overrides :meth:`scores`.
    """

    #: whether validation passes the batch's labels (a semi-supervised model validates without)
    validation_labels: ClassVar[bool] = True
    #: why the training step cannot be captured as a graph (``--step graphed`` then runs it
    #: eagerly and says so), or ``None`` where it can
    uncapturable: ClassVar[str | None] = None

    def __init__(
        self, model: nn.Module, data: Dataset, cfg: Config, world: int = 1, progress: bool = False
    ) -> None:
        self.cfg, self.dataset_size = cfg, len(data.train)  # progress: for work a subclass does first
        self.elbo = self.objective(cfg)
        self.loss = self.make_loss(model, world)

    def objective(self, cfg: Config):
        """The objective :data:`~pyrovae.objectives.OBJECTIVES` chooses for ``cfg``: the Pyro ELBO
        of ``cfg.elbo``, or the capacity (C starting at 0; :meth:`schedule` raises it), free-bits
        or β-TCVAE objective."""
        capacity = None if cfg.capacity is None else 0.0
        return make_elbo(cfg.elbo, cfg.num_particles, free_bits=cfg.free_bits, tc_beta=cfg.tc_beta,
                         dataset_size=self.dataset_size, capacity=capacity, gamma=cfg.gamma)  # fmt: skip

    def make_loss(self, model: nn.Module, world: int) -> nn.Module:
        """``(x, y, beta) -> loss`` as a module."""
        return ELBOLoss(model, self.elbo, world)

    def batches(self, perm: Tensor, batch_size: int) -> list[Tensor]:
        """An epoch's order as batches of indices."""
        return list(perm.split(batch_size))

    def schedule(self, t: float) -> dict:
        """The scheduled coefficients at fractional epoch ``t``: ``beta`` (passed to the loss)
        and ``capacity`` (set on a :class:`~pyrovae.elbos.CapacityELBO`; ``""`` without)."""
        cfg = self.cfg
        beta = beta_at(cfg.beta_schedule, cfg.beta, cfg.warmup_epochs, t)
        if not isinstance(self.elbo, CapacityELBO):
            return {"beta": beta, "capacity": ""}
        capacity = capacity_at(t, cfg.capacity, cfg.capacity_epochs)
        if isinstance(self.elbo.capacity, Tensor):  # a graphed step reads it from the device
            self.elbo.capacity.fill_(capacity)
        else:
            self.elbo.capacity = capacity
        return {"beta": beta, "capacity": capacity}

    def settled(self) -> float:
        """The epoch from which :meth:`schedule` keeps its final coefficients: the end of a linear
        KL warm-up or of the capacity's rise (0 without either). Before it the loss trains another
        objective than the final one, so :func:`~pyrovae.fit.fit` neither keeps its epochs as the
        best nor counts them towards early stopping. A cyclical β never settles; every epoch counts."""
        return settled_epoch(self.cfg)  # options with a capacity always train CapacityELBO

    def coefficients_on(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Hold the scheduled coefficients the objective reads (a capacity C) as tensors on
        ``device``, which :meth:`schedule` then fills in place: a captured CUDA graph reads a
        tensor at each replay, where it would keep a float's value of the capture.

        :param dtype: the model's parameters' dtype (default: torch's), so C is not rounded to
            float32 for a float64 model, as the eager step's float is not."""
        if isinstance(self.elbo, CapacityELBO) and not isinstance(self.elbo.capacity, Tensor):
            self.elbo.capacity = torch.tensor(float(self.elbo.capacity), device=device, dtype=dtype)

    def scores(self, model: nn.Module) -> dict[str, float]:
        """Figures logged to ``metrics.csv`` after each epoch beyond the ELBO's."""
        return {}


class Variant:
    """A model variant: the default is the VAE of :class:`~pyrovae.models.VAE`."""

    #: its name in :data:`~pyrovae.variants.MODELS` (``Config.model``)
    name: ClassVar[str] = "vae"
    #: Config fields only this variant uses, refused (at a non-default value) by the others
    options: ClassVar[tuple[str, ...]] = ()
    #: how the others say where an option of this variant belongs, ending the sentence
    #: "<option> applies to ..." (``"a conditional run: add conditional"``); without one, the
    #: variant's name (``"model mine: use model mine"``)
    owner: ClassVar[str] = ""
    #: the shared parts (of :data:`SHARED_PARTS`) :meth:`build` reads from the config; ``None``:
    #: all, as :func:`~pyrovae.build.vae_parts` does. A variant that builds its own names those it
    #: reads (``()``: none), and :meth:`check` refuses the others instead of ignoring them
    parts: ClassVar[tuple[str, ...] | None] = None
    training_cls: ClassVar[type[Training]] = Training
    #: whether the model draws data from its prior alone (inspection then shows prior samples,
    #: interpolations and traversals); a model that completes given data does not
    generates: ClassVar[bool] = True

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Refuse options this variant cannot use; by default the options other variants own."""
        from . import MODELS

        defaults = type(cfg)()
        for other in MODELS.values():
            if other is cls:
                continue
            for name in other.options:
                if getattr(cfg, name) == getattr(defaults, name):
                    continue
                if cls.name == "vae":
                    owner = other.owner or f"model {other.name}: use model {other.name}"
                    _refuse(f"{name} applies to {owner}", name)
                _refuse(f"{name} belongs to model {other.name}, not to model {cls.name}: drop it", name)
        for name in SHARED_PARTS if cls.parts is not None else ():
            value = getattr(cfg, name)
            if name not in cls.parts and value != getattr(defaults, name):
                _refuse(f"model {cls.name} builds its own parts, which take no {name} {value}: drop it", name)

    @classmethod
    def build(cls, cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
        """The model of ``cfg`` for data of shape ``x_shape`` and ``num_classes`` labels (0: none);
        by default a :class:`~pyrovae.models.VAE` of :func:`~pyrovae.build.vae_parts`."""
        from ..build import vae_parts
        from ..models import VAE

        return VAE(x_shape, cfg.z_dim, **vae_parts(cfg, x_shape, 0))

    @classmethod
    def prepare_data(cls, data: Dataset, cfg: Config) -> None:
        """Change ``data`` in place before training; by default nothing."""

    @classmethod
    def training(
        cls, model: nn.Module, data: Dataset, cfg: Config, world: int = 1, progress: bool = False
    ) -> Training:
        """How :func:`~pyrovae.fit.fit` trains ``model``; ``progress``: whether the run reports
        its progress (work done before the first epoch reports too)."""
        return cls.training_cls(model, data, cfg, world, progress)

    @classmethod
    def test_labels(cls, model: nn.Module, y: Tensor | None) -> Tensor | None:
        """The labels evaluation passes to the model: a conditional model's, else none."""
        return y if getattr(model, "num_classes", 0) else None

    @classmethod
    def test_scores(cls, model: nn.Module, test: Split) -> dict:
        """Figures of the test set added to ``eval.json``; by default none."""
        return {}

    @classmethod
    def inputs(cls, model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor | None:
        """The ``y`` the model is given with data ``x`` (labels ``y``) when its data are
        reconstructed and inspected: a conditional model's labels, else none."""
        return y if getattr(model, "num_classes", 0) else None

    @classmethod
    def samples(cls, run, path, n: int | None = None, label: int | None = None, seed: int = 0):
        """Write ``pyrovae sample``'s figure of ``run`` to ``path``: ``n`` images from the model, of
        class ``label`` or one row per trained class for a conditional model."""
        from .. import plots
        from ..data import trained_classes

        cfg = run.config  # a conditional run draws the classes it was trained on
        classes = trained_classes(run.model.num_classes, cfg.classes, cfg.exclude_classes)
        try:
            return plots.sample_grid(run.model, path, n, label, seed, classes)
        except ValueError as e:
            _refuse(str(e), "label")

    @classmethod
    def figures(cls, model: nn.Module, test: Split, out, add: Callable[[str, str, str], None]) -> None:
        """Write the variant's own inspection figures to the folder ``out`` and ``add`` each."""

    @classmethod
    def describe(cls, cfg: Config) -> str:
        """The model of a run in a few words (``pyrovae runs``): its prior, guide, likelihood and z."""
        return f"{cfg.prior_family}/{cfg.guide}/{cfg.likelihood} z{cfg.z_dim}"

    @classmethod
    def describe_objective(cls, cfg: Config) -> str:
        """What a run of this variant trains on, in a few words (``pyrovae runs``); by default
        :func:`~pyrovae.objectives.describe_objective`."""
        return describe_objective(cfg)


def _refuse(message: str, option: str):
    from ..config import ConfigError

    raise ConfigError(message, option)


def variant_of(model: nn.Module) -> type[Variant]:
    """The variant a model belongs to (its ``variant`` attribute; the VAE's otherwise)."""
    from . import MODELS

    return MODELS[getattr(model, "variant", "vae")]


__all__ = ["Variant", "Training", "Figure", "variant_of"]
