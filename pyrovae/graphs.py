"""An SVI step that never waits for the host, captured once as a CUDA graph and replayed.

The eager step (:func:`pyrovae.step.svi_step`) reads the loss and gradient norm back every step to
skip a non-finite update, and Pyro's ELBO checks the loss for NaN on the host as well: on a GPU the
step is then bound by Python and by that synchronisation, not by arithmetic. :class:`GraphedStep`
keeps the decision on the device instead: whether the loss and the gradient norm are finite becomes
a flag that fused Adam reads (as :class:`torch.amp.GradScaler`'s ``found_inf`` does), so a bad
step leaves parameters, moments and step count untouched, and the running loss and the number of
skipped steps accumulate on the device for the loop to read when it chooses.

On CUDA the whole step — Pyro's differentiable loss, ``backward``, the gradient norm (and
clipping), the optimizer — is captured once with :func:`torch.cuda.graph` and replayed, so Pyro's
Python runs during capture only. On a CPU the step's loss, gradients (``torch.autograd.grad``),
norm and flag are captured once as a graph of ATen operations (:func:`pyrovae.compiled.capture`)
and replayed, and fused Adam runs eagerly on the gradients it returns: there too Pyro's Python
runs once, and the replay computes what the eager step does, bit for bit. With ``compile=True`` the
graph is compiled by :func:`torch.compile`, which fuses its elementwise work. Shapes are fixed by
capture: a batch of another size (an epoch's last) needs the eager step. With ``graph=False`` the
same step runs eagerly, so its logic is tested without capture.
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import pyro
import torch
from torch import Tensor, nn

from .compiled import capture
from .step import EagerSteps, make_optimizer, norm_and_clip

#: Pyro's ELBO modules that read device tensors on the host: ``warn_if_nan`` (forward and
#: backward) and ``torch_item`` (the ELBO's value beside its surrogate)
_HOST_READERS = ("trace_elbo", "trace_mean_field_elbo", "tracegraph_elbo", "renyi_elbo")


def _detached(x):
    # the value Pyro's torch_item would read, left on the device: Trace_ELBO returns
    # ``loss + (surrogate - torch_item(surrogate))``, the same value and gradient either way
    return x.detach() if isinstance(x, Tensor) else x


@contextlib.contextmanager
def _no_host_reads():
    """Pyro's validation off, its NaN warnings silenced and its ``torch_item`` kept on the device,
    for warm-up and capture: each reads device values on the host, which a graph cannot contain
    (the flag below replaces the checks)."""
    import importlib

    patches = []
    for name in _HOST_READERS:
        module = importlib.import_module(f"pyro.infer.{name}")
        if hasattr(module, "warn_if_nan"):
            patches.append(mock.patch.object(module, "warn_if_nan", lambda value, *a, **k: value))
        if hasattr(module, "torch_item"):
            patches.append(mock.patch.object(module, "torch_item", _detached))
    with contextlib.ExitStack() as stack, pyro.validation_enabled(False):
        for p in patches:
            stack.enter_context(p)
        yield


def fused_adam(params: list, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """:func:`~pyrovae.step.make_optimizer`'s Adam, which must be fused here: a fused Adam honours a
    device-side ``found_inf``, and its learning rate is a device tensor, so a schedule can change it
    between replays (``opt.param_groups[0]["lr"].fill_(new)``).

    :param params: parameters, or parameter groups (see :func:`pyrovae.step.decay_groups`).
    :raises ValueError: where torch has no fused Adam for the parameters' device or dtype.
    """
    opt = make_optimizer(params, lr, weight_decay)
    if not opt.defaults.get("fused"):
        raise ValueError("no fused Adam for these parameters' device or dtype, which the graphed step needs; "
                         "take step eager")  # fmt: skip
    return opt


class GraphedStep:
    """One SVI step of ``loss_fn`` (an :class:`~pyrovae.objectives.ELBOLoss`) on batches shaped
    like ``x``, without host synchronisation: captured once and replayed (a CUDA graph on CUDA, a
    graph of ATen operations elsewhere), or run eagerly with ``graph=False``.

    :param loss_fn: ``loss_fn(x, y, beta)`` → the scalar loss of a batch.
    :param params: the parameters ``opt`` updates.
    :param opt: a fused Adam/AdamW (see :func:`fused_adam`).
    :param x: an example batch; its shape, dtype and device are the step's.
    :param y: an example condition batch, or ``None``.
    :param beta: the KL weight: a float fixed at capture, or a 0-d device tensor the loop fills.
    :param binarize: draw each pixel's value from Bernoulli(x) inside the step (dynamic
        binarization), from the default generator of ``x``'s device.
    :param clip_norm: clip the gradient norm to this value.
    :param graph: capture the step (default); ``False`` runs it eagerly.
    :param compile: on a CPU, compile the captured graph with :func:`torch.compile` (fused
        elementwise work, seconds of compiling at capture); ignored on CUDA.
    :param warmup: eager steps before capture (CUDA needs some); parameters, optimizer state and
        the random stream are restored after them, so they leave no trace in training.

    After each call, ``loss`` holds the step's loss (a device tensor, ``nan``/``inf`` when the
    step was skipped); ``total`` and ``skipped`` accumulate the finite losses' sum and the skipped
    steps until :meth:`read` returns and resets them (one host read).
    """

    def __init__(
        self,
        loss_fn: nn.Module,
        params: list[Tensor],
        opt: torch.optim.Optimizer,
        x: Tensor,
        y: Tensor | None = None,
        *,
        beta: float | Tensor = 1.0,
        binarize: bool = False,
        clip_norm: float | None = None,
        graph: bool = True,
        compile: bool = False,
        warmup: int = 3,
    ) -> None:
        if not opt.defaults.get("fused"):
            raise ValueError("GraphedStep needs a fused optimizer (pyrovae.graphs.fused_adam), which skips "
                             "non-finite steps on the device")  # fmt: skip
        self.loss_fn, self.params, self.opt = loss_fn, params, opt
        self.beta, self.binarize, self.clip_norm = beta, binarize, clip_norm
        device = x.device
        self.x = x.detach().clone()  # the captured inputs, filled before each replay
        self.y = None if y is None else y.detach().clone()
        self.found_inf = torch.zeros((), device=device, dtype=torch.float32)
        self.total = torch.zeros((), device=device, dtype=torch.float64)
        self.skipped = torch.zeros((), device=device, dtype=torch.int64)
        self.loss = torch.zeros((), device=device, dtype=x.dtype)
        opt.found_inf = self.found_inf  # read by the fused kernels at every step
        self.graphed = graph
        self._graph = None  # a CUDA graph
        self._traced = None  # the captured gradients on a CPU; _used: the parameters they are for
        self._used: list[int] = []
        if self.graphed:
            self._capture(warmup) if device.type == "cuda" else self._trace(compile)

    # -- the step ---------------------------------------------------------------------------
    def _account(self, loss: Tensor, norm: Tensor) -> None:
        """Flag a non-finite loss or gradient for fused Adam, and add the loss to the running figures."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        self.found_inf.copy_(bad)
        self.loss.copy_(loss)
        self.total.add_(torch.where(bad, 0.0, loss.double()))
        self.skipped.add_(bad.long())

    def _step(self) -> None:
        x = torch.bernoulli(self.x) if self.binarize else self.x
        loss = self.loss_fn(x, self.y, self.beta)
        loss.backward()
        norm = norm_and_clip([p.grad for p in self.params if p.grad is not None], self.clip_norm)
        self._account(loss.detach(), norm)
        self.opt.step()

    def _gradients(self, x: Tensor, y: Tensor | None = None) -> list[Tensor]:
        """What the captured graph computes: the step up to the optimizer, its gradients returned
        (of the parameters the loss uses, whose indices it records at capture)."""
        with _no_host_reads():
            loss = self.loss_fn(torch.bernoulli(x) if self.binarize else x, y, self.beta)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self._used = [i for i, g in enumerate(grads) if g is not None]
        grads = [g for g in grads if g is not None]
        self._account(loss.detach(), norm_and_clip(grads, self.clip_norm))
        return grads

    def _replay(self, x: Tensor, y: Tensor | None) -> None:
        with torch.no_grad():
            grads = self._traced(x) if y is None else self._traced(x, y)
        for p in self.params:  # a parameter the loss does not use keeps no gradient of an eager step
            p.grad = None
        for i, g in zip(self._used, grads, strict=True):
            self.params[i].grad = g
        self.opt.step()

    def __call__(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """One step on batch ``x`` (and ``y``); returns the step's loss as a device tensor."""
        if x.shape != self.x.shape:
            raise ValueError(f"GraphedStep was built for batches of shape {tuple(self.x.shape)}, got "
                             f"{tuple(x.shape)}: take the eager step for this one")  # fmt: skip
        if self._traced is not None:  # takes x as it is: no captured input to fill
            self._replay(x, y)
            return self.loss
        self.x.copy_(x)
        if y is not None:
            self.y.copy_(y)
        if self._graph is not None:
            self._graph.replay()
        else:
            self.opt.zero_grad(set_to_none=False)  # gradients accumulate into the same tensors
            with _no_host_reads():
                self._step()
        return self.loss

    def read(self) -> tuple[float, int]:
        """The sum of the finite losses and the number of skipped steps since the last read, in one
        host synchronisation; both are reset."""
        total, skipped = self.total.item(), int(self.skipped.item())
        self.total.zero_()
        self.skipped.zero_()
        return total, skipped

    # -- capture ----------------------------------------------------------------------------
    def _capture(self, warmup: int) -> None:
        """Warm up and capture; on failure the model and optimizer are as before, and the error
        propagates (the caller may take the eager step instead)."""
        saved = self._snapshot()
        try:
            side = torch.cuda.Stream(self.x.device)
            side.wait_stream(torch.cuda.current_stream(self.x.device))
            with torch.cuda.stream(side), _no_host_reads():
                for _ in range(max(1, warmup)):
                    self.opt.zero_grad(set_to_none=True)
                    self._step()
            torch.cuda.current_stream(self.x.device).wait_stream(side)
            self.opt.zero_grad(set_to_none=True)  # the graph allocates the gradients it writes
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph), _no_host_reads():
                self._step()
        except Exception:
            self._graph = None
            raise
        finally:
            self._restore(saved)

    def _trace(self, compile: bool) -> None:
        """Trace (and compile) at a first call, whose effects are undone; on failure the model and
        optimizer are as before, and the error propagates."""
        saved = self._snapshot()
        example = (self.x,) if self.y is None else (self.x, self.y)
        fn = (lambda x: self._gradients(x)) if self.y is None else (lambda x, y: self._gradients(x, y))
        try:
            self._traced = capture(fn, *example, compile=compile)
            with torch.no_grad():
                self._traced(*example)  # compiles now, so a failure shows here, not in training
        except Exception as e:
            self._traced = None
            if "_local_scalar_dense" in str(e):  # make_fx's words for it are a paragraph
                raise RuntimeError("the step reads a tensor's value in Python (.item(), bool(tensor)), which a "
                                   "captured graph cannot hold") from e  # fmt: skip
            raise
        finally:
            self._restore(saved)

    def _snapshot(self) -> dict:
        return {
            "params": [p.detach().clone() for p in self.params],
            "state": {
                id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                for p, s in self.opt.state.items()
            },  # fmt: skip
            "rng": torch.cuda.get_rng_state(self.x.device) if self.x.is_cuda else torch.get_rng_state(),
        }

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        """Undo the warm-up steps in place (the graph holds these tensors' addresses)."""
        for p, v in zip(self.params, saved["params"], strict=True):
            p.copy_(v)
        for p, state in self.opt.state.items():
            before = saved["state"].get(id(p))
            for k, v in state.items():
                if torch.is_tensor(v):
                    v.copy_(before[k]) if before is not None else v.zero_()
        if self.x.is_cuda:
            torch.cuda.set_rng_state(saved["rng"], self.x.device)
        else:
            torch.set_rng_state(saved["rng"])
        self.total.zero_()
        self.skipped.zero_()
        self.found_inf.zero_()


class SyncFreeSteps(EagerSteps):
    """:class:`GraphedStep` for full batches (captured at the first one: a CUDA graph on CUDA, a
    graph of ATen operations on a CPU, compiled with ``compile=True``), :class:`EagerSteps` for the run's first step (with Pyro's argument
    checks) and for batches of another size (an epoch's last); the loss is read every
    :attr:`every` steps.

    β is fed as a device tensor, so a schedule changes it between replays (the training holds its
    objective's other scheduled coefficients as device tensors too: see
    :meth:`~pyrovae.variants.base.Training.coefficients_on`). Where capture fails (an operation a
    graph cannot hold, no C++ compiler for ``torch.compile``), the reason is printed and the steps
    stay eager. ``graph=False`` runs the graphed step eagerly."""

    every = 50

    def __init__(self, loss_fn: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor],
                 clip_norm: float | None = None, graph: bool = True, compile: bool = False) -> None:  # fmt: skip
        super().__init__(loss_fn, opt, params, clip_norm)
        device = params[0].device
        self.graph, self.compile = graph, compile and device.type != "cuda"
        # in the parameters' dtype: a float32 β would round a float64 model's, which the eager step does not
        self.beta, self._beta = torch.zeros((), device=device, dtype=params[0].dtype), 0.0
        every = f"the loss read every {self.every} steps"
        if not graph:
            self.description = f"synchronisation-free (the graphed step run eagerly; {every})"
        elif device.type == "cuda":
            self.description = f"graphed (a CUDA graph replayed for full batches; {every})"
        elif self.compile:
            self.description = (f"compiled (traced once and compiled by torch.compile at the first full batch, "
                                f"then replayed for full batches; {every})")  # fmt: skip
        else:
            self.description = (f"graphed (traced once at the first full batch, then replayed for full batches; "
                                f"{every})")  # fmt: skip
        self.step: GraphedStep | None = None
        self.failed: str | None = None  # why capture failed, once it has

    def __call__(self, x: Tensor, y: Tensor | None, beta: float, validate: bool = False) -> None:
        if validate or self.failed or (self.step is not None and x.shape != self.step.x.shape):
            return super().__call__(x, y, beta, validate)
        if beta != self._beta:  # a launch saved per step while β holds still
            self.beta.fill_(beta)
            self._beta = beta
        if self.step is None and not self._build(x, y):
            return super().__call__(x, y, beta, validate)
        self.step(x, y)
        self.count += 1

    def _build(self, x: Tensor, y: Tensor | None) -> bool:
        try:
            self.step = GraphedStep(self.loss_fn, self.params, self.opt, x, y, beta=self.beta,
                                    clip_norm=self.clip_norm, graph=self.graph, compile=self.compile)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - any capture failure leaves the eager step, which works
            self.failed = f"{type(e).__name__}: {e}".splitlines()[0]
            from tqdm import tqdm

            tqdm.write(f"the graphed step could not be captured ({self.failed}); taking the eager step")
            return False
        return True

    def read(self) -> tuple[float, int, tuple | None]:
        total, count, bad = super().read()
        if self.step is not None:
            graphed, skipped = self.step.read()
            total += graphed
            if skipped and bad is None:
                bad = (math.nan, math.nan)
            count -= skipped
        return total, count, bad

    def reset(self) -> None:
        # a loaded optimizer state is new tensors: a graph holding the old ones must be captured again
        self.step = None


def make_steps(kind: str, loss_fn: nn.Module, opt: torch.optim.Optimizer, params: list[Tensor],
               clip_norm: float | None = None) -> EagerSteps:  # fmt: skip
    """The steps of ``kind`` (``"eager"``, ``"graphed"`` or ``"compiled"``, see
    :func:`~pyrovae.step.resolve_step`)."""
    if kind == "eager":
        return EagerSteps(loss_fn, opt, params, clip_norm)
    return SyncFreeSteps(loss_fn, opt, params, clip_norm, compile=kind == "compiled")


__all__ = ["GraphedStep", "SyncFreeSteps", "fused_adam", "make_steps"]
