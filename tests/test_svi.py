"""``pyrovae.SVI``: a script written for ``pyro.infer.SVI`` with pyrovae's step in its place trains as
Pyro's does (to float rounding), its traced step makes the eager step's updates bit for bit, and
what it cannot do it refuses or says."""

import pyro
import pyro.optim
import pytest
import torch

import pyrovae
from pyrovae import VAE
from pyrovae import svi as svi_module


def _vae(**kw) -> VAE:
    torch.manual_seed(0)
    return VAE((1, 6, 6), z_dim=3, hidden=(16,), **kw)


def _batches(n=30, size=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.bernoulli(torch.rand(size, 1, 6, 6, generator=g), generator=g) for _ in range(n)]


def _train(make_svi, batches, optim=None, elbo=None, vae=None, **call):
    """Losses and final parameters of ``svi.step`` over ``batches`` from the same start and noise."""
    pyro.clear_param_store()
    vae = vae or _vae()
    svi = make_svi(
        vae.model, vae.guide, optim or pyro.optim.Adam({"lr": 1e-2}), elbo or pyro.infer.Trace_ELBO()
    )
    torch.manual_seed(5)
    losses = [svi.step(*(b if isinstance(b, tuple) else (b,)), **call) for b in batches]
    return losses, [p.detach().clone() for p in vae.parameters()], svi


def _step(kind):
    return lambda *a: pyrovae.SVI(*a, step=kind)


@pytest.mark.parametrize(
    "optim",
    [
        pyro.optim.Adam({"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}),
        pyro.optim.AdamW({"lr": 1e-2}),  # torch's default decay of 0.01, as Pyro's optimizer has it
        pyro.optim.Adam({"lr": 1e-2, "weight_decay": 0.1}),
    ],
    ids=["adam-betas-eps", "adamw-default-decay", "adam-l2"],
)
@pytest.mark.parametrize("kind", ["eager", "graphed"])
def test_trains_as_pyro_infer_svi_does(optim, kind):
    pyro_losses, pyro_params, _ = _train(pyro.infer.SVI, _batches(), optim)
    losses, params, svi = _train(_step(kind), _batches(), optim)
    assert svi.graphed == (kind == "graphed")
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(pyro_losses), rtol=1e-5, atol=0)
    for p, q in zip(params, pyro_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    # and they moved: 30 steps of lr 1e-2 change every parameter by far more than the tolerance
    start = [p.detach() for p in _vae().parameters()]
    assert all((p - s).abs().max() > 1e-3 for p, s in zip(params, start, strict=True))


@pytest.mark.parametrize("kind", ["eager", "graphed"])
def test_a_float64_model_trains_as_pyro_infer_svi_does_to_float64_rounding(kind):
    batches = [b.double() for b in _batches(n=20)]
    _, pyro_params, _ = _train(pyro.infer.SVI, batches, vae=_vae().double())
    _, params, svi = _train(_step(kind), batches, vae=_vae().double())
    assert svi.graphed == (kind == "graphed")
    assert svi.optimizer.param_groups[0]["lr"].dtype == torch.float64  # not rounded to float32
    for p, q in zip(params, pyro_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)  # a float32 rate: differences of 1e-9


def test_the_traced_step_makes_the_eager_steps_updates_bit_for_bit():
    eager, e_params, _ = _train(_step("eager"), _batches())
    graphed, g_params, svi = _train(_step("graphed"), _batches())
    assert svi.graphed and not svi.failed
    assert all(torch.equal(a, b) for a, b in zip(e_params, g_params, strict=True))
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-6, atol=0)


def test_auto_traces_after_trace_after_steps_of_one_shape_and_other_shapes_stay_eager(monkeypatch):
    monkeypatch.setattr(svi_module, "TRACE_AFTER", 5)
    batches = _batches(12)
    batches[8] = batches[8][:7]  # a short batch, as an epoch's last: not the traced shape
    seen = []

    class Watch(pyrovae.SVI):
        def step(self, *a, **k):
            out = super().step(*a, **k)
            seen.append(self.graphed)
            return out

    auto, a_params, _ = _train(Watch, batches)
    assert seen == [False] * 4 + [True] * 8  # traced at the fifth step of the full batches' shape
    eager, e_params, _ = _train(_step("eager"), batches)
    assert all(torch.equal(a, b) for a, b in zip(a_params, e_params, strict=True))
    torch.testing.assert_close(torch.tensor(auto), torch.tensor(eager), rtol=1e-6, atol=0)


def test_a_keyword_argument_is_part_of_the_traced_step_and_another_value_is_not_replayed():
    """beta=0.5 is traced into the graph; a later call with beta=1 must run beta=1."""
    batches = _batches(10)

    def run(make):
        pyro.clear_param_store()
        vae = _vae()
        svi = make(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
        torch.manual_seed(5)
        losses = [svi.step(b, beta=0.5 if i < 6 else 1.0) for i, b in enumerate(batches)]
        return losses, [p.detach().clone() for p in vae.parameters()], svi

    graphed, g_params, svi = run(_step("graphed"))
    eager, e_params, _ = run(_step("eager"))
    assert svi.graphed
    assert all(torch.equal(a, b) for a, b in zip(g_params, e_params, strict=True))
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-6, atol=0)
    # beta scales the KL: the same batch's loss differs between 0.5 and 1
    pyro.clear_param_store()
    vae = _vae()
    torch.manual_seed(3)
    half = pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, batches[0], beta=0.5)
    torch.manual_seed(3)
    assert abs(half - pyro.infer.Trace_ELBO().loss(vae.model, vae.guide, batches[0], beta=1.0)) > 1e-3


def test_a_conditional_vae_with_labels_traced_as_eager():
    g = torch.Generator().manual_seed(2)
    batches = [(x, torch.randint(0, 3, (12,), generator=g)) for x in _batches(8)]
    graphed, g_params, svi = _train(_step("graphed"), batches, vae=_vae(num_classes=3))
    eager, e_params, _ = _train(_step("eager"), batches, vae=_vae(num_classes=3))
    assert svi.graphed
    assert all(torch.equal(a, b) for a, b in zip(g_params, e_params, strict=True))
    pyro_losses, _, _ = _train(pyro.infer.SVI, batches, vae=_vae(num_classes=3))
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(pyro_losses), rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind", ["eager", "graphed"])
def test_a_step_with_a_nan_loss_is_skipped_and_says_nan(kind):
    batches = _batches(6)
    poisoned = batches[4].clone()
    poisoned[0, 0, 0, 0] = float("nan")
    pyro.clear_param_store()
    vae = _vae()
    svi = pyrovae.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO(), step=kind)
    for b in batches[:4]:
        svi.step(b)
    before = [p.detach().clone() for p in vae.parameters()]
    assert torch.isnan(torch.tensor(svi.step(poisoned)))
    assert all(torch.equal(p, q) for p, q in zip(vae.parameters(), before, strict=True))
    assert torch.isfinite(torch.tensor(svi.step(batches[5])))  # and the next good step trains
    assert not all(torch.equal(p, q) for p, q in zip(vae.parameters(), before, strict=True))


def test_evaluate_loss_is_pyros():
    pyro.clear_param_store()
    vae = _vae()
    x = _batches(1)[0]
    svi = pyrovae.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.TraceMeanField_ELBO())
    svi.step(x)
    torch.manual_seed(4)
    ours = svi.evaluate_loss(x)
    torch.manual_seed(4)
    assert ours == pytest.approx(pyro.infer.TraceMeanField_ELBO().loss(vae.model, vae.guide, x), rel=1e-6)


@pytest.mark.parametrize(
    "optim, loss, step, words",
    [
        (pyro.optim.SGD({"lr": 0.1}), pyro.infer.Trace_ELBO(), "auto", "Adam or AdamW"),
        (
            pyro.optim.Adam(lambda name, p: {"lr": 0.1}),
            pyro.infer.Trace_ELBO(),
            "auto",
            "arguments per parameter",
        ),
        (pyro.optim.Adam({"lr": 0.1}, {"clip_norm": 1.0}), pyro.infer.Trace_ELBO(), "auto", "clipping"),
        (pyro.optim.Adam({"lr": 0.1}), pyro.infer.TraceGraph_ELBO(), "auto", "differentiable_loss"),
        (pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO(), "fast", "step must be one of"),
    ],
)
def test_what_it_cannot_do_is_refused_with_the_way_out(optim, loss, step, words):
    vae = _vae()
    with pytest.raises(ValueError, match=words):
        pyrovae.SVI(vae.model, vae.guide, optim, loss, step=step)


def test_a_parameter_created_after_the_first_step_is_warned_of():
    calls = []

    def model(x):
        calls.append(1)
        loc = pyro.param("loc", torch.zeros(2))
        if len(calls) > 2:
            pyro.param("late", torch.zeros(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0).to_event(1), obs=x)

    svi = pyrovae.SVI(
        model, lambda x: None, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO(), step="eager"
    )
    x = torch.ones(4, 2)
    svi.step(x)
    with pytest.warns(UserWarning, match="parameters its first step used"):
        svi.step(x)
        svi.step(x)
    assert pyro.param("loc").detach().tolist() == pytest.approx(
        [0.3, 0.3], abs=0.02
    )  # three Adam steps of 0.1
    with pytest.raises(ValueError, match="no parameters"):
        pyrovae.SVI(
            lambda x: None, lambda x: None, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO()
        ).step(x)


def test_a_users_script_on_mnist_reaches_pyro_infer_svis_elbo(mnist_dir, monkeypatch):
    """The README's kind of script on real MNIST, with pyrovae.SVI in place of pyro.infer.SVI: it
    traces its step partway and ends where Pyro's SVI ends."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(svi_module, "TRACE_AFTER", 50)
    images = MNIST(root=str(mnist_dir), train=True, download=False).data[:3000]
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(images.float().div(255).unsqueeze(1), generator=g)
    batches = list(x.split(100)) * 4  # 120 steps of 100 images

    def run(make):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE((1, 28, 28), z_dim=10, hidden=(200,))
        svi = make(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
        torch.manual_seed(1)
        losses = [svi.step(b) / len(b) for b in batches]
        return sum(losses[-30:]) / 30, svi

    ours, svi = run(pyrovae.SVI)
    theirs, _ = run(pyro.infer.SVI)
    assert svi.graphed
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert 150 < ours < 230  # -ELBO in nats per image after 120 steps: far below the 543 of the start


@pytest.mark.parametrize("kind", ["eager", "graphed"])
def test_a_plain_pyro_program_with_pyro_module_and_a_constrained_param(kind):
    """Not only pyrovae's VAE: Pyro's tutorial style (pyro.module, a positive pyro.param)."""
    from torch import nn

    def make():
        torch.manual_seed(0)
        enc, dec = nn.Linear(36, 6), nn.Linear(3, 36)

        def model(x):
            pyro.module("dec", dec)
            temp = pyro.param("temp", torch.tensor(2.0), constraint=pyro.distributions.constraints.positive)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(3), 1.0).to_event(1))
                pyro.sample("x", pyro.distributions.Bernoulli(logits=dec(z) / temp).to_event(1), obs=x)

        def guide(x):
            pyro.module("enc", enc)
            with pyro.plate("data", x.shape[0]):
                h = enc(x)
                pyro.sample("z", pyro.distributions.Normal(h[:, :3], h[:, 3:].exp()).to_event(1))

        return model, guide

    batches = [b.flatten(1) for b in _batches(20)]
    out = {}
    for name, cls in [("pyro", pyro.infer.SVI), ("ours", _step(kind))]:
        pyro.clear_param_store()
        model, guide = make()
        svi = cls(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
        torch.manual_seed(5)
        losses = [svi.step(b) for b in batches]
        out[name] = losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}, svi
    assert out["ours"][2].graphed == (kind == "graphed")
    torch.testing.assert_close(torch.tensor(out["ours"][0]), torch.tensor(out["pyro"][0]), rtol=1e-5, atol=0)
    assert out["ours"][1].keys() == out["pyro"][1].keys() and "temp" in out["ours"][1]
    for k, v in out["ours"][1].items():
        torch.testing.assert_close(v, out["pyro"][1][k], rtol=1e-4, atol=1e-6)
    assert abs(out["ours"][1]["temp"].item() - 2.0) > 0.05  # the constrained parameter trained


def test_a_vae_beta_set_between_steps_is_not_replayed_from_the_trace():
    batches = _batches(10)

    def run(kind):
        pyro.clear_param_store()
        vae = _vae()
        svi = pyrovae.SVI(
            vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO(), step=kind
        )
        torch.manual_seed(5)
        losses = []
        for i, b in enumerate(batches):
            vae.beta = 0.1 * (i + 1)  # a warm-up written as a user might: on the model, not as an argument
            losses.append(svi.step(b))
        return losses, [p.detach().clone() for p in vae.parameters()]

    graphed, g_params = run("graphed")
    eager, e_params = run("eager")
    assert all(torch.equal(a, b) for a, b in zip(g_params, e_params, strict=True))
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=1e-6, atol=0)
