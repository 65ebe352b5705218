"""A step's tensor work captured once and replayed: what a CUDA graph does on a GPU, for the CPU.

On a CPU a VAE's step is bound partly by Python: Pyro's traces, messages and distribution objects
cost about a millisecond a step on the tutorial network, beside about five of arithmetic.
:func:`capture` runs a function once under :func:`torch.fx.experimental.proxy_tensor.make_fx`, which
records the ATen operations it dispatches (Pyro's Python and autograd's bookkeeping run then, and
only then). The recorded graph is replayed as it is, the same kernels on the same inputs as the
eager function, so it computes the same numbers bit for bit; or, with ``compile=True``, compiled
by :func:`torch.compile` (Inductor: elementwise work fused into C++ loops, the same numbers up to
float32 rounding). Random numbers are drawn by torch's own kernels (Inductor's
``fallback_random``), so a replay draws the same noise as the eager function from the same
generator state.

Every tensor the function reads without receiving it as an argument — parameters, buffers, β and
the schedules' coefficients held as tensors, running totals it adds to — becomes an input of the
graph, passed anew at each call, so changes made to those tensors in place between calls (an
optimizer's update, a schedule's ``fill_``) are seen. What is fixed at capture is what a CUDA
graph fixes: shapes, Python numbers and Python control flow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx


def _lift_constants(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[torch.Tensor]]:
    """The graph with each tensor constant (an attribute ``make_fx`` recorded by reference) turned
    into a trailing input, and those tensors, in the inputs' order."""
    tensors: list[torch.Tensor] = []
    inputs: dict[int, fx.Node] = {}  # by tensor identity: one input per tensor
    last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    targets = set()
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        value = getattr(gm, node.target)
        if id(value) not in inputs:
            with gm.graph.inserting_after(last):
                last = inputs[id(value)] = gm.graph.placeholder(f"lifted_{len(tensors)}")
            tensors.append(value)
        node.replace_all_uses_with(inputs[id(value)])
        gm.graph.erase_node(node)
        targets.add(node.target)
    for target in targets:
        delattr(gm, target)
    gm.recompile()
    return gm, tensors


def capture(fn: Callable, *example: torch.Tensor, compile: bool = False) -> Callable:
    """``fn`` traced once on ``example``, to be replayed; with ``compile``, compiled by
    :func:`torch.compile` at the first call.

    The trace runs ``fn`` for real, once: it draws from the random generators and applies any
    in-place change ``fn`` makes, which the caller undoes if it must.

    :param fn: a function of tensors returning tensors (or lists of them), with no Python decision
        on a tensor's value (``.item()``, ``bool(tensor)``), which tracing cannot follow.
    :param compile: fuse the graph's elementwise work (Inductor; needs a C++ compiler, and takes
        seconds to compile where replaying the trace as it is takes none).
    :returns: a function of the same arguments, for inputs of ``example``'s shapes, dtypes and
        devices.
    """
    gm, tensors = _lift_constants(make_fx(fn)(*example))
    if not compile:
        return lambda *args: gm(*args, *tensors)
    run = torch.compile(gm, fullgraph=True, dynamic=False, options={"fallback_random": True})
    compiled = False

    def replay(*args: torch.Tensor):
        nonlocal compiled
        if compiled:
            return run(*args, *tensors)
        # torch's C++ builder warns, on a machine without CUDA, that it found no CUDA runtime
        builder = logging.getLogger("torch.utils.cpp_extension")
        level = builder.level
        builder.setLevel(logging.ERROR)
        try:
            out = run(*args, *tensors)
        finally:
            builder.setLevel(level)
        compiled = True
        return out

    return replay


__all__ = ["capture"]
