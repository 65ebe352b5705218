"""The VAE and the conditional VAE: one Pyro program, :class:`~pyrovae.models.VAE`, without and
with the label ``y`` as an input of prior, guide and decoder (Sohn et al. 2015)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .base import Variant, _refuse

if TYPE_CHECKING:
    from ..config import Config


class Plain(Variant):
    """``--model vae`` (the default): p(z) p(x|z) with the guide q(z|x)."""

    name = "vae"

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if getattr(cfg.prior_cls(), "needs_labels", False):
            _refuse(f"prior {cfg.prior} is p(z|y): set conditional to train on labels", "prior")


class Conditional(Variant):
    """``--model conditional`` (or ``--conditional``): p(z|y) p(x|z,y) with the guide q(z|x,y)."""

    name = "conditional"
    options = ("conditional",)
    owner = "a conditional run: add conditional"

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        if not getattr(cfg.prior_cls(), "conditionable", True):
            _refuse(
                f"prior {cfg.prior} cannot be conditioned on a label; use prior auto, normal, vamp or "
                "conditional", "prior",
            )  # fmt: skip

    @classmethod
    def build(cls, cfg: Config, x_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
        from ..build import vae_parts
        from ..models import VAE

        if not num_classes:
            _refuse("conditional needs labelled data (MNIST, or a labels file)", "conditional")
        return VAE(x_shape, cfg.z_dim, **vae_parts(cfg, x_shape, num_classes))
