"""The synchronisation-free SVI step on the CPU, captured (``graph=True``, the default) and
replayed as traced or compiled (``compile=True``), and run eagerly (``graph=False``): the same
updates as the eager step, a non-finite step skipped on the device, the running loss read once.
tests/test_cuda.py checks that the replayed CUDA graph equals the eager step."""

import copy

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae import VAE
from pyrovae.graphs import GraphedStep, fused_adam
from pyrovae.objectives import ELBOLoss
from pyrovae.step import svi_step


def _vae() -> VAE:
    pyro.set_rng_seed(0)
    return VAE((1, 4, 4), z_dim=2, hidden=(8,))


def _batches(n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(10, 1, 4, 4, generator=g) for _ in range(n)]


KINDS = [dict(graph=False), dict(graph=True), dict(graph=True, compile=True)]


@pytest.mark.parametrize("kind", KINDS, ids=["eager", "traced", "compiled"])
def test_graphed_step_makes_the_eager_steps_updates_without_reading_the_loss(kind):
    """Captured, the step draws the same binarization and z noise as the eager one (torch's random
    kernels). Replayed as traced it runs the eager step's kernels, so the parameters are the same
    bit for bit; compiled, they agree to float32 rounding (Inductor fuses the elementwise work)."""
    a, b = _vae(), copy.deepcopy(_vae())
    pa, pb = list(a.parameters()), list(b.parameters())
    opt_a, opt_b = fused_adam(pa, 1e-2), fused_adam(pb, 1e-2)
    step = GraphedStep(ELBOLoss(b, Trace_ELBO()), pb, opt_b, _batches()[0], binarize=True, **kind)
    assert step.graphed == kind["graph"] and (step._traced is not None) == kind["graph"]
    exact = not kind.get("compile")
    losses = []
    for x in _batches():
        pyro.set_rng_seed(7)  # the same binarization and z noise for both
        loss, _ = svi_step(ELBOLoss(a, Trace_ELBO()), opt_a, pa, torch.bernoulli(x))
        losses.append(loss)
        pyro.set_rng_seed(7)
        # Pyro's eager ELBO adds the sites' log-densities up as Python floats (its torch_item), the
        # captured one as tensors: the loss reported agrees to rounding; the gradients do not differ
        assert step(x).item() == pytest.approx(loss, rel=1e-6)
    for p, q in zip(pa, pb, strict=True):
        assert torch.equal(p, q) if exact else torch.allclose(p, q, atol=1e-6)
    total, skipped = step.read()
    assert skipped == 0 and total == pytest.approx(sum(losses), rel=1e-6)
    assert step.read() == (0.0, 0)  # read resets the running figures


@pytest.mark.parametrize("kind", KINDS, ids=["eager", "traced", "compiled"])
def test_a_non_finite_step_is_skipped_on_the_device(kind):
    vae = _vae()
    params = list(vae.parameters())
    opt = fused_adam(params, 1e-2)
    step = GraphedStep(ELBOLoss(vae, Trace_ELBO()), params, opt, _batches()[0], **kind)
    x = torch.bernoulli(_batches()[1])
    step(x)
    before = [p.detach().clone() for p in params]
    moments = {k: v.clone() for k, v in opt.state[params[0]].items()}
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert torch.isnan(step(bad))
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))  # no update
    assert all(torch.equal(v, moments[k]) for k, v in opt.state[params[0]].items())  # not even the step count
    step(x)
    assert not torch.equal(params[0], before[0])  # and the next finite step goes ahead
    total, skipped = step.read()
    assert skipped == 1 and torch.isfinite(torch.tensor(total))


def test_a_scheduled_beta_as_a_device_tensor_scales_the_kl_exactly():
    """β fed as a tensor (so a graph can follow a warm-up) gives the loss of the same float β."""
    vae = _vae()
    x = torch.bernoulli(_batches()[0])
    loss = ELBOLoss(vae, pyro.infer.TraceMeanField_ELBO())
    pyro.set_rng_seed(3)
    as_float = loss(x, None, 0.25)
    pyro.set_rng_seed(3)
    as_tensor = loss(x, None, torch.tensor(0.25))
    assert as_tensor.item() == pytest.approx(as_float.item(), rel=1e-6)


def test_refuses_an_optimizer_that_cannot_skip_on_the_device_and_a_batch_of_another_shape():
    vae = _vae()
    params = list(vae.parameters())
    with pytest.raises(ValueError, match="fused"):
        GraphedStep(ELBOLoss(vae, Trace_ELBO()), params, torch.optim.Adam(params), _batches()[0])
    step = GraphedStep(
        ELBOLoss(vae, Trace_ELBO()), params, fused_adam(params, 1e-3), _batches()[0], graph=False
    )
    with pytest.raises(ValueError, match="eager step"):
        step(torch.rand(3, 1, 4, 4))


def test_the_captured_step_leaves_a_parameter_the_loss_does_not_use():
    """A parameter outside the loss gets no gradient from the captured graph, and keeps none an
    eager step left (the epoch's last batch), so Adam does not move it."""
    vae = _vae()
    vae.unused = torch.nn.Parameter(torch.zeros(3))
    params = list(vae.parameters())
    step = GraphedStep(ELBOLoss(vae, Trace_ELBO()), params, fused_adam(params, 1e-2), _batches()[0])
    vae.unused.grad = torch.ones(3)  # as an eager step's gradient would be
    step(torch.bernoulli(_batches()[1]))
    assert vae.unused.grad is None and torch.equal(vae.unused.detach(), torch.zeros(3))
    assert step.read()[1] == 0
