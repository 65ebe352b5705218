"""``pyrovae.SVI``: Pyro's ``SVI`` with pyrovae's training step, for your own training loop.

A script written for :class:`pyro.infer.SVI` runs unchanged with this class in its place::

    svi = pyrovae.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    for x in batches:
        loss = svi.step(x)

and each ``step`` is the one ``pyrovae train`` takes (:mod:`pyrovae.step`, :mod:`pyrovae.graphs`):
one fused Adam over all parameters in place of ``pyro.optim``'s torch optimizer per parameter, the
loss and gradients checked for NaN and inf before they reach the parameters, Pyro's validation on
the first step only, and, for a long run, the step traced once and replayed, so that Pyro's Python
runs once instead of every step. What a ``step`` returns and how the parameters move are those of
``pyro.infer.SVI`` (to float rounding: torch's fused Adam orders its arithmetic differently).
"""

from __future__ import annotations

import inspect
import warnings

import pyro
import pyro.optim
import torch
from pyro import poutine
from torch import Tensor

from .graphs import GraphedStep
from .step import STEPS, make_optimizer, resolve_step, svi_step

#: With ``step="auto"`` the step is traced once this many steps have taken the same shapes: the
#: trace costs what about 400 eager steps save against the replay (0.43 s at 1 ms a step on the
#: tutorial network), so a run never pays more than twice what the better choice would have cost.
TRACE_AFTER = 400

_ADAMS = (torch.optim.Adam, torch.optim.AdamW)


def _adam(optim: pyro.optim.PyroOptim) -> tuple[type, dict]:
    """The torch class and its arguments behind ``pyro.optim.Adam(...)`` or ``pyro.optim.AdamW(...)``."""
    cls, args = getattr(optim, "pt_optim_constructor", None), getattr(optim, "pt_optim_args", None)
    if cls not in _ADAMS or not isinstance(args, dict) or getattr(optim, "pt_clip_args", None):
        # pyro.optim clips each parameter's gradient on its own, not the whole gradient's norm
        raise ValueError(
            "pyrovae.SVI trains with Adam or AdamW given fixed arguments and no clip_args, e.g. "
            "pyro.optim.Adam({'lr': 1e-3}); for another optimizer, arguments per parameter or clipping, "
            "use pyro.infer.SVI"
        )
    args = dict(args)
    args.setdefault("weight_decay", inspect.signature(cls).parameters["weight_decay"].default)
    return cls, args


def _shape_key(args: tuple, kwargs: dict):
    """What a traced step is fixed to: the tensor arguments' shapes, dtypes and devices, and the
    other arguments' values; ``None`` where the call cannot be traced (a tensor keyword argument,
    positional arguments other than ``(x,)`` or ``(x, y)``)."""
    if (
        not 1 <= len(args) <= 2
        or not isinstance(args[0], Tensor)
        or any(isinstance(v, Tensor) for v in kwargs.values())
    ):
        return None
    if len(args) == 2 and not (args[1] is None or isinstance(args[1], Tensor)):
        return None
    tensors = tuple(None if a is None else (a.shape, a.dtype, a.device) for a in args)
    try:
        return tensors, tuple(sorted(kwargs.items()))
    except TypeError:  # keyword values that do not order: no trace
        return None


class SVI(pyro.infer.SVI):
    """:class:`pyro.infer.SVI` with pyrovae's training step.

    ``step(*args, **kwargs)`` returns the loss of ``loss`` on the call's arguments, as Pyro's does,
    and takes one optimizer step on the parameters the model and guide used in the first step. A
    step whose loss or gradients are not finite is skipped (the parameters keep their values) and
    returns ``nan`` or ``inf``. Pyro's argument checks (validation) run in the first step.

    :param model: the model, e.g. ``vae.model``.
    :param guide: the guide, e.g. ``vae.guide``.
    :param optim: ``pyro.optim.Adam`` or ``pyro.optim.AdamW`` with fixed arguments (``lr``,
        ``betas``, ``eps``, ``weight_decay``, ``amsgrad``) and no ``clip_args``.
        Training uses one torch optimizer over all parameters, :attr:`optimizer`, in its place:
        save and load that one's ``state_dict``.
    :param loss: an ELBO with ``differentiable_loss`` (``Trace_ELBO``, ``TraceMeanField_ELBO``,
        pyrovae's ``IWAE``, ...).
    :param step: ``"auto"`` (default) runs the eager step and traces the step once
        :data:`TRACE_AFTER` calls have taken the same shapes and keyword values; ``"graphed"``
        traces from the second such call; ``"compiled"`` also compiles the trace (CPU only);
        ``"eager"`` never traces. On CUDA the trace is a CUDA graph. On a CPU the replayed step
        makes the eager step's updates bit for bit; calls of other shapes take the eager step. The
        trace fixes what the program reads besides its arguments: pass what changes between steps
        (a KL weight, an annealing factor) as an argument, ``svi.step(x, beta=b)``. (A pyrovae VAE's
        own ``beta`` and train/eval mode are watched: a new value takes the eager step.)

    >>> import pyro, torch, pyrovae
    >>> vae = pyrovae.VAE((1, 4, 4), z_dim=2, hidden=(8,))
    >>> svi = pyrovae.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    >>> loss = svi.step(torch.ones(3, 1, 4, 4))
    """

    def __init__(self, model, guide, optim: pyro.optim.PyroOptim, loss, *, step: str = "auto") -> None:
        if step not in STEPS:
            raise ValueError(f"step must be one of {', '.join(STEPS)}; got {step!r}")
        if not callable(getattr(loss, "differentiable_loss", None)):
            raise ValueError(f"pyrovae.SVI needs a loss with differentiable_loss (Trace_ELBO, TraceMeanField_ELBO, "
                             f"pyrovae.IWAE, ...); {type(loss).__name__} has none: use pyro.infer.SVI")  # fmt: skip
        self._adam = _adam(optim)
        super().__init__(model, guide, optim, loss)
        self.elbo = loss  # Pyro's SVI keeps only its loss and loss_and_grads methods
        self.kind = step
        self.optimizer: torch.optim.Optimizer | None = None  # built at the first step
        self.params: list[Tensor] = []
        self._graph: GraphedStep | None = None
        self._graph_key = None
        self._counts: dict = {}
        self._store_size = 0
        self.failed: str | None = None  # why the step could not be traced, once it could not

    @property
    def graphed(self) -> bool:
        """Whether a traced step has been captured (and replays calls of its shapes)."""
        return self._graph is not None

    def step(self, *args, **kwargs) -> float:
        """One SVI step on ``args`` and ``kwargs`` (passed to model and guide); returns the loss."""
        if self.optimizer is None:
            return self._first(*args, **kwargs)
        key = self._key(args, kwargs)
        if key is not None and self._graph is None and not self.failed:
            self._counts[key] = n = self._counts.get(key, 0) + 1
            if self._ready(n, args[0].device):
                self._trace(key, args, kwargs)
        if self._graph is not None and key == self._graph_key:
            self._graph(args[0], args[1] if len(args) == 2 else None)
            return self._graph.loss.item()
        return self._eager(args, kwargs)

    # -- the steps ---------------------------------------------------------------------------
    def _key(self, args: tuple, kwargs: dict):
        """:func:`_shape_key`, and what a pyrovae VAE reads of itself (its ``beta``, train or eval
        mode), so that a new value is not replayed from the old one's trace."""
        key = _shape_key(args, kwargs)
        if key is None:
            return None
        owner = getattr(self.model, "__self__", None)
        return key, getattr(owner, "beta", None), getattr(owner, "training", None)

    def _loss(self, args: tuple, kwargs: dict) -> Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def _first(self, *args, **kwargs) -> float:
        # the parameters are those the program uses, found as Pyro's SVI finds them
        with poutine.trace(param_only=True) as params:
            loss = self._loss(args, kwargs)
        seen = {}
        for site in params.trace.nodes.values():
            p = site["value"].unconstrained()
            seen[id(p)] = p
        self.params = list(seen.values())
        if not self.params:
            raise ValueError("the model and guide use no parameters (pyro.param, pyro.module or a PyroModule): "
                             "there is nothing to train")  # fmt: skip
        cls, options = self._adam[0], dict(self._adam[1])
        self.optimizer = make_optimizer(self.params, options.pop("lr", 1e-3), cls=cls, **options)
        self._store_size = len(pyro.get_param_store())
        self._counts[self._key(args, kwargs)] = 1
        return svi_step(lambda *_: loss, self.optimizer, self.params, None)[0]

    def _eager(self, args: tuple, kwargs: dict) -> float:
        with pyro.validation_enabled(False):
            loss = svi_step(lambda *_: self._loss(args, kwargs), self.optimizer, self.params, None)[0]
        if len(pyro.get_param_store()) != self._store_size:
            self._store_size = len(pyro.get_param_store())
            warnings.warn("Pyro's parameter store changed after pyrovae.SVI's first step: it trains the "
                          "parameters its first step used; for a program that creates parameters later, "
                          "use pyro.infer.SVI", stacklevel=3)  # fmt: skip
        return loss

    def _ready(self, n: int, device: torch.device) -> bool:
        if self.kind == "eager" or not self.optimizer.defaults.get("fused"):
            return False
        resolve_step(self.kind, device)  # refuses compiled on CUDA
        return n >= (TRACE_AFTER if self.kind == "auto" else 2)

    def _trace(self, key, args: tuple, kwargs: dict) -> None:
        nargs = len(args)

        # beta is pyrovae's own argument of a loss; the program's keyword arguments are in kwargs
        def loss_fn(x: Tensor, y: Tensor | None, beta) -> Tensor:
            return self._loss((x,) if nargs == 1 else (x, y), kwargs)

        try:
            self._graph = GraphedStep(loss_fn, self.params, self.optimizer, args[0], args[1] if nargs == 2 else None,
                                      compile=self.kind == "compiled")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the eager step works wherever tracing does not
            self.failed = f"{type(e).__name__}: {e}".splitlines()[0]
            warnings.warn(f"pyrovae.SVI could not trace the step ({self.failed}); it takes the eager step",
                          stacklevel=4)  # fmt: skip
            return
        self._graph_key = key


__all__ = ["SVI", "TRACE_AFTER"]
