"""``--model structured --quadrants N``: the structured-output CVAE of Sohn et al. (2015), the task
of Pyro's CVAE tutorial: complete an image from the ``N`` quadrants of it that are given.

Generative story, for each image ``x_n`` in the ``"data"`` plate, its pixels split by the mask
``given`` (:func:`~pyrovae.structured.quadrant_mask`)::

    c_n  = given * x_n + (1 - given) * sigmoid(baseline(hide(x_n)))   # the condition (no gradient)
    z_n  ~ p(z | c_n)                                                 # prior network, site "z"
    x_n  ~ p(x | z_n, c_n), scored on the hidden pixels only          # site "x", observed

with the guide ``z_n ~ q(z | x_n, c_n)``. One :class:`StructuredCVAE` holds both networks: the
deterministic baseline, whose guess fills the hidden pixels of the condition, and the CVAE of
:func:`~pyrovae.structured.structured_cvae`. The condition is made from the image itself, so the
program takes ``x`` alone (``y``, when given, is an image whose given pixels condition instead:
how :func:`~pyrovae.posterior.sample_prior` completes test images).

One run trains both at once (:class:`StructuredTraining`): the loss is the CVAE's −ELBO plus the
baseline's masked negative log-likelihood, and the baseline's guess enters the condition
detached, so each network's gradient is that of its own loss; the best epoch is chosen by the
CVAE's validation ELBO. The ELBO, log p(x) and every figure of ``eval.json`` are the CVAE's:
``log p(x_hidden | x_given)``, in nats per image over the hidden pixels; ``test_baseline_nll`` is
the baseline's −log p(x_hidden | hide(x)).

References: K. Sohn, H. Lee, X. Yan, "Learning Structured Output Representation using Deep
Conditional Generative Models", NeurIPS 2015; Pyro's tutorial ``examples/cvae``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from ..likelihoods import Likelihood
from ..objectives import ELBOLoss
from ..structured import BaselineNet, hide, quadrant_mask, structured_cvae
from .base import Training, Variant, _refuse

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset, Split

_instances = itertools.count()


class StructuredCVAE(PyroModule):
    """The baseline and the CVAE of a structured-output model (see the module docstring).

    :param x_shape: shape of one image, ``(C, H, W)``.
    :param given: boolean mask of the given pixels, broadcastable to ``x_shape``.
    :param z_dim, hidden, activation, likelihood: the CVAE's (see
        :func:`~pyrovae.structured.structured_cvae`); the baseline has the same hidden sizes.
    :param cvae: a CVAE of one's own instead (a :class:`~pyrovae.models.VAE` conditioned on a
        tensor of ``x_shape``, with a masked likelihood), e.g. Pyro's tutorial's wiring.
    :param baseline: a baseline network of one's own (image with hidden pixels marked -> logits).

    >>> import pyro, torch
    >>> m = StructuredCVAE((1, 4, 4), quadrant_mask(2, 4, 4), z_dim=2, hidden=(8,))
    >>> x = torch.ones(3, 1, 4, 4)
    >>> loss = pyro.infer.Trace_ELBO().loss(m.model, m.guide, x)  # the condition comes from x
    >>> bool(torch.equal(m.condition(x)[:, :, :, :2], x[:, :, :, :2]))  # given pixels as they are
    True
    """

    variant = "structured"
    num_classes = 0  # no label: the condition is made from the image
    condition_shape = None

    def __init__(
        self,
        x_shape: Sequence[int],
        given: Tensor,
        z_dim: int = 200,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        likelihood: Likelihood | None = None,
        cvae: nn.Module | None = None,
        baseline: nn.Module | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"structured{next(_instances)}")
        self.x_shape, self.beta = tuple(x_shape), 1.0
        self.register_buffer("given", given.bool().expand(self.x_shape).clone())
        self.baseline = baseline if baseline is not None else BaselineNet(x_shape, hidden, activation)
        self.cvae = cvae if cvae is not None else structured_cvae(x_shape, given, z_dim, hidden, activation,
                                                                  likelihood)  # fmt: skip
        self.z_dim = self.cvae.z_dim

    @property
    def likelihood(self) -> Likelihood:
        """p(x | z, c), masked to the hidden pixels: the CVAE's, by which the baseline is scored too."""
        return self.cvae.likelihood

    @torch.no_grad()
    def condition(self, x: Tensor) -> Tensor:
        """``c``: the given pixels of ``x``, the baseline's guess (its mean) elsewhere; no gradient."""
        guess = self.likelihood.mean(self.baseline(hide(x, self.given)))
        return torch.where(self.given, x, guess)

    def _source(self, x: Tensor | None, y: Tensor | None) -> Tensor:
        """The images whose given pixels condition: ``y`` when it holds images, else ``x`` (labels
        ``y`` of shape ``(batch,)`` are ignored, as an unconditional VAE ignores them)."""
        if y is not None and y.dim() > 1:
            if tuple(y.shape[1:]) != self.x_shape:
                raise ValueError(f"y holds images of shape {tuple(y.shape[1:])}; expected {self.x_shape}")
            return y
        if x is None:
            raise ValueError(
                "a structured model completes given pixels: pass images x, or y, to condition on"
            )
        return x

    def baseline_log_prob(self, x: Tensor) -> Tensor:
        """The baseline's ``log p(x_hidden | hide(x))`` per image, shape ``(batch,)``."""
        return self.likelihood(self.baseline(hide(x, self.given))).log_prob(x)

    # -- the Pyro program ---------------------------------------------------------------------
    @pyro_method
    def model(self, x: Tensor | None = None, y: Tensor | None = None, *, batch_size: int | None = None,
              beta: float | None = None) -> Tensor:  # fmt: skip
        """p(z | c) p(x_hidden | z, c), ``c`` made from the images ``y`` if given, else from ``x``.

        :param beta: scale of the latent site's density (default ``self.beta``, 1)."""
        c = self.condition(self._source(x, y))
        return self.cvae.model(x, c, batch_size=batch_size, beta=self.beta if beta is None else beta)

    @pyro_method
    def guide(self, x: Tensor, y: Tensor | None = None, *, batch_size: int | None = None,
              beta: float | None = None) -> Tensor:  # fmt: skip
        """q(z | x, c); ``y`` and ``beta`` as in :meth:`model`."""
        c = self.condition(self._source(x, y))
        return self.cvae.guide(x, c, beta=self.beta if beta is None else beta)

    @pyro_method
    def encode(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        """q(z | x, c), batch shape ``(batch,)``."""
        return self.cvae.encode(x, self.condition(self._source(x, y)))

    def _reference(self) -> Tensor:
        return self.cvae._reference()

    @torch.no_grad()
    def init_output_bias(self, mean: Tensor) -> None:
        """Both networks' output biases so their predictions start at the mean image."""
        self.cvae.init_output_bias(mean)
        out = self.baseline.out
        out.bias.copy_(self.likelihood.bias_from_mean(mean.to(out.bias)).reshape(out.bias.shape))

    @torch.no_grad()
    def completions(self, x: Tensor, draws: int = 3) -> Tensor:
        """Rows of images for a figure: ``x`` with its hidden pixels grey, ``x``, the baseline's
        guess, then ``draws`` completions (mean of p(x | z, c), z ~ p(z | c)), every row keeping
        the given pixels; shape ``(3 + draws, batch, *x_shape)``."""
        from ..posterior import sample_prior

        given = self.given
        shown = torch.where(given, x, torch.full_like(x, 0.5))
        guess = self.condition(x)
        samples = [torch.where(given, x, sample_prior(self, len(x), y=x)) for _ in range(draws)]
        return torch.stack([shown, x, guess, *samples])


class _JointLoss(nn.Module):
    """The CVAE's −ELBO plus the baseline's masked negative log-likelihood, summed over the batch.
    The condition is detached, so neither network's gradient depends on the other's loss."""

    def __init__(self, model: StructuredCVAE, elbo, world: int) -> None:
        super().__init__()
        self.elbo_loss, self.model, self.world = ELBOLoss(model, elbo, world), model, world

    def forward(self, x: Tensor, y: Tensor | None = None, beta: float = 1.0) -> Tensor:
        nll = -self.model.baseline_log_prob(x).sum()
        return self.elbo_loss(x, y, beta) + self.world * nll


class StructuredTraining(Training):
    """Both networks at once (:class:`_JointLoss`), the baseline's validation NLL logged each epoch
    (``val_baseline_nll``)."""

    def __init__(self, model: nn.Module, data: Dataset, cfg: Config, world: int = 1) -> None:
        self.val = data.val
        super().__init__(model, data, cfg, world)

    def make_loss(self, model: nn.Module, world: int) -> nn.Module:
        return _JointLoss(model, self.elbo, world)

    def scores(self, model: nn.Module) -> dict[str, float]:
        return {"val_baseline_nll": baseline_nll(model, self.val)}


@torch.no_grad()
def baseline_nll(model: StructuredCVAE, split: Split, batch_size: int = 1000) -> float:
    """The baseline's mean −log p(x_hidden | hide(x)) over a split, nats per image."""
    x = split.x.to(model._reference().device)
    total = sum(
        -model.baseline_log_prob(x[i : i + batch_size]).sum().item() for i in range(0, len(x), batch_size)
    )
    return total / len(x)


class Structured(Variant):
    """``--model structured --quadrants N``: :class:`StructuredCVAE` built from ``quadrants``,
    ``z_dim``, ``hidden``, ``activation`` and ``likelihood``."""

    name = "structured"
    options = ("quadrants",)
    owner = "model structured: set model structured"
    training_cls = StructuredTraining
    generates = False  # it completes given pixels; it draws no image from nothing

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if cfg.quadrants not in (1, 2, 3):
            _refuse(f"model structured needs quadrants 1, 2 or 3 (the given quadrants of each image: 1 the "
                    f"bottom-left, 2 the left half, 3 all but the bottom-right), got {cfg.quadrants}",
                    "quadrants")  # fmt: skip
        fixed = {"prior": ("auto", "normal"), "guide": ("diag",), "net": ("mlp",)}
        for option, allowed in fixed.items():
            if getattr(cfg, option) not in allowed:
                _refuse(f"model structured has its own p(z|c), q(z|x,c) and MLPs: drop "
                        f"{option} {getattr(cfg, option)}", option)  # fmt: skip
        for option in ("dropout", "tc_beta"):
            if getattr(cfg, option):
                _refuse(f"model structured cannot use {option}; drop it", option)

    @classmethod
    def build(cls, cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
        from ..build import construct
        from ..likelihoods import LIKELIHOODS

        if len(x_shape) < 2 or min(x_shape[-2:]) < 2:
            _refuse(
                f"model structured needs images (channels, height, width); the data are {x_shape}", "model"
            )
        likelihood = construct(LIKELIHOODS[cfg.likelihood], x_shape, cfg=cfg, scale=cfg.likelihood_scale)
        given = quadrant_mask(cfg.quadrants, *x_shape[-2:])
        return StructuredCVAE(x_shape, given, cfg.z_dim, cfg.hidden, cfg.activation, likelihood)

    @classmethod
    def inputs(cls, model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor | None:
        return x  # the images whose given pixels condition the completion

    @classmethod
    def test_scores(cls, model: nn.Module, test: Split) -> dict:
        return {"test_baseline_nll": baseline_nll(model, test)}

    @classmethod
    def samples(cls, run, path, n: int | None = None, label: int | None = None, seed: int = 0):
        """Completions of the first ``n`` test images (8 by default): see :func:`completion_grid`."""
        if label is not None:
            _refuse("model structured completes test images from their given quadrants and takes no label: "
                    "drop it", "label")  # fmt: skip
        import pyro

        pyro.set_rng_seed(seed)
        x = run.data.test.x[: n or 8].to(run.device)
        return completion_grid(run.model, x, path)

    @classmethod
    def figures(cls, model: nn.Module, test: Split, out, add) -> None:
        completion_grid(model, test.x[:10], out / "completions.png")
        add("completions.png", "Completions",
            "Rows: test images with the hidden pixels grey, the truth, the baseline's guess, then three "
            "completions, each from its own z ~ p(z|c) (mean of p(x|z,c)); every row keeps the given pixels.")  # fmt: skip

    @classmethod
    def describe(cls, cfg: Config) -> str:
        return f"{cfg.quadrants} given quadrant{'s' * (cfg.quadrants != 1)} z{cfg.z_dim}"


def completion_grid(model: StructuredCVAE, x: Tensor, path, title: str | None = None):
    """:meth:`StructuredCVAE.completions` of ``x`` as one PNG, one column per image."""
    from .. import plots

    n_given = int(model.given.sum() * 4 // model.given.numel())
    title = title or f"{n_given} given quadrant{'s' if n_given > 1 else ''}: completions of test digits"
    rows = model.completions(x)
    return plots.image_grid(rows.flatten(0, 1), path, title, nrow=len(x),
                            ylabel="CVAE samples ×3 | baseline | truth | input")  # fmt: skip
