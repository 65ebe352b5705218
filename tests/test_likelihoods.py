"""Likelihoods: every one is Pyro's own Independent over the pixels; the continuous Bernoulli is
normalized at any logit in float32, has the right mean, and its output bias starts at the data mean."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pyrovae.cli import main
from pyrovae.distributions import ContinuousBernoulli
from pyrovae.likelihoods import LIKELIHOODS, Masked
from pyrovae.loaded import load_run

CB = LIKELIHOODS["cbernoulli"]


def _reference_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = x * eta - log int_0^1 exp(eta * t) dt, straight from the definition in float64."""
    eta, x = torch.broadcast_tensors(logits.double(), x.double())
    safe = torch.where(eta == 0, torch.ones_like(eta), eta)
    return torch.where(eta == 0, torch.zeros_like(eta), x * eta - torch.log(torch.expm1(safe) / safe))


def _quadrature(logit: float, dtype=torch.float32, n: int = 200_001) -> tuple[float, float]:
    """``int p(x) dx`` and ``int x p(x) dx`` by the trapezoidal rule, the density evaluated in ``dtype``
    through the likelihood (the sums run in float64, so only the density's own error shows)."""
    x = torch.linspace(0, 1, n, dtype=dtype)
    d = CB((1,))(torch.full((n, 1), logit, dtype=dtype))
    dens, x = d.log_prob(x[:, None]).exp().double(), x.double()
    return torch.trapezoid(dens, x).item(), torch.trapezoid(dens * x, x).item()


@pytest.mark.parametrize("logit", [-30.0, -16.0, 0.0, 16.0, 30.0])
def test_density_integrates_to_one_in_float32(logit):
    # torch's own ContinuousBernoulli gives 0.53 at +-30 and 0.996 at +-16 here
    mass, first_moment = _quadrature(logit)
    assert mass == pytest.approx(1.0, abs=1e-3)
    mean = CB((1,)).mean(torch.tensor([[logit]])).item()
    assert first_moment == pytest.approx(mean, abs=1e-4)


def test_log_prob_in_float32_matches_float64_reference():
    logits = torch.cat(
        [torch.linspace(-50, 50, 1001), torch.tensor([0.0, 1e-6, -1e-3, 0.4999, -0.5001, 15.9])]
    )
    x = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.99, 1.0])
    lp = ContinuousBernoulli(logits=logits[:, None]).log_prob(x)
    assert lp.dtype == torch.float32
    ref = _reference_log_prob(logits[:, None], x)
    # float32 rounding of x * eta (up to 50) sets the scale: a few 1e-6
    assert torch.allclose(lp.double(), ref, rtol=1e-6, atol=1e-5), (lp.double() - ref).abs().max()
    lp64 = ContinuousBernoulli(logits=logits[:, None].double()).log_prob(x.double())
    assert torch.allclose(lp64, ref, rtol=1e-12, atol=1e-12)


def test_mean_variance_and_sampling_at_large_logits():
    logits = torch.tensor([-1e4, -30.0, 0.0, 0.3, 30.0, 1e4])
    d = ContinuousBernoulli(logits=logits)
    eta = logits.double()
    mean = torch.where(eta == 0, 0.5, 1 / -torch.expm1(-eta) - 1 / eta)  # the definition, float64
    var = torch.where(eta == 0, 1 / 12, 1 / eta**2 - torch.exp(eta) / torch.expm1(eta) ** 2)
    assert torch.allclose(d.mean.double(), mean, rtol=1e-5)
    assert torch.allclose(d.variance.double()[1:-1], var[1:-1], rtol=1e-5)
    samples = d.sample((20000,))
    assert ((samples >= 0) & (samples <= 1)).all()
    # torch's sampler clamps as its density does: its mean at logit 30 is 0.937, not 0.967
    assert ((samples.mean(0) - d.mean).abs() < 5 * (d.variance / len(samples)).sqrt()).all()
    assert isinstance(d.expand((2, 6)), ContinuousBernoulli)


@pytest.mark.parametrize("data_mean", [0.05, 0.3, 0.5, 0.9])
def test_bias_from_mean_gives_the_data_mean(data_mean):
    lik = CB((1,))
    bias = lik.bias_from_mean(torch.tensor([data_mean]))
    assert bias.dtype == torch.float32
    assert lik.mean(bias).item() == pytest.approx(data_mean, abs=1e-4)
    # and by quadrature, independently of the closed-form mean
    assert _quadrature(bias.item(), torch.float64)[1] == pytest.approx(data_mean, abs=1e-4)


def test_bias_from_mean_clamps_and_keeps_dtype():
    lik = CB((4,))
    bias = lik.bias_from_mean(torch.tensor([0.0, 1e-4, 0.5, 1.0], dtype=torch.float64))
    assert bias.dtype == torch.float64 and torch.isfinite(bias).all()
    assert torch.allclose(lik.mean(bias), torch.tensor([1e-4, 1e-4, 0.5, 1 - 1e-4], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept_and_gradients_are_finite(dtype):
    logits = torch.tensor([0.0, 1e-30, -0.5, 0.5, -30.0, 30.0, 1e4], dtype=dtype, requires_grad=True)
    x = torch.full_like(logits, 0.3)
    d = CB((7,))(logits)
    for t in (d.log_prob(x), d.mean, d.variance, d.base_dist.entropy(), d.sample()):
        assert t.dtype == dtype and torch.isfinite(t).all()
    (g,) = torch.autograd.grad(d.log_prob(x), logits)
    assert torch.isfinite(g).all()
    # d/d(eta) log p(x) = x - mean: the exponential-family score
    assert torch.allclose(g, (x - d.mean).detach(), atol=1e-6 if dtype == torch.float32 else 1e-14)
    (g,) = torch.autograd.grad(d.mean.sum(), logits)
    assert torch.isfinite(g).all() and torch.allclose(g, d.variance.detach(), rtol=1e-4)


def test_trained_model_elbo_in_float32_matches_float64(tmp_path, tiny_data_file):
    """Grey data with an always-black border, as MNIST has: the output bias starts those pixels at
    logit -1e4, far past where torch's float32 density stops being normalized."""
    src = torch.load(tiny_data_file(tmp_path, n=120, binary=False))
    src["x"][..., 0] = src["x"][..., -1] = 0.0
    data = tmp_path / "grey.pt"
    torch.save(src, data)
    run = tmp_path / "run"
    args = ["train", "--dataset", "file", "--data-file", str(data), "--binarize", "none",
            "--likelihood", "cbernoulli", "--epochs", "2", "--z-dim", "2", "--hidden", "16",
            "--batch-size", "24", "--val-size", "12", "--eval-k", "2", "--eval-n-test", "4",
            "--out", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((run / "eval.json").read_text())

    vae, x = (r := load_run(run)).model, r.data.test.x
    pyro.set_rng_seed(0)  # as the evaluation did: the same z for the first (only) batch
    z = poutine.trace(vae.guide).get_trace(x, None).nodes["z"]["value"]
    with torch.no_grad():
        out = vae.decoder(z, None)
        recon32 = vae.likelihood(out).log_prob(x)
        vae64 = load_run(run).model.double()
        out64 = vae64.decoder(z.double(), None)
        recon64 = vae64.likelihood(out64).log_prob(x.double())
    assert (out.abs() > 16).float().mean() > 0.2  # past torch's float32 clamp
    assert torch.allclose(recon64, _reference_log_prob(out64, x).sum((1, 2, 3)), rtol=1e-12)
    assert recon32.mean().item() == pytest.approx(res["recon"], rel=1e-6)  # the reported figure
    # nats per image (torch's ContinuousBernoulli: 13 here, both dtypes off the definition)
    assert (recon32.double() - recon64).abs().max() < 0.05
    assert recon64.mean().item() - res["kl"] == pytest.approx(res["elbo"], abs=0.05)


@pytest.mark.parametrize("likelihood", [*LIKELIHOODS, "masked"])
def test_likelihood_log_prob_and_gradient_are_pyros_to_event(likelihood, component_data):
    shape = (1, 4, 4)
    if likelihood == "masked":
        lik = Masked(LIKELIHOODS["bernoulli"](shape), torch.rand(shape) < 0.5)
    else:
        lik = LIKELIHOODS[likelihood](shape).double()
    out = torch.randn(3, 5, *shape, dtype=torch.float64, requires_grad=True)  # particles lead
    x = component_data("bernoulli" if likelihood == "masked" else likelihood, shape, n=5).double()
    ours = lik(out)
    pyros = lik(out).base_dist.to_event(len(shape))  # Pyro's own Independent over the same pixels
    lp, ref = ours.log_prob(x), pyros.log_prob(x)
    assert lp.shape == (3, 5) and lp.dtype == torch.float64 and torch.allclose(lp, ref, rtol=1e-12)
    (g,) = torch.autograd.grad(lp.sum(), out)
    assert torch.allclose(g, torch.autograd.grad(ref.sum(), out)[0], rtol=1e-12)


def test_conv_decoder_with_a_continuous_bernoulli_starts_at_the_mean_and_trains(mnist_dir, tmp_path):
    """docs/python-api.md's `--net conv --likelihood cbernoulli --binarize none`: the conv decoder's
    one bias per channel starts where the channel's mean grey value is the likelihood's mean (the
    mean of per-pixel logits was about -2400, every pixel's density e^-2400, and training ended
    near -245,000 nats/image)."""
    from pyrovae import Config, build_model, train

    cfg = Config(net="conv", likelihood="cbernoulli", binarize="none", elbo="meanfield", epochs=1,
                 train_size=1000, val_size=200, z_dim=16, eval_k=5, eval_n_test=200)  # fmt: skip
    run = train(cfg, tmp_path / "run", progress=False)
    mean = run.data.train.x.mean(0)
    fresh = build_model(cfg, run.data.x_shape)
    fresh.init_output_bias(mean)
    expected = fresh.likelihood.bias_from_mean(mean.mean().reshape(1))
    torch.testing.assert_close(fresh.decoder.out.bias, expected)
    assert -10 < expected.item() < -5  # the continuous Bernoulli whose mean is MNIST's 0.13
    assert run.results["elbo"] > 300  # continuous Bernoulli densities of grey MNIST: nats per image
    assert run.results["log_likelihood"] >= run.results["elbo"]


class PlainBernoulli(PyroModule):
    """The protocol's minimum: no support, needs_binary or bias_from_mean."""

    def __init__(self, x_shape):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def forward(self, out):
        return dist.Bernoulli(logits=out).to_event(len(self.x_shape))


def test_a_likelihood_without_bias_from_mean_trains_with_the_default_init_bias(tmp_path, tiny_data_file,
                                                                              tiny_config, monkeypatch):  # fmt: skip
    """bias_from_mean, support and needs_binary are optional in the protocol (docs/python-api.md):
    without them the decoder keeps its own initialization instead of the run failing with an
    AttributeError."""
    from pyrovae import train

    monkeypatch.setitem(LIKELIHOODS, "plainbern", PlainBernoulli)
    cfg = tiny_config(tiny_data_file(tmp_path), likelihood="plainbern", epochs=2, binarize="dynamic")
    assert cfg.init_bias
    run = train(cfg, tmp_path / "run", progress=False, evaluate=False)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and run.model.likelihood.__class__ is PlainBernoulli
    ref = train(tiny_config(tiny_data_file(tmp_path), epochs=2, init_bias=False), tmp_path / "ref",
                progress=False, evaluate=False)  # fmt: skip
    for a, b in zip(run.model.parameters(), ref.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the same Bernoulli, the decoder's bias left as initialized


def test_grey_data_for_a_likelihood_without_needs_binary_is_named_not_called_a_nan(tmp_path, tiny_data_file,
                                                                                  capsys, monkeypatch):  # fmt: skip
    """Pyro's validation refuses grey targets for a Bernoulli written without ``needs_binary``: the
    run says so, naming the likelihood and the remedies, where it used to report a NaN loss and
    advise a lower learning rate. NaN parameters still count as a non-finite loss."""
    from pyrovae.step import svi_step

    monkeypatch.setitem(LIKELIHOODS, "plainbern", PlainBernoulli)
    data = tiny_data_file(tmp_path, binary=False)
    args = ["train", "--dataset", "file", "--data-file", str(data), "--likelihood", "plainbern", "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--val-size", "10", "--epochs", "1", "--quiet"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "likelihood plainbern" in err and "--binarize dynamic" in err and "needs_binary" in err, err
    assert "non-finite" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main([*args, "--binarize", "dynamic", "--out", str(tmp_path / "ok")]) == 0, capsys.readouterr().err

    def nan_parameters(*_):
        return dist.Bernoulli(logits=torch.tensor([float("nan")]), validate_args=True)

    assert math.isnan(svi_step(nan_parameters, None, [], None)[0])
