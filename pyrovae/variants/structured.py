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

One run trains both, one after the other, as Pyro's tutorial does (:class:`StructuredTraining`):
first the baseline alone for ``baseline_epochs``, by its own fit with early stopping on its
validation NLL, then the CVAE with the baseline frozen; the run's epochs, ``best.pt`` and
``metrics.csv`` are the CVAE's. The ELBO, log p(x) and every figure of ``eval.json`` are the CVAE's: ``log p(x_hidden | x_given)``, in
nats per image over the hidden pixels; ``test_baseline_nll`` is the baseline's
−log p(x_hidden | hide(x)).

References: K. Sohn, H. Lee, X. Yan, "Learning Structured Output Representation using Deep
Conditional Generative Models", NeurIPS 2015; Pyro's tutorial ``examples/cvae``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from ..likelihoods import Likelihood
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
        self.baseline_likelihood = copy.deepcopy(self.cvae.likelihood)  # its own, if it has parameters

    @property
    def likelihood(self) -> Likelihood:
        """p(x | z, c), masked to the hidden pixels (the baseline's family is a copy of it)."""
        return self.cvae.likelihood

    @torch.no_grad()
    def condition(self, x: Tensor) -> Tensor:
        """``c``: the given pixels of ``x``, the baseline's guess (its mean) elsewhere; no gradient."""
        guess = self.baseline_likelihood.mean(self.baseline(hide(x, self.given)))
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
        return self.baseline_likelihood(self.baseline(hide(x, self.given))).log_prob(x)

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

    def train(self, mode: bool = True) -> StructuredCVAE:
        """Training mode for what trains: a frozen baseline stays in eval mode (Pyro warns of a
        module in training mode whose parameters take no gradient)."""
        super().train(mode)
        if not any(p.requires_grad for p in self.baseline.parameters()):
            self.baseline.train(False)
        return self

    @torch.no_grad()
    def init_output_bias(self, mean: Tensor) -> None:
        """Both networks' output biases so their predictions start at the mean image."""
        self.cvae.init_output_bias(mean)
        out = self.baseline.out
        out.bias.copy_(self.baseline_likelihood.bias_from_mean(mean.to(out.bias)).reshape(out.bias.shape))

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


class StructuredTraining(Training):
    """The baseline first, by its own :func:`~pyrovae.fit.fit` (see :func:`fit_baseline`), then the
    CVAE by the run's, with the baseline frozen: the protocol of Pyro's tutorial. The run's loss
    is the CVAE's ELBO; ``val_baseline_nll`` (fixed by then) is logged every epoch beside it."""

    def __init__(
        self, model: nn.Module, data: Dataset, cfg: Config, world: int = 1, progress: bool = False
    ) -> None:
        if world > 1:
            _refuse("model structured trains its baseline before the CVAE in one process: run it without "
                    "torchrun", "model")  # fmt: skip
        self.val = data.val
        fit_baseline(model, data, cfg, progress)
        super().__init__(model, data, cfg, world, progress)

    def scores(self, model: nn.Module) -> dict[str, float]:
        return {"val_baseline_nll": baseline_nll(model, self.val)}


def fit_baseline(model: StructuredCVAE, data: Dataset, cfg: Config, progress: bool = False) -> None:
    """Train ``model.baseline`` alone, then freeze it: as a :class:`~pyrovae.models.VAE` without
    latent dimensions (:func:`~pyrovae.structured.baseline_model`), whose ELBO is its masked
    log-likelihood, fitted by :func:`~pyrovae.fit.fit` for ``cfg.baseline_epochs`` epochs with the
    run's optimization options (early stopping on its own validation figure, the best epoch kept)
    on the images with their hidden pixels marked. The global random state is left as it was, so the CVAE trains
    as if the baseline had been given. With ``progress``, its epochs are reported as the run's are,
    between a line announcing the baseline and one giving its best validation figure."""
    import dataclasses
    import tempfile

    from tqdm import tqdm

    from ..fit import fit
    from ..models import VAE
    from ..structured import _NoLatent, _OnCondition

    given = model.given
    view = VAE(model.x_shape, 0, prior=_NoLatent(), guide=_NoLatent(), decoder=_OnCondition(model.baseline),
               likelihood=model.baseline_likelihood, condition_shape=model.x_shape)  # fmt: skip
    default = type(cfg)()  # the structured options at their defaults: the baseline's run is a VAE's
    alone = dataclasses.replace(cfg, model="vae", quadrants=None, baseline_epochs=default.baseline_epochs,
                                epochs=cfg.baseline_epochs, elbo="trace", num_particles=1, beta=1.0,
                                beta_schedule="constant", capacity=None, free_bits=None, tensorboard=False)  # fmt: skip
    rng = torch.get_rng_state()
    model.baseline.requires_grad_(True)
    if progress:
        tqdm.write(f"baseline: the deterministic network that fills the hidden pixels, {cfg.baseline_epochs} "
                   "epochs before the CVAE (its ELBO is the log-likelihood of the hidden pixels; seeded, so a "
                   "resumed run trains the same baseline again)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pyrovae-baseline-") as out:
        fit(view, data, out, alone, progress=progress, prepare=lambda x, y: hide(x, given))
    model.baseline.requires_grad_(False).zero_grad(set_to_none=True)
    model.train(model.training)  # the frozen baseline in eval mode
    torch.set_rng_state(rng)
    if progress:
        nll = baseline_nll(model, data.val)
        tqdm.write(f"baseline: done, frozen at its best validation ELBO {-nll:.2f} nats/image (its NLL of the "
                   f"hidden pixels, val_baseline_nll, {nll:.2f}); now the CVAE")  # fmt: skip


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
    options = ("quadrants", "baseline_epochs")
    owner = 'model structured: add --model structured (model="structured" in Python)'
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
        # its figures are nats of the hidden pixels given the rest: not comparable with a whole image's
        return (
            f"{cfg.quadrants} given quadrant{'s' * (cfg.quadrants != 1)} z{cfg.z_dim} (nats of hidden pixels)"
        )


def completion_grid(model: StructuredCVAE, x: Tensor, path, title: str | None = None):
    """:meth:`StructuredCVAE.completions` of ``x`` as one PNG, one column per image."""
    from .. import plots

    n_given = int(model.given.sum() * 4 // model.given.numel())
    title = title or f"{n_given} given quadrant{'s' if n_given > 1 else ''}: completions of test digits"
    rows = model.completions(x)
    return plots.image_grid(rows.flatten(0, 1), path, title, nrow=len(x),
                            ylabel="CVAE samples ×3 | baseline | truth | input")  # fmt: skip
