"""The ELBO objectives that are not Pyro's own, each a small subclass of a Pyro ELBO: the capacity
objective of Burgess et al. (2018), β-TCVAE (Chen et al. 2018), free bits (Kingma et al. 2016),
and the importance-weighted bound (Burda et al. 2016), which Pyro's :class:`~pyro.infer.RenyiELBO`
computes but does not offer as a differentiable loss. Which one a run trains on is chosen in
:mod:`pyrovae.objectives`.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import Independent
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from torch import Tensor
from torch.distributions import kl_divergence


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


__all__ = ["CapacityELBO", "FreeBitsELBO", "IWAE", "TCVAE", "total_correlation"]
