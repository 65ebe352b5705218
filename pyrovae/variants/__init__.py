"""Model variants: :data:`MODELS`, the registry ``Config.model`` (``--model``) chooses from.

A variant is one module owning its Pyro program, its options and their checks, its loss, its
data preparation, its per-epoch metrics and its figures, written to the protocol of
:class:`~pyrovae.variants.base.Variant`; the run layer, :func:`~pyrovae.fit.fit`, evaluation,
inspection and the command line only dispatch through it. ``docs/adding-a-model.md`` is the
checklist for a new one.
"""

from .base import Training, Variant, variant_of
from .hierarchical import Hierarchical
from .semisupervised import SemiSupervised
from .structured import Structured
from .vae import Conditional, Plain

MODELS: dict[str, type[Variant]] = {
    "vae": Plain,
    "conditional": Conditional,
    "semisupervised": SemiSupervised,
    "hierarchical": Hierarchical,
    "structured": Structured,
}
"""Registry of model variants by command-line name."""

__all__ = ["MODELS", "Variant", "Training", "variant_of"]
