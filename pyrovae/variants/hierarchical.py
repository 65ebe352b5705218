"""``--model hierarchical``: a VAE with two stochastic layers (Burda et al. 2015, section 5).

Generative story, for each datum ``n`` in the ``"data"`` plate::

    z2_n ~ N(0, I)                                   # site "z2", z_dim dimensions
    z1_n ~ N(mu(z2_n), diag sigma(z2_n)^2)           # site "z1", 2 * z_dim: p(z1 | z2)
    x_n  ~ p(x | decoder(z1_n))                      # site "x", observed

and the guide ``z1_n ~ q(z1 | x_n)``, ``z2_n ~ q(z2 | z1_n)``; both latent sites are scaled by β.
The networks between x and z1 have the ``hidden`` sizes, those between z1 and z2 half of them:
with ``--preset iwae`` (``z_dim`` 50, two tanh layers of 200) that is Burda et al.'s
x -> 200 -> 200 -> z1 (100) -> 100 -> 100 -> z2 (50).

Everything else is the package's: Trace_ELBO, the importance-weighted bound and evaluation work
over the two sites as over one. The one loss of its own is the mean-field ELBO: the analytic KL
of z1 is not the ELBO's term (p(z1 | z2) depends on z2, which the guide draws after z1), so
:class:`LayerwiseMeanField_ELBO` takes it analytically only at z2.

References: Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn
from torch.distributions import kl_divergence

from ..elbos import _ReshapedELBO
from ..guides import DiagonalNormal
from ..likelihoods import Bernoulli, Likelihood
from ..models import VAE, _num_data, _scaled
from ..nets import MLPDecoder, MLPEncoder
from ..objectives import choose_objective
from ..priors import ConditionalNormal, StandardNormal
from ..sites import analytic_kl_is_exact, latent_names
from .base import Training, Variant, _refuse

if TYPE_CHECKING:
    from ..config import Config

_instances = itertools.count()


class HierarchicalVAE(PyroModule):
    """p(z2) p(z1 | z2) p(x | z1) with the guide q(z1 | x) q(z2 | z1) (see the module docstring).

    :param x_shape: shape of one datum.
    :param z_dim: dimensions of the top layer z2; z1 has twice as many.
    :param hidden: hidden sizes between x and z1; those between z1 and z2 are half as wide.
    :param likelihood: p(x | z1)'s family (see :mod:`pyrovae.likelihoods`); default Bernoulli.
    :param guide_scale: how q(z1 | x) makes its scale positive (``"exp"`` or ``"softplus"``).

    >>> import torch
    >>> m = HierarchicalVAE((1, 4, 4), z_dim=2, hidden=(8,))
    >>> loss = pyro.infer.Trace_ELBO().loss(m.model, m.guide, torch.ones(3, 1, 4, 4))
    >>> m.encode(torch.ones(3, 1, 4, 4)).event_shape  # q(z1 | x)
    torch.Size([4])
    """

    variant = "hierarchical"
    num_classes = 0  # unconditional: no label, no conditioning tensor
    condition_shape = None

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int = 50,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        likelihood: Likelihood | None = None,
        guide_scale: str = "exp",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"hvae{next(_instances)}")
        self.x_shape, self.beta = tuple(x_shape), 1.0
        z1, upper = 2 * z_dim, [max(1, h // 2) for h in hidden]
        self.z_dim, self.z_dims = z1, {"z1": z1, "z2": z_dim}  # z_dim: the code encode() gives
        self.top = StandardNormal(z_dim)  # p(z2)
        self.middle = ConditionalNormal(z1, z_dim, upper, activation)  # p(z1 | z2)
        self.decoder = MLPDecoder(x_shape, z1, hidden, activation)
        self.likelihood = likelihood if likelihood is not None else Bernoulli(x_shape)
        self.q_z1 = DiagonalNormal(MLPEncoder(x_shape, hidden, activation), z1, guide_scale)  # q(z1 | x)
        self.q_z2 = ConditionalNormal(z_dim, z1, upper, activation)  # q(z2 | z1)

    @pyro_method
    def model(self, x: Tensor | None = None, y: Tensor | None = None, *, batch_size: int | None = None,
              beta: float | None = None) -> Tensor:  # fmt: skip
        """p(z2) p(z1 | z2) p(x | z1); with ``x=None`` it generates ``batch_size`` data.

        :param beta: scale of both latent sites' densities (default ``self.beta``, 1)."""
        n = _num_data(x, None, batch_size)
        like = x if x is not None else self._reference()
        with pyro.plate("data", n, device=like.device):
            with _scaled(self.beta if beta is None else beta):
                z2 = pyro.sample("z2", self.top())  # (*lead, batch, z_dim)
                z1 = pyro.sample("z1", self.middle(z2))  # (*lead, batch, 2 z_dim)
            return pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)

    @pyro_method
    def guide(self, x: Tensor, y: Tensor | None = None, *, batch_size: int | None = None,
              beta: float | None = None) -> Tensor:  # fmt: skip
        """q(z1 | x) q(z2 | z1); ``beta`` as in :meth:`model`."""
        with pyro.plate("data", x.shape[0], device=x.device):
            with _scaled(self.beta if beta is None else beta):
                z1 = pyro.sample("z1", self.q_z1(x))
                return pyro.sample("z2", self.q_z2(z1))

    @pyro_method
    def encode(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        """q(z1 | x): the code of a datum, batch shape ``(batch,)``."""
        return self.q_z1(x)

    def _reference(self) -> Tensor:
        return next(t for t in self.parameters() if t.is_floating_point())

    init_output_bias = VAE.init_output_bias  # p(x | z1) starts at the mean datum


class LayerwiseMeanField_ELBO(_ReshapedELBO):
    """The ELBO with the analytic KL at every latent site where it is the ELBO's term (its prior's
    parents drawn before it in the guide: z2 here, as :class:`~pyro.infer.TraceMeanField_ELBO`
    does), and ``log p - log q`` at the sampled value elsewhere (z1, whose prior p(z1 | z2)
    depends on a z2 the guide draws from z1). The β of the guide site scales its KL; :meth:`loss`
    reports this objective too."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        model_order, guide_order = latent_names(model_trace), latent_names(guide_trace)
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
            elif analytic_kl_is_exact(name, model_order, guide_order):
                q = guide_trace.nodes[name]
                elbo = elbo - (q["scale"] * kl_divergence(q["fn"], site["fn"])).sum()
            else:
                elbo = elbo + site["log_prob_sum"] - guide_trace.nodes[name]["log_prob_sum"]
        return -elbo.detach(), -elbo  # no host read: a captured step can hold it


class HierarchicalTraining(Training):
    """The package's objectives, with :class:`LayerwiseMeanField_ELBO` for ``--elbo meanfield``."""

    def objective(self, cfg: Config):
        if choose_objective(cfg) == "meanfield":  # the plain mean-field ELBO: analytic KL where it is exact
            n = cfg.num_particles
            return LayerwiseMeanField_ELBO(num_particles=n, vectorize_particles=n > 1, max_plate_nesting=1)
        return super().objective(cfg)


class Hierarchical(Variant):
    """``--model hierarchical``: :class:`HierarchicalVAE` built from ``z_dim`` (z2; z1 is twice
    that), ``hidden``, ``activation``, ``likelihood`` and ``guide_scale``."""

    name = "hierarchical"
    training_cls = HierarchicalTraining

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        fixed = {"prior": ("auto", "normal"), "guide": ("diag",), "net": ("mlp",)}
        for option, allowed in fixed.items():
            if getattr(cfg, option) not in allowed:
                _refuse(f"model hierarchical has its own p(z2) p(z1|z2), q(z1|x) q(z2|z1) and MLPs: drop "
                        f"{option} {getattr(cfg, option)}", option)  # fmt: skip
        if cfg.dropout:
            _refuse("model hierarchical has no dropout; drop dropout", "dropout")
        if cfg.tc_beta is not None:
            _refuse("model hierarchical cannot use tc_beta: β-TCVAE estimates q(z) from q(z|x_j) of each datum "
                    "(Chen et al. 2018), while z2's posterior is q(z2|z1) at a sampled z1; drop tc_beta",
                    "tc_beta")  # fmt: skip
        if cfg.free_bits is not None and cfg.elbo == "meanfield":
            _refuse("model hierarchical: free_bits with the meanfield ELBO would take z1's KL analytically, "
                    "which is not its ELBO term; use elbo trace", "free_bits")  # fmt: skip

    @classmethod
    def build(cls, cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
        from ..build import construct
        from ..likelihoods import LIKELIHOODS

        likelihood = construct(LIKELIHOODS[cfg.likelihood], x_shape, cfg=cfg, scale=cfg.likelihood_scale)
        return HierarchicalVAE(x_shape, cfg.z_dim, cfg.hidden, cfg.activation, likelihood, cfg.guide_scale)

    @classmethod
    def describe(cls, cfg: Config) -> str:
        return f"{cfg.likelihood} z1 {2 * cfg.z_dim} z2 {cfg.z_dim}"  # β: the objective column's
