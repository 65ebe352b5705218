"""Training objectives: which one the options ask for, what they refuse, and the loss module a
torch optimizer trains (the schedules of β and C are in :mod:`pyrovae.schedules`).

β is an argument, not a loss: ``vae.model(x, y, beta=b)`` and ``vae.guide(x, y, beta=b)`` scale
the latent site by ``b``, so Pyro's own ELBOs give ``reconstruction - β·KL`` (β = 0 included).
The objectives that are not plain ELBOs (capacity, β-TCVAE, free bits, the importance-weighted
bound) are small subclasses of Pyro's, in :mod:`pyrovae.elbos`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import Tensor, nn

from .elbos import IWAE, TCVAE, CapacityELBO, FreeBitsELBO, total_correlation  # noqa: F401 - their former home
from .errors import ConfigError
from .schedules import beta_at, capacity_at, cyclical, linear_warmup  # noqa: F401 - their former home

ELBOS = ("trace", "meanfield", "iwae")
"""Choices of ``Config.elbo``: Trace_ELBO, TraceMeanField_ELBO, the IWAE bound."""


class Objective(NamedTuple):
    """A row of :data:`OBJECTIVES`: the option that asks for an objective, the combinations of
    options it refuses, and its Pyro loss."""

    #: the :class:`~pyrovae.config.Config` field that asks for it: ``elbo`` naming it, or any other
    #: field set (not None); a refusal names this field
    option: str
    #: ``(options, **particles) -> ELBO``, ``particles`` the keyword arguments of every Pyro ELBO
    build: Callable[..., Any]
    #: ``(refused when, message)``, checked in order
    refuses: tuple[tuple[Callable[[Any], bool], str], ...] = ()


def _beta_scaled(o) -> bool:
    """Whether the options scale or schedule the KL term (β ≠ 1, or a β schedule)."""
    return o.beta != 1 or o.beta_schedule != "constant"


def _tcvae(o, **particles):
    if o.dataset_size is None:
        raise ValueError("the TCVAE objective needs dataset_size, the number of training data")
    return TCVAE(o.tc_beta, o.dataset_size, **particles)


# fmt: off
OBJECTIVES: dict[str, Objective] = {
    # Objectives that reshape the ELBO's KL term, each asked for by its own option. Each refuses
    # the others, so the options ask for one at most and no precedence among them is needed.
    "free_bits": Objective(
        "free_bits",
        lambda o, **particles: FreeBitsELBO(o.free_bits, analytic=o.elbo == "meanfield", **particles),
        refuses=(
            (lambda o: o.elbo == "iwae" or o.capacity is not None,
             "free_bits floors the KL term of the trace or meanfield ELBO; the iwae bound and the capacity "
             "objective have none to floor"),
        ),
    ),
    "capacity": Objective(
        "capacity",
        lambda o, **particles: CapacityELBO(o.gamma, o.capacity, **particles),
        refuses=(
            (lambda o: _beta_scaled(o) or o.elbo != "trace",
             "capacity replaces beta: use it with beta 1, a constant beta schedule and the trace ELBO"),
        ),
    ),
    "tc_beta": Objective(
        "tc_beta",
        _tcvae,
        refuses=(
            (lambda o: _beta_scaled(o) or o.elbo != "trace" or o.capacity is not None,
             "tc_beta replaces beta: use it with beta 1, a constant beta schedule, the trace ELBO and no "
             "capacity"),
            (lambda o: o.guide not in (None, "diag") or o.free_bits is not None,
             "tc_beta needs the factorized guide diag and no free_bits (it splits the KL term per dimension "
             "of q)"),
        ),
    ),
    # The ELBOs ``elbo`` names, built when no option above is set.
    "trace": Objective("elbo", lambda o, **particles: Trace_ELBO(**particles)),
    "meanfield": Objective("elbo", lambda o, **particles: TraceMeanField_ELBO(**particles)),
    "iwae": Objective(
        "elbo",
        lambda o, **particles: IWAE(**particles),
        refuses=(
            (lambda o: o.beta != 1,
             "the iwae objective is the importance-weighted bound: it takes a KL warm-up (a linear or "
             "cyclical beta schedule up to beta 1) but no other beta: use beta 1"),
            (lambda o: o.num_particles < 2, "elbo iwae needs num_particles K >= 2 (K = 1 is the plain ELBO)"),
        ),
    ),
}
# fmt: on
"""The training objectives, in the order their refusals are checked: which option asks for each,
what it refuses, how it is built. :func:`choose_objective` reads it for both
:meth:`Config.validate <pyrovae.config.Config.validate>` and :func:`make_elbo`, so a combination is
refused by both or by neither, and the objective built is the one the options ask for."""


def choose_objective(options) -> str:
    """The name in :data:`OBJECTIVES` of the objective ``options`` ask for, refusing the
    combinations an objective cannot honour.

    :param options: a :class:`~pyrovae.config.Config`, or any object with its fields ``elbo``,
        ``num_particles``, ``beta``, ``beta_schedule``, ``free_bits``, ``capacity``, ``tc_beta`` and
        ``guide`` (``None``: not known, not checked).
    :raises ConfigError: naming the option at fault.

    >>> from pyrovae.config import Config
    >>> choose_objective(Config(elbo="meanfield", free_bits=0.5))
    'free_bits'
    """
    if options.elbo not in ELBOS:
        raise ConfigError(f"unknown ELBO {options.elbo!r}; choose from {', '.join(ELBOS)}", "elbo")
    asked = [
        name
        for name, row in OBJECTIVES.items()
        if (options.elbo == name if row.option == "elbo" else getattr(options, row.option) is not None)
    ]
    for name in asked:
        for refused, message in OBJECTIVES[name].refuses:
            if refused(options):
                raise ConfigError(message, OBJECTIVES[name].option)
    reshaping = [name for name in asked if name not in ELBOS]
    if len(reshaping) > 1:  # a row that forgot to refuse another
        raise ConfigError(f"{' and '.join(reshaping)} are two objectives: give one of them", reshaping[0])
    return reshaping[0] if reshaping else options.elbo


def describe_objective(options) -> str:
    """What a run trains on, in a few words: the objective :func:`choose_objective` picks, with its
    particles (when more than one), β and its schedule, and the objective's own coefficients.

    >>> from pyrovae.config import Config
    >>> describe_objective(Config(elbo="iwae", num_particles=5)), describe_objective(Config(beta=4.0))
    ('iwae k=5', 'trace β=4')
    >>> describe_objective(Config(elbo="meanfield", beta_schedule="linear", warmup_epochs=10, free_bits=0.5))
    'meanfield β=1 (linear over 10 epochs), free bits λ=0.5'
    """
    name = choose_objective(options)
    if name == "capacity":
        return f"capacity C={options.capacity:g} over {options.capacity_epochs:g} epochs γ={options.gamma:g}"
    if name == "tc_beta":
        return f"β-TCVAE β={options.tc_beta:g}"
    kind = f"{options.elbo} k={options.num_particles}" if options.num_particles > 1 else options.elbo
    if name == "iwae":  # β = 1: the bound itself, and a schedule its warm-up
        return kind + (f" (warm-up {options.beta_schedule} over {options.warmup_epochs:g} epochs)"
                       if options.beta_schedule != "constant" else "")  # fmt: skip
    text = f"{kind} β={options.beta:g}"
    if options.beta_schedule != "constant":
        text += f" ({options.beta_schedule} over {options.warmup_epochs:g} epochs)"
    return text + (f", free bits λ={options.free_bits:g}" if name == "free_bits" else "")


def make_elbo(
    kind: str = "trace",
    num_particles: int = 1,
    max_plate_nesting: int = 1,
    free_bits: float | None = None,
    tc_beta: float | None = None,
    dataset_size: int | None = None,
    capacity: float | None = None,
    gamma: float = 100.0,
):
    """The Pyro loss for ``Config.elbo`` (``trace``, ``meanfield`` or ``iwae``), particles vectorized.

    ``iwae`` is :class:`IWAE` with ``num_particles`` samples; ``capacity`` (C in nats, at its start)
    with ``gamma`` gives a :class:`CapacityELBO`; ``free_bits`` λ a :class:`FreeBitsELBO` (with the
    analytic KL for ``meanfield``); ``tc_beta`` with ``dataset_size`` a :class:`TCVAE`. The
    objective and the combinations refused are those of :data:`OBJECTIVES`, as for
    :meth:`Config.validate <pyrovae.config.Config.validate>` (which also knows β and the guide). The
    model's plate nesting is passed so Pyro need not guess it (the ``"data"`` plate, plus one for
    vectorized particles).

    :raises ConfigError: for a combination :data:`OBJECTIVES` refuses.
    """
    options = SimpleNamespace(
        elbo=kind, num_particles=num_particles, beta=1.0, beta_schedule="constant", guide=None,
        free_bits=free_bits, capacity=capacity, gamma=gamma, tc_beta=tc_beta, dataset_size=dataset_size,
    )  # fmt: skip
    particles = dict(num_particles=num_particles, vectorize_particles=num_particles > 1,
                     max_plate_nesting=max_plate_nesting)  # fmt: skip
    return OBJECTIVES[choose_objective(options)].build(options, **particles)


class ELBOLoss(nn.Module):
    """``elbo.differentiable_loss(vae.model, vae.guide, x, y, beta=β)`` as a module, so a torch
    optimizer (and DDP) can train a VAE as Pyro's custom-loop recipe does.

    The model's parameters go through Pyro's parameter store as in any Pyro program (each
    model has its own names there, so two models never share a parameter).

    :param world: processes under DDP; each rank's loss is multiplied by it, so DDP's averaged
        gradient is the gradient of the global batch's sum, as one process would compute it.
    """

    def __init__(self, vae: nn.Module, elbo, world: int = 1) -> None:
        super().__init__()
        self.vae, self.elbo, self.world = vae, elbo, world

    def forward(self, x: Tensor, y: Tensor | None = None, beta: float = 1.0) -> Tensor:
        loss = self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x, y, beta=beta)
        return loss if self.world == 1 else self.world * loss


__all__ = [
    "OBJECTIVES",
    "Objective",
    "choose_objective",
    "describe_objective",
    "ELBOLoss",
    "make_elbo",
    "beta_at",
    "linear_warmup",
    "cyclical",
    "capacity_at",
]
