"""The semi-supervised VAE of Kingma et al. (2014), "M2": the label as a latent variable.

Generative story, for each datum ``n`` in the ``"data"`` plate::

    y_n ~ Categorical(1/K, ..., 1/K)      # site "y": observed when labelled, else summed out
    z_n ~ p(z)                            # site "z", its density scaled by beta
    x_n ~ p(x | decoder(z_n, y_n))        # site "x", observed

with the guide ``q(y | x) q(z | x, y)``: a classifier head q(y | x) (site ``"y"``, only for an
unlabelled batch, enumerated in parallel) and the conditional encoder of :class:`~pyrovae.VAE`.
A labelled batch is the same program with ``obs=y``. :class:`~pyro.infer.TraceEnum_ELBO` sums
the unlabelled ELBO over the K classes exactly:

    U(x) = sum_y q(y|x) [log p(y) + E_q(z|x,y) log p(x|y,z) - beta KL(q(z|x,y) || p(z))] + H(q(y|x))

and the labelled images add the classification loss ``-alpha log q(y|x)`` (the classifier would
otherwise learn only from unlabelled data). Over one epoch the loss is Kingma et al.'s
``J^alpha = sum_labelled L(x,y) + sum_unlabelled U(x) + alpha sum_labelled -log q(y|x)``: every
image, labelled or not, is in exactly one batch, the labelled ones spread evenly over the batches
(:func:`mixed_batches`), or gathered in whole labelled batches spread among the unlabelled ones
(:func:`separate_batches`, as Pyro's example does).

References: D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, "Semi-Supervised Learning with
Deep Generative Models", NeurIPS 2014; Pyro's ``examples/vae/ss_vae_M2.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn
from torch.distributions import kl_divergence

from .data import Split
from .models import VAE, _num_data, _scaled
from .nets import MLPEncoder

#: label of an image whose label is hidden from training
UNLABELED = -1


class Classifier(PyroModule):
    """q(y | x) = Categorical(softmax(head(encoder(x)))) over ``num_classes`` classes.

    :param encoder: an unconditional encoder (see :mod:`pyrovae.nets`).
    """

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: Tensor) -> dist.Categorical:
        return dist.Categorical(logits=self.head(self.encoder(x)))  # batch (batch,)


class SSVAE(VAE):
    """A semi-supervised VAE (M2): :class:`~pyrovae.VAE` whose label ``y`` is a random variable
    with a uniform prior and the guide q(y | x), observed only when given.

    It is a subclass, not a mode of :class:`~pyrovae.VAE`, because ``y`` changes role: in a
    conditional VAE it is an input, here a latent site with a prior, a guide and an extra loss;
    the subclass reuses the prior, guide, likelihood and decoder (conditioned on one-hot ``y``)
    and overrides only the two programs and the distributions that name ``y``.

    :param num_classes: K, the number of classes (at least 2).
    :param classifier: the q(y | x) module; default :class:`Classifier` over an MLP.
    Other parameters as :class:`~pyrovae.VAE`.

    >>> ss = SSVAE((1, 4, 4), z_dim=2, num_classes=3, hidden=(8,))
    >>> x = torch.ones(5, 1, 4, 4)
    >>> unlabelled = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(ss.model, ss.guide, x)  # y summed out
    >>> labelled = pyro.infer.Trace_ELBO().loss(ss.model, ss.guide, x, torch.tensor([0, 1, 2, 0, 1]))
    """

    variant = "semisupervised"  # so evaluation, built in Python too, sums over y as eval.json does

    def __init__(
        self,
        x_shape: Sequence[int],
        z_dim: int = 50,
        *,
        num_classes: int,
        classifier: nn.Module | None = None,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        **kwargs,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"a semi-supervised VAE needs at least 2 classes, got {num_classes}")
        super().__init__(
            x_shape, z_dim, num_classes=num_classes, hidden=hidden, activation=activation, **kwargs
        )
        if classifier is None:
            classifier = Classifier(MLPEncoder(x_shape, hidden, activation), num_classes)
        self.classifier = classifier

    # -- distributions ----------------------------------------------------------------------
    @pyro_method
    def classify(self, x: Tensor) -> dist.Categorical:
        """q(y | x), batch shape ``(batch,)``."""
        return self.classifier(x)

    def predict(self, x: Tensor) -> Tensor:
        """The most probable class of q(y | x), shape ``(batch,)``: the label M2 decodes with where
        it is given none."""
        return self.classify(x).probs.argmax(-1)

    def label_prior(self, like: Tensor) -> dist.Categorical:
        """p(y): uniform over the classes."""
        return dist.Categorical(logits=like.new_zeros(self.num_classes))

    @pyro_method
    def encode(self, x: Tensor, y: Tensor | None = None) -> dist.Distribution:
        """q(z | x, y); ``y`` may carry enumeration dimensions (``(K, 1)``), over which ``x`` is
        broadcast. Without ``y``, at the most probable class of q(y | x)."""
        if y is None:
            y = self.predict(x)
        y1 = self.one_hot(y, x)
        lead = torch.broadcast_shapes(y1.shape[:-1], x.shape[:1])  # e.g. (K, 1, batch)
        return self.guide_net(x.expand(*lead, *self.x_shape), y1)

    @pyro_method
    def prior_dist(self, y: Tensor | None = None, like: Tensor | None = None) -> dist.Distribution:
        """p(z); the prior does not depend on ``y``."""
        return self.prior(None)

    # -- the Pyro program -----------------------------------------------------------------
    @pyro_method
    def model(
        self,
        x: Tensor | None = None,
        y: Tensor | None = None,
        *,
        batch_size: int | None = None,
        beta: float | None = None,
    ) -> Tensor:
        """p(y) p(z) p(x | y, z); ``y`` observed where given. With ``x=None`` it generates
        ``batch_size`` (or ``len(y)``) data."""
        n = _num_data(x, y, batch_size)
        like = x if x is not None else self._reference()
        with pyro.plate("data", n, device=like.device):
            y = pyro.sample("y", self.label_prior(like), obs=y)  # enumerated: (K, 1)
            y1 = self.one_hot(y, like)
            with _scaled(self.beta if beta is None else beta):
                z = pyro.sample("z", self.prior(y1))  # (*enum, batch, z_dim)
            return pyro.sample("x", self.likelihood(self.decoder(z, y1)), obs=x)

    @pyro_method
    def guide(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        batch_size: int | None = None,
        beta: float | None = None,
    ) -> Tensor:
        """q(y | x) q(z | x, y); the y site only when ``y`` is not given, marked for parallel
        enumeration (``TraceEnum_ELBO`` sums over it; a plain trace samples it)."""
        with pyro.plate("data", x.shape[0], device=x.device):
            if y is None:
                y = pyro.sample("y", self.classify(x), infer={"enumerate": "parallel"})
            with _scaled(self.beta if beta is None else beta):
                return pyro.sample("z", self.encode(x, y))

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def elbo_terms(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-datum reconstruction and rate of the ELBO at β = 1 (one z per class), ELBO =
        reconstruction - rate; the unlabelled ELBO (a bound on log p(x)) when ``y`` is None::

            recon = sum_y q(y|x) log p(x | y, z_y),   z_y ~ q(z | x, y)
            rate  = KL(q(y|x) || p(y)) + sum_y q(y|x) KL(q(z|x,y) || p(z))

        and the labelled one (a bound on log p(x, y)) when given: ``log p(x | y, z)`` and
        ``KL(q(z|x,y) || p(z)) - log p(y)``. KLs analytic where torch knows them.
        """
        if y is not None:
            recon, kl_z = self._terms_given(x, y)
            return recon, kl_z - self.label_prior(x).log_prob(y)
        q_y = self.classify(x)
        ys = q_y.enumerate_support(expand=False)  # (K, 1)
        recon, kl_z = self._terms_given(x, ys)  # (K, batch)
        w = q_y.probs.transpose(0, 1)  # (K, batch)
        rate = kl_divergence(q_y, self.label_prior(x)) + (w * kl_z).sum(0)
        return (w * recon).sum(0), rate

    def _terms_given(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        q = self.encode(x, y)
        z = q.rsample()  # (*lead, batch, z_dim)
        recon = self.decode(z, y).log_prob(x)
        p = self.prior_dist()
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            kl = q.log_prob(z) - p.log_prob(z)
        return recon, kl.expand_as(recon)


# -- training -------------------------------------------------------------------------------
def default_alpha(num_train: int, num_labeled: int) -> float:
    """α per labelled image: Kingma et al.'s α = 0.1·N on the *mean* classification loss over
    the labelled images, i.e. 0.1·N / N_labelled on each one's ``-log q(y|x)``.

    >>> default_alpha(50000, 100)
    50.0
    """
    return 0.1 * num_train / num_labeled


class SemiSupervisedLoss(nn.Module):
    """The M2 loss of one batch whose unlabelled rows have ``y == UNLABELED`` (-1)::

        TraceEnum_ELBO loss(x_unlabelled) + Trace_ELBO loss(x_labelled, y) - alpha sum log q(y|x_labelled)

    The same Pyro program serves both parts: ``obs=None`` (y enumerated) or ``obs=y`` (nothing
    left to enumerate, so the plain ELBO).

    :param alpha: weight of each labelled image's classification loss.
    :param num_particles: samples of z per datum (vectorized).
    """

    def __init__(self, vae: SSVAE, alpha: float, num_particles: int = 1, world: int = 1) -> None:
        super().__init__()
        self.vae, self.alpha, self.world = vae, alpha, world
        opts = dict(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
        self.elbo = TraceEnum_ELBO(**opts)
        self.labelled_elbo = Trace_ELBO(**opts)  # nothing to enumerate once y is observed

    def forward(self, x: Tensor, y: Tensor, beta: float = 1.0) -> Tensor:
        labelled = y != UNLABELED
        loss = x.new_zeros(())
        if not labelled.all():
            loss = loss + self.elbo.differentiable_loss(self.vae.model, self.vae.guide, x[~labelled], None,
                                                        beta=beta)  # fmt: skip
        if labelled.any():
            xl, yl = x[labelled], y[labelled]
            loss = loss + self.labelled_elbo.differentiable_loss(self.vae.model, self.vae.guide, xl, yl,
                                                                beta=beta)  # fmt: skip
            loss = loss - self.alpha * self.vae.classify(xl).log_prob(yl).sum()
        return loss if self.world == 1 else self.world * loss


def balanced_labels(y: Tensor, n: int, num_classes: int, seed: int = 0) -> Tensor:
    """A mask of ``n`` images to keep labelled, ``n // num_classes`` per class (the first
    ``n % num_classes`` classes one more), drawn with ``seed``.

    :raises ValueError: when a class has fewer images than its share.
    """
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(len(y), dtype=torch.bool)
    for c in range(num_classes):
        share = n // num_classes + (c < n % num_classes)
        idx = (y == c).nonzero().squeeze(1)
        if len(idx) < share:
            raise ValueError(f"class {c} has {len(idx)} training images, fewer than its {share} labels")
        keep[idx[torch.randperm(len(idx), generator=g)[:share]]] = True
    return keep


def mixed_batches(perm: Tensor, labelled: Tensor, batch_size: int) -> list[Tensor]:
    """An epoch's order ``perm`` as batches of ``batch_size`` unlabelled images, each with an
    even share of the labelled images (in ``perm``'s order), so every image is in one batch.

    >>> perm, labelled = torch.arange(10), torch.arange(10) % 5 == 0
    >>> [b.tolist() for b in mixed_batches(perm, labelled, 4)]
    [[1, 2, 3, 4, 0], [6, 7, 8, 9, 5]]
    """
    lab, unl = perm[labelled[perm]], perm[~labelled[perm]]
    if len(unl) == 0:
        return list(lab.split(batch_size))
    unl = unl.split(batch_size)
    return [torch.cat([u, l]) for u, l in zip(unl, lab.tensor_split(len(unl)), strict=True)]


def separate_batches(perm: Tensor, labelled: Tensor, batch_size: int) -> list[Tensor]:
    """An epoch's order ``perm`` as whole batches of unlabelled images and whole batches of
    labelled ones (up to ``batch_size`` each, in ``perm``'s order), the labelled batches spread
    evenly among the unlabelled ones, the first one first: Pyro's example's schedule, which puts
    one labelled batch every ``N / labelled`` batches. Every image is in one batch.

    >>> perm, labelled = torch.arange(10), torch.arange(10) % 5 == 0
    >>> [b.tolist() for b in separate_batches(perm, labelled, 2)]
    [[0, 5], [1, 2], [3, 4], [6, 7], [8, 9]]
    """
    lab, unl = perm[labelled[perm]], perm[~labelled[perm]]
    lab, unl = (part.split(batch_size) if len(part) else () for part in (lab, unl))  # no empty batch
    order, done = [], 0
    for j, batch in enumerate(lab):
        upto = j * len(unl) // len(lab)  # unlabelled batches before the j-th labelled one
        order += [*unl[done:upto], batch]
        done = upto
    return order + list(unl[done:])


#: how :class:`SemiSupervision` batches the labelled images (``Config.labeled_batches``)
BATCHINGS = {"mixed": mixed_batches, "separate": separate_batches}


@torch.no_grad()
def accuracy(vae: SSVAE, data: Split, batch_size: int = 1000) -> float:
    """Fraction of ``data`` whose most probable class under q(y | x) is its label."""
    right = 0
    for i in range(0, len(data), batch_size):
        part = data.subset(slice(i, i + batch_size))
        right += int((vae.classify(part.x).probs.argmax(-1) == part.y).sum())
    return right / len(data)


class SemiSupervision:
    """What :func:`~pyrovae.fit.fit` does differently for an :class:`SSVAE` (it makes one from
    the data): the loss, the mixed batches and the per-epoch accuracies of q(y | x).

    :param labelled: mask of the training images whose label is kept.
    :param val: validation split (labelled, for accuracy); :param test: likewise.
    :param alpha: classification weight per labelled image; default :func:`default_alpha`.
    :param batches: ``"mixed"``: each unlabelled batch with a share of the labelled images
        (:func:`mixed_batches`); ``"separate"``: whole labelled batches among the unlabelled ones
        (:func:`separate_batches`, Pyro's example's schedule).
    """

    validation_labels = False  # validate the unlabelled ELBO, a bound on log p(x)

    def __init__(
        self, labelled: Tensor, val: Split, test: Split, alpha: float | None = None, batches: str = "mixed"
    ) -> None:
        if batches not in BATCHINGS:
            raise ValueError(f"batches must be one of {sorted(BATCHINGS)}, got {batches!r}")
        self.labelled, self.val, self.test, self.batches = labelled, val, test, BATCHINGS[batches]
        self.alpha = default_alpha(len(labelled), int(labelled.sum())) if alpha is None else alpha

    def loss(self, vae: SSVAE, num_particles: int, world: int = 1) -> SemiSupervisedLoss:
        return SemiSupervisedLoss(vae, self.alpha, num_particles, world)

    def split(self, perm: Tensor, batch_size: int) -> list[Tensor]:
        return self.batches(perm, self.labelled.to(perm.device), batch_size)

    def scores(self, vae: SSVAE) -> dict[str, float]:
        device = vae._reference().device
        if self.val.x.device != device:  # once, not every epoch
            self.val, self.test = self.val.to(device), self.test.to(device)
        return {"val_accuracy": accuracy(vae, self.val), "test_accuracy": accuracy(vae, self.test)}


def is_semisupervised(vae: nn.Module) -> bool:
    return isinstance(vae, SSVAE)


__all__ = [
    "SSVAE",
    "Classifier",
    "SemiSupervisedLoss",
    "SemiSupervision",
    "accuracy",
    "balanced_labels",
    "default_alpha",
    "mixed_batches",
    "separate_batches",
    "UNLABELED",
    "style_and_content",
]


@torch.no_grad()
def style_and_content(vae: SSVAE, x: Tensor) -> Tensor:
    """Each image's style z (the mean of q(z | x, y) at its most probable class) decoded with
    every class y: the mean of p(x | y, z), shape ``(batch, num_classes, *x_shape)``."""
    from .evaluate import posterior_mean

    z = posterior_mean(vae, x)  # (batch, z_dim)
    ys = torch.arange(vae.num_classes, device=x.device).unsqueeze(-1)  # (K, 1)
    z = z.expand(vae.num_classes, *z.shape)  # (K, batch, z_dim)
    out = vae.likelihood.mean(vae.decoder(z, vae.one_hot(ys, x)))  # (K, batch, *x_shape)
    return out.transpose(0, 1)
