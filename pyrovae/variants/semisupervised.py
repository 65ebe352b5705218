"""``--model semisupervised`` (or ``--semi-supervised``): Kingma et al.'s M2, whose Pyro program
is :class:`~pyrovae.semisupervised.SSVAE`. This module is what the run layer needs of it: its
options and their checks, hiding labels, its loss and batches, the accuracies of q(y|x) and
the style-and-content figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .. import semisupervised as m2
from .base import Training, Variant, _refuse

if TYPE_CHECKING:
    from ..config import Config
    from ..data import Dataset, Split


class SemiSupervisedTraining(Training):
    """The M2 loss over batches mixing labelled and unlabelled images (or keeping them apart),
    with the accuracies of q(y|x) logged every epoch
    (:class:`~pyrovae.semisupervised.SemiSupervision`)."""

    validation_labels = False  # validate the unlabelled ELBO, a bound on log p(x)
    uncapturable = (
        "the M2 loss splits each batch by which images are labelled, a shape known only from the data"
    )

    def __init__(
        self, model: nn.Module, data: Dataset, cfg: Config, world: int = 1, progress: bool = False
    ) -> None:
        self.supervision = m2.SemiSupervision(data.train.y != m2.UNLABELED, data.val, data.test,
                                              cfg.aux_weight, cfg.labeled_batches)  # fmt: skip
        super().__init__(model, data, cfg, world, progress)

    def objective(self, cfg: Config):
        return None  # the loss enumerates y itself

    def make_loss(self, model: nn.Module, world: int) -> nn.Module:
        return self.supervision.loss(model, self.cfg.num_particles, world)

    def batches(self, perm: Tensor, batch_size: int) -> list[Tensor]:
        return self.supervision.split(perm, batch_size)

    def scores(self, model: nn.Module) -> dict[str, float]:
        return self.supervision.scores(model)


class SemiSupervised(Variant):
    name = "semisupervised"
    options = ("semi_supervised", "labeled", "aux_weight", "monitor", "labeled_batches")
    owner = "a semi-supervised run: add semi_supervised"
    training_cls = SemiSupervisedTraining

    @classmethod
    def describe_objective(cls, cfg: Config) -> str:
        """M2's loss: the ELBO summed over y for unlabelled images, with α times the classifier's
        −log q(y|x) for labelled ones."""
        alpha = f"{cfg.aux_weight:g}" if cfg.aux_weight is not None else f"0.1·N/{cfg.labeled}"
        return f"M2: {super().describe_objective(cfg)}, y enumerated; α={alpha}"

    @classmethod
    def check(cls, cfg: Config) -> None:
        if cfg.labeled is None or cfg.labeled < 1:
            _refuse(
                "the semi-supervised model needs labeled N, the number of labelled training images", "labeled"
            )
        if cfg.aux_weight is not None and cfg.aux_weight < 0:
            _refuse(f"aux_weight must be >= 0, got {cfg.aux_weight}", "aux_weight")
        if cfg.conditional:
            _refuse(
                "semi_supervised already conditions the decoder and q(z|x,y) on the label, which it "
                "infers where it is missing; drop conditional", "conditional",
            )  # fmt: skip
        prior = cfg.prior_cls()
        if getattr(prior, "needs_labels", False) or hasattr(prior, "bind"):
            why = ("it is p(z|y), and M2's prior p(z) does not depend on y" if getattr(prior, "needs_labels", False)
                   else "its pseudo-inputs pass through the guide, which here needs a label too: q(z|x,y)")  # fmt: skip
            _refuse(f"semi_supervised cannot use prior {cfg.prior}: {why}; use prior normal, learned, mixture "
                    "or flow", "prior")  # fmt: skip
        # The unlabelled ELBO sums over y with TraceEnum_ELBO: objectives that are not that sum
        # (or that Pyro cannot enumerate) are refused.
        why = {
            "meanfield": "TraceEnum_ELBO has no analytic-KL variant; use elbo trace",
            "iwae": "Pyro's importance-weighted bound (RenyiELBO) cannot enumerate the discrete label; "
            "use elbo trace",
        }
        if cfg.elbo in why:
            _refuse(f"semi_supervised cannot use elbo {cfg.elbo}: {why[cfg.elbo]}", "elbo")
        for name in ("capacity", "free_bits", "tc_beta"):
            if getattr(cfg, name) is not None:
                _refuse(
                    f"semi_supervised cannot use {name}: it reshapes Trace_ELBO's KL term, which the "
                    "enumerated sum over labels (TraceEnum_ELBO) does not expose", name,
                )  # fmt: skip
        super().check(cfg)

    @classmethod
    def build(cls, cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
        from ..build import construct, net_options, vae_parts
        from ..nets import NETS

        if not num_classes:
            _refuse("semi_supervised needs labelled data (MNIST, or a labels file)", "semi_supervised")
        parts = vae_parts(cfg, x_shape, num_classes)
        encoder = construct(NETS[cfg.net][0], x_shape, cfg.hidden, cfg.activation, 0, **net_options(cfg))
        classifier = m2.Classifier(encoder, num_classes)
        return m2.SSVAE(x_shape, cfg.z_dim, classifier=classifier, **parts)

    @classmethod
    def prepare_data(cls, data: Dataset, cfg: Config) -> None:
        """Keep the labels of ``cfg.labeled`` training images, balanced by class (fixed by
        ``split_seed``); the others become :data:`~pyrovae.semisupervised.UNLABELED`."""
        if not data.num_classes:
            _refuse("semi_supervised needs labelled data (MNIST, or a labels file)", "semi_supervised")
        from ..data import trained_classes

        seen = trained_classes(data.num_classes, cfg.classes, cfg.exclude_classes)
        if len(seen) < data.num_classes:
            option = "classes" if cfg.classes is not None else "exclude_classes"
            missing = ", ".join(str(c) for c in range(data.num_classes) if c not in seen)
            _refuse(
                f"{option} leaves class(es) {missing} without training images, but semi_supervised's label y ranges "
                f"over all {data.num_classes} classes of the data (q(y|x), the ELBO's sum over y, the test "
                "accuracy), and no labels can be balanced over a class with no images: train on every class", option,
            )  # fmt: skip
        if cfg.labeled > len(data.train) or cfg.labeled < data.num_classes:
            _refuse(
                f"labeled must be between {data.num_classes} (one per class) and the {len(data.train)} training "
                f"images, got {cfg.labeled}", "labeled",
            )  # fmt: skip
        try:
            keep = m2.balanced_labels(data.train.y, cfg.labeled, data.num_classes, cfg.split_seed)
        except ValueError as e:
            _refuse(f"{e}; lower labeled", "labeled")
        data.train.y = torch.where(keep, data.train.y, m2.UNLABELED)
        data.notes.append(f"semi-supervised: {cfg.labeled} training images keep their label (balanced by "
                          f"class, split_seed {cfg.split_seed}), {len(data.train) - cfg.labeled} are unlabelled")  # fmt: skip

    @classmethod
    def test_labels(cls, model: nn.Module, y: Tensor | None) -> Tensor | None:
        return None  # the semi-supervised ELBO and log p(x) sum over y

    @classmethod
    def inputs(cls, model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor | None:
        """The class q(y|x) infers, not the true label: M2 is evaluated without labels, and its
        ``encode`` without one takes this class, so reconstructions, KL and active units of
        inspection are those of ``eval.json``."""
        from ..evaluate import in_model_dtype

        return model.predict(in_model_dtype(model, x))

    @classmethod
    def test_scores(cls, model: nn.Module, test: Split) -> dict:
        return {"test_accuracy": m2.accuracy(model, test)}

    @classmethod
    def figures(cls, model: nn.Module, test: Split, out, add) -> None:
        from .. import plots

        x8 = test.x[:8]
        grid = torch.cat([x8[:, None], m2.style_and_content(model, x8)], 1)  # (8, 1 + K, ...)
        plots.image_grid(grid.flatten(0, 1), out / "style_content.png",
                         "A test image, then its style z with each class y", nrow=grid.shape[1])  # fmt: skip
        add("style_content.png", "Style and content",
            "Semi-supervised model: each row keeps the style z of a test image (mean of q(z|x,y) at "
            "the most probable class of q(y|x)) and decodes it with every class y in turn.")  # fmt: skip
