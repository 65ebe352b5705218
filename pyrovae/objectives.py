"""Training objectives (the schedules of β and C are in :mod:`pyrovae.schedules`).

β is an argument, not a loss: ``vae.model(x, y, beta=b)`` and ``vae.guide(x, y, beta=b)`` scale
the latent site by ``b``, so Pyro's own ELBOs give ``reconstruction - β·KL`` (β = 0 included).
Some objectives are not plain
ELBOs and are small subclasses of Pyro's: the capacity objective of Burgess et al. (2018),
β-TCVAE (Chen et al. 2018), free bits, and the importance-weighted bound, which Pyro's :class:`~pyro.infer.RenyiELBO` computes but does not
offer as a differentiable loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
from pyro.distributions import Independent
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from torch import Tensor, nn
from torch.distributions import kl_divergence

from .errors import ConfigError
from .schedules import beta_at, capacity_at, cyclical, linear_warmup  # noqa: F401 - their former home

ELBOS = ("trace", "meanfield", "iwae")
"""Choices of ``Config.elbo``: Trace_ELBO, TraceMeanField_ELBO, the IWAE bound."""


def _latent_sites(model_trace, guide_trace):
    """(model site, guide site) of every latent sample site, refusing score-function sites."""
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            guide_site = guide_trace.nodes[name]
            if not guide_site["fn"].has_rsample:
                raise NotImplementedError(
                    f"latent site {name!r} is not reparameterized; this objective needs "
                    "reparameterized latents (use Trace_ELBO for score-function gradients)"
                )
            yield site, guide_site


class _ReshapedELBO(Trace_ELBO):
    """A Trace_ELBO whose per-particle loss is reshaped by :meth:`_differentiable_loss_particle`
    (the one hook, as Pyro's ``contrib.cevae.TraceCausalEffect_ELBO``); :meth:`loss` reports the
    same objective, not the plain ELBO that ``Trace_ELBO.loss`` would compute."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()


class CapacityELBO(_ReshapedELBO):
    """Loss ``-E_q[log p(x|z)] + γ·N·|KL/N - C|`` for a batch of N data (Burgess et al. 2018),
    with KL estimated as in :class:`~pyro.infer.Trace_ELBO` (log q - log p at the guide's
    samples, all latent sites). Set :attr:`capacity` (nats per datum) as training goes on.

    Only the per-particle loss differs from Trace_ELBO's; latent sites must be reparameterized.
    """

    def __init__(self, gamma: float = 100.0, capacity: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gamma = gamma
        self.capacity = capacity

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        recon, kl, n = 0.0, 0.0, 1
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                recon = recon + site["log_prob_sum"]
                n = site["log_prob"].numel()  # data in the batch (times vectorized particles)
        for model_site, guide_site in _latent_sites(model_trace, guide_trace):
            kl = kl + guide_site["log_prob_sum"] - model_site["log_prob_sum"]
        surrogate = -recon + self.gamma * n * (kl / n - self.capacity).abs()
        return surrogate.detach(), surrogate  # no host read: a CUDA graph can hold it


class TCVAE(_ReshapedELBO):
    """β-TCVAE (Chen et al. 2018): the ELBO with the total correlation of the aggregate posterior
    weighted by ``tc_beta`` instead of 1. For a batch of M data from a set of N, with one
    ``z_i ~ q(z|x_i)`` per datum, the loss is

    ``Σ_i -log p(x_i|z_i) + [log q(z_i|x_i) - log p(z_i)] + (tc_beta - 1)·TC_i``,
    ``TC_i = log q(z_i) - Σ_d log q(z_id)``,

    with the marginals estimated by minibatch-weighted sampling (Chen et al.'s MWS):
    ``log q(z_i) ≈ logsumexp_j log q(z_i|x_j) - log(N·M)`` and likewise per dimension
    ``d``. ``tc_beta = 1`` is :class:`~pyro.infer.Trace_ELBO`. The mutual-information and
    dimension-wise KL terms keep weight 1 (α = γ = 1 in the paper); latent sites must be
    reparameterized with a factorized guide (an ``Independent`` over univariate distributions).

    :param dataset_size: N, the number of training data.
    """

    def __init__(self, tc_beta: float, dataset_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tc_beta, self.dataset_size = tc_beta, dataset_size

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        recon, kl, tc = 0.0, 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                recon = recon + site["log_prob_sum"]
        for model_site, guide_site in _latent_sites(model_trace, guide_trace):
            kl = kl + guide_site["log_prob_sum"] - model_site["log_prob_sum"]
            tc = tc + total_correlation(guide_site["fn"], guide_site["value"], self.dataset_size).sum()
        surrogate = -recon + kl + (self.tc_beta - 1) * tc
        return surrogate.detach(), surrogate  # no host read: a CUDA graph can hold it


def total_correlation(q, z: Tensor, dataset_size: int) -> Tensor:
    """Minibatch-weighted estimate of ``log q(z_i) - Σ_d log q(z_id)`` at each ``z_i`` of a batch
    (Chen et al. 2018), ``q`` the guide's distribution for the batch: batch shape
    ``(*lead, M)``, event ``(D,)``, an ``Independent`` over a univariate family.

    :returns: shape ``(*lead, M)``.
    """
    if not (isinstance(q, Independent) and q.reinterpreted_batch_ndims == 1):
        raise NotImplementedError(
            f"the total correlation needs a factorized guide (Independent over its dimensions), got {type(q).__name__}"
        )
    m = z.shape[-2]
    # z_i against every q(.|x_j): z_i moves to a new leading dim, so (*lead, M_j) broadcasts
    zi = z.movedim(-2, 0).unsqueeze(-2)  # (M_i, *lead, 1, D)
    log_q = q.base_dist.log_prob(zi)  # (M_i, *lead, M_j, D)
    const = math.log(dataset_size * m)
    log_joint = torch.logsumexp(log_q.sum(-1), dim=-1) - const  # (M_i, *lead)
    log_marginals = (torch.logsumexp(log_q, dim=-2) - const).sum(-1)  # (M_i, *lead)
    return (log_joint - log_marginals).movedim(0, -1)  # (*lead, M_i)


class FreeBitsELBO(_ReshapedELBO):
    """The ELBO with free bits (Kingma et al. 2016): for a batch of N data, the KL term of each
    latent dimension is ``N · max(λ, KL_d)`` with ``KL_d`` its average over the batch, so no
    dimension is pushed below λ nats and units cannot collapse.

    ``KL_d`` is analytic (``analytic=True``, as :class:`~pyro.infer.TraceMeanField_ELBO`) or the
    one-sample estimate ``log q - log p`` (as :class:`~pyro.infer.Trace_ELBO`), per dimension
    where q and p factorize into univariate distributions, else for the latent site as one group
    with floor ``λ · event size``. β (the site's scale) multiplies the KL term as usual. Only the
    training objective changes: evaluation reports the true ELBO.
    """

    def __init__(self, free_bits: float, analytic: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.free_bits, self.analytic = free_bits, analytic

    def _kl(self, q, p, z: Tensor) -> Tensor:
        """KL per datum and group, shape ``(*batch, groups)``."""
        factorized = isinstance(q, Independent) and isinstance(p, Independent)
        if factorized:
            q, p = q.base_dist, p.base_dist  # per dimension
        if self.analytic:
            try:
                kl = kl_divergence(q, p)
            except NotImplementedError:
                kl = q.log_prob(z) - p.log_prob(z)
        else:
            kl = q.log_prob(z) - p.log_prob(z)
        return kl if factorized else kl.unsqueeze(-1)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        recon, penalty = 0.0, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample" and site["is_observed"]:
                recon = recon + site["log_prob_sum"]
        for model_site, guide_site in _latent_sites(model_trace, guide_trace):
            q, p = guide_site["fn"], model_site["fn"]
            kl = self._kl(q, p, guide_site["value"])  # (*batch, groups)
            per_group = q.event_shape.numel() / kl.shape[-1]
            data = kl[..., 0].numel()
            mean = kl.reshape(data, -1).mean(0)  # over the batch (and particles)
            floored = torch.clamp(mean, min=self.free_bits * per_group).sum() * data
            penalty = penalty + guide_site["scale"] * floored
        surrogate = -recon + penalty
        return surrogate.detach(), surrogate  # no host read: a CUDA graph can hold it


class IWAE(RenyiELBO):
    """The importance-weighted bound of Burda et al. (2015) with ``num_particles`` samples per
    datum: :class:`~pyro.infer.RenyiELBO` with α = 0, plus the :meth:`differentiable_loss` that
    custom training loops and DDP need.

    For reparameterized latents, the gradient of ``-Σ_n log (1/K) Σ_k w_nk`` is the one
    RenyiELBO's surrogate gives; score-function latents are refused.

    A KL warm-up scales the latent sites (as β does for the ELBO), and the weights honour it, as
    Pyro's scaled log-densities do: ``log w = log p(x|z) + β (log p(z) - log q(z|x))``, the bound
    itself at β = 1.
    """

    def __init__(self, num_particles: int = 2, **kwargs) -> None:
        kwargs.setdefault("vectorize_particles", True)
        super().__init__(alpha=0.0, num_particles=num_particles, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        log_w = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            lw = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    lw = lw + torch_sum(site["log_prob"], sum_dims)
            for _, guide_site in _latent_sites(model_trace, guide_trace):
                lw = lw - torch_sum(guide_site["log_prob"], sum_dims)
            log_w.append(lw)
        if is_identically_zero(log_w[0]):
            return torch.tensor(0.0)
        # vectorized: one trace whose leading dimension holds the particles
        log_w = log_w[0] if len(log_w) == 1 and self.vectorize_particles else torch.stack(log_w)
        return -(torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum()


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
    "CapacityELBO",
    "ELBOLoss",
    "FreeBitsELBO",
    "IWAE",
    "TCVAE",
    "make_elbo",
    "beta_at",
    "linear_warmup",
    "cyclical",
    "capacity_at",
]
