"""Prior families p(z) and p(z | y).

Protocol: a prior is a :class:`~pyro.nn.PyroModule` whose ``forward(y=None)`` returns a
distribution over one latent vector (``event_shape == (z_dim,)``) with a batch shape that
broadcasts against the ``"data"`` plate: ``()`` for an unconditional prior, ``(batch,)`` when it
uses the one-hot label ``y`` of shape ``(batch, num_classes)``. Priors that cannot take a label set
``conditionable = False``; a prior that needs the label (``forward(None)`` is not defined) sets
``needs_labels = True``; a prior that needs the model's guide (the VampPrior) implements
``bind(guide)``. A prior may implement ``cached()``, a context manager within which it may reuse
work across calls made without gradients (evaluation opens it). Tensors live in buffers or
parameters so ``.to(device, dtype)`` moves them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN, PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from .distributions import DiagonalNormalMixture
from .nets import mlp


class StandardNormal(PyroModule):
    """p(z) = N(0, I)."""

    conditionable = True  # a label-free prior is a valid choice for a conditional VAE

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormal(PyroModule):
    """p(z) = N(mu, diag(sigma^2)) with learned mu and sigma."""

    conditionable = True

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.loc = PyroParam(torch.zeros(z_dim))
        self.scale = PyroParam(torch.ones(z_dim), constraint=constraints.positive)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class MixtureOfGaussians(PyroModule):
    """p(z) = sum_k pi_k N(mu_k, diag(sigma_k^2)) with K learned components."""

    conditionable = True

    def __init__(self, z_dim: int, components: int = 10) -> None:
        super().__init__()
        self.logits = PyroParam(torch.zeros(components))
        # Spread the means so the components do not start identical.
        self.locs = PyroParam(torch.randn(components, z_dim))
        self.scales = PyroParam(torch.ones(components, z_dim), constraint=constraints.positive)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        components = dist.Normal(self.locs, self.scales).to_event(1)  # batch (K,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(PyroModule):
    """p(z) = 1/K sum_k q(z | u_k): the guide evaluated at K learned pseudo-inputs.

    With ``num_classes`` it is p(z | y): the pseudo-inputs are split evenly over the classes, each
    encoded with its own label, and a datum of class y gets the mixture of its class's components
    with learned weights. ``--conditional`` uses it by default: it fits each class's aggregate
    posterior, so that z ~ p(z | y) decodes to class y (``experiments/results/conditional_samples.md``).

    References: Tomczak & Welling (2018), *VAE with a VampPrior*.
    """

    conditionable = True  # with num_classes; an instance built without them refuses labels

    def __init__(
        self, z_dim: int, x_shape: Sequence[int], pseudo_inputs: int = 500, num_classes: int = 0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conditionable = bool(num_classes)
        if num_classes:
            per_class = max(1, pseudo_inputs // num_classes)
            pseudo_inputs = per_class * num_classes
            # component j belongs to class j // per_class; members[c] are class c's components
            self.register_buffer("labels", torch.eye(num_classes).repeat_interleave(per_class, 0))
            self.register_buffer("members", torch.arange(pseudo_inputs).reshape(num_classes, per_class))
            self.logits = PyroParam(torch.zeros(pseudo_inputs))  # mixture weights within each class
        init = (0.5 + 0.05 * torch.randn(pseudo_inputs, *x_shape)).clamp(0.01, 0.99)
        self.pseudo_inputs = PyroParam(init, constraint=constraints.unit_interval)
        self._guide: list[nn.Module] = []  # a list, so the guide is not registered twice
        self._cache: list[dist.Distribution] = []  # the components, within cached()

    def bind(self, guide: nn.Module) -> None:
        if not getattr(guide, "scores_any_z", True):
            raise ValueError(
                f"the VampPrior scores z under the guide at its pseudo-inputs, which {type(guide).__name__} "
                "cannot do (it only scores its own samples, or is a point mass); use --guide diag or fullrank"
            )
        self._guide[:] = [guide]

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        q = self._cache[0] if self._cache and not torch.is_grad_enabled() else self._components()
        if not self.num_classes:
            if isinstance(q, DiagonalNormalMixture):
                return q
            if _diagonal_normal(q):  # with gradients too: matrix products, no (batch, K, D) differences
                return DiagonalNormalMixture(q.base_dist.loc, q.base_dist.scale)
            return dist.MixtureSameFamily(
                dist.Categorical(logits=self.pseudo_inputs.new_zeros(q.batch_shape)), q
            )
        if y is None:
            raise ValueError("this VampPrior is p(z | y): it needs labels y")
        idx = self.members[y.argmax(-1)]  # (batch, K / num_classes): each datum's own components
        if isinstance(q, DiagonalNormalMixture):  # cached: all K scored by matrix products, others masked
            logits = self.logits.new_full((y.shape[0], len(self.logits)), -math.inf)
            return DiagonalNormalMixture(q.loc, q.scale, logits.scatter(-1, idx, self.logits[idx]))
        base = getattr(q, "base_dist", None)
        if (
            isinstance(q, dist.Independent)
            and isinstance(base, dist.Normal)
            and q.reinterpreted_batch_ndims == 1
        ):
            # a diagonal guide: take each datum's own components (a tenth of the work of masking)
            own = dist.Normal(base.loc[idx], base.scale[idx]).to_event(1)  # batch (batch, K / classes)
            return dist.MixtureSameFamily(dist.Categorical(logits=self.logits[idx]), own)
        # any other guide: all K components, those of other classes with weight zero
        logits = self.logits.new_full((y.shape[0], len(self.logits)), -math.inf)
        logits = logits.scatter(-1, idx, self.logits[idx])  # (batch, K)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), q.expand(logits.shape))

    def _components(self) -> dist.Distribution:
        """The guide at the pseudo-inputs (with their labels): batch ``(K,)``, event ``(z_dim,)``."""
        if not self._guide:
            raise RuntimeError("VampPrior needs the model's guide: call prior.bind(guide) first")
        u = self.pseudo_inputs
        return self._guide[0](u, self.labels.to(u.dtype) if self.num_classes else None)

    @contextmanager
    def cached(self) -> Iterator[None]:
        """Within this context, calls without gradients reuse one evaluation of the guide at the
        pseudo-inputs; calls with gradients, and every call after the context, evaluate the guide
        afresh. (A diagonal-Normal guide's mixture is scored by matrix products,
        :class:`~pyrovae.distributions.DiagonalNormalMixture`, in and out of the context; with labels,
        only within it.) Nested contexts share the outer one's."""
        if self._cache:
            yield
            return
        with torch.no_grad():
            q = self._components()
            if _diagonal_normal(q):
                q = DiagonalNormalMixture(q.base_dist.loc, q.base_dist.scale)
            self._cache.append(q)
        try:
            yield
        finally:
            self._cache.clear()


def _diagonal_normal(q: dist.Distribution) -> bool:
    """Whether ``q`` is K diagonal Normals (batch ``(K,)``, event ``(D,)``), which
    :class:`~pyrovae.distributions.DiagonalNormalMixture` mixes."""
    return (isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal)
            and q.reinterpreted_batch_ndims == 1 and len(q.batch_shape) == 1)  # fmt: skip


class _AffineAutoregressive(T.AffineAutoregressive):
    """Pyro's affine autoregressive transform, whose sequential inverse (drawing from the flow
    prior) starts from zeros in the *input's* dtype: Pyro 1.9.2 starts from ``torch.zeros`` in
    the default dtype, which breaks float64 models under a float32 default."""

    def _inverse(self, y: Tensor) -> Tensor:
        # Pyro 1.9.2's loop, with the dtype of the zeros fixed.
        x = [y.new_zeros(y.shape[:-1])] * y.size(-1)
        for idx in self.arn.permutation:
            mean, log_scale = self.arn(torch.stack(x, dim=-1))
            log_scale = clamp_preserve_gradients(log_scale, self.log_scale_min_clip, self.log_scale_max_clip)
            x[idx] = (y[..., idx] - mean[..., idx]) * torch.exp(-log_scale[..., idx])
        self._cached_log_scale = log_scale
        return torch.stack(x, dim=-1)


class FlowPrior(PyroModule):
    """p(z): N(0, I) pushed through learned masked autoregressive flows.

    The transforms are stored in their inverse-autoregressive direction and applied inverted, so
    scoring the guide's samples (what the ELBO needs) takes one network pass per layer.
    """

    conditionable = True

    def __init__(self, z_dim: int, layers: int = 2, hidden: Sequence[int] | None = None) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        hidden = list(hidden or [4 * z_dim])
        self.flows = nn.ModuleList(
            _AffineAutoregressive(AutoRegressiveNN(z_dim, hidden)) for _ in range(layers)
        )
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        transforms: list = []
        for i, flow in enumerate(self.flows):
            if i:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.inv)
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, transforms)


class ConditionalNormal(PyroModule):
    """p(z | y) = N(mu(y), diag(sigma(y)^2)): a learned Gaussian per class, or, with ``hidden``
    layers, a prior network over any conditioning vector (Sohn et al. 2015's p(z | x)).

    :param z_dim: latent dimensions.
    :param num_classes: width of the conditioning vector (classes, or a flattened tensor).
    :param hidden: hidden sizes of an MLP in front of the heads; none for a per-class Gaussian.
    :param activation: activation of that MLP.
    """

    conditionable = True
    needs_labels = True  # forward(None) is undefined: refused without conditional

    def __init__(
        self, z_dim: int, num_classes: int, hidden: Sequence[int] = (), activation: str = "relu"
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("the conditional prior needs labels: train with --conditional")
        self.body = mlp([num_classes, *hidden], activation) if hidden else nn.Identity()
        width = hidden[-1] if hidden else num_classes
        # A per-class Gaussian needs no bias (one-hot rows select a column); a network does.
        self.loc = nn.Linear(width, z_dim, bias=bool(hidden))
        self.log_scale = nn.Linear(width, z_dim, bias=bool(hidden))
        # Start at N(0, I) so training begins from the unconditional model's prior.
        for layer in (self.loc, self.log_scale):
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, y: Tensor | None = None) -> dist.Distribution:
        if y is None:
            raise ValueError("the conditional prior p(z | y) needs a label y")
        h = self.body(y)
        return dist.Normal(self.loc(h), self.log_scale(h).exp()).to_event(1)  # batch (batch,)


PRIORS: dict[str, type[PyroModule]] = {
    "normal": StandardNormal,
    "learned": LearnedNormal,
    "mixture": MixtureOfGaussians,
    "vamp": VampPrior,
    "flow": FlowPrior,
    "conditional": ConditionalNormal,
}
"""Registry of prior families by command-line name."""
