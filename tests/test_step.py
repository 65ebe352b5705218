"""The training step's parts: gradient norms and the optimizer's weight decay."""

import pytest
import torch

from pyrovae.config import Config
from pyrovae.step import make_optimizer, norm_of


def _grads(params):
    return [p.grad for p in params if p.grad is not None]  # as the steps collect them


def test_norm_of_is_the_total_norm_and_sees_nan_and_inf():
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(7, 3), (3,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn_like(p)
    assert norm_of(_grads(params)).item() == pytest.approx(
        torch.nn.utils.get_total_norm([p.grad for p in params]).item(), rel=1e-6
    )
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: left out, as torch does
    assert torch.isfinite(norm_of(_grads(params)))
    for bad in (float("nan"), float("inf")):
        params[1].grad[0] = bad
        assert not torch.isfinite(norm_of(_grads(params)))


def test_weight_decay_skips_biases_and_the_priors_and_likelihoods_own_parameters():
    from pyrovae.build import build_model
    from pyrovae.step import decay_groups, make_optimizer

    vae = build_model(Config(z_dim=2, hidden=[8], prior="learned", likelihood="normal"), (1, 4, 4))
    decay, rest = decay_groups(vae, 0.1)
    names = {id(p): n for n, p in vae.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in vae.named_parameters()
                                                        if n.endswith("weight") and p.dim() == 2}  # fmt: skip
    assert any(names[id(p)].startswith("prior.") for p in rest["params"])
    assert any(names[id(p)].startswith("likelihood.") for p in rest["params"])
    opt = make_optimizer([decay, rest], 1e-3, 0.1)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[1]["weight_decay"] == 0.0
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    for p in vae.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves parameters
    opt.step()
    for n, p in vae.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (id(p) in {id(q) for q in decay["params"]} and bool(before[n].abs().sum())), n


def test_a_checkpoint_with_a_float_learning_rate_keeps_the_optimizers_tensor():
    """Checkpoints written before the learning rate became a tensor hold a float; loading one must
    leave the optimizer's tensor in place (a captured step reads the rate from it), set to that value."""
    from pyrovae import VAE
    from pyrovae.loop import Loop

    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    opt = make_optimizer(list(vae.parameters()), 1e-3)
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and opt.defaults["fused"]
    loop = Loop(vae, opt, torch.device("cpu"), 0, 0, {})
    ck = loop.state_dict()
    ck["optimizer"]["param_groups"][0]["lr"] = 0.25  # as an older checkpoint saved it
    loop.load_state_dict(ck)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.25
