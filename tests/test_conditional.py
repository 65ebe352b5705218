"""Conditional VAEs (``--conditional``): where the label enters the networks (``--label-layers``),
the class-wise VampPrior p(z | y) that ``--prior auto`` builds, and samples that show their class."""

import json
import math
from contextlib import nullcontext

import pyro
import pytest
import torch

from pyrovae import VAE, checkpoint, load_run, plots
from pyrovae.build import build_model
from pyrovae.cli import main
from pyrovae.config import Config, ConfigError
from pyrovae.data import load_mnist
from pyrovae.evaluate import cached_prior, evaluate, log_likelihood
from pyrovae.nets import NETS, ClassLinear, CondLinear
from pyrovae.posterior import sample_prior
from pyrovae.priors import VampPrior


def _distinct_rows(x: torch.Tensor) -> bool:
    flat = x.flatten(1)
    return bool((torch.cdist(flat, flat) + torch.eye(len(flat), dtype=x.dtype) > 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("net, shape", [("mlp", (1, 8, 8)), ("conv", (1, 8, 8))])
def test_the_label_enters_every_layer(net, shape, dtype):
    k, z_dim = 3, 2
    Encoder, Decoder = NETS[net]
    enc = Encoder(shape, [16], "relu", k, "every").to(dtype)
    dec = Decoder(shape, z_dim, [16], "relu", k, "every").to(dtype)
    x, y = torch.rand(5, *shape, dtype=dtype), torch.eye(k, dtype=dtype)[torch.tensor([0, 1, 2, 0, 1])]
    h = enc(x, y)
    assert h.shape == (5, 16 + k) and h.dtype == dtype
    assert torch.equal(h[:, -k:], y)  # the guide's heads see the label
    z = torch.randn(4, 5, z_dim, dtype=dtype)  # (particles, batch, z_dim)
    out = dec(z, y)
    assert out.shape == (4, 5, *shape) and out.dtype == dtype
    assert torch.allclose(out[2], dec(z[2], y), atol=1e-6)  # particle dimensions broadcast against y
    # the decoder's first layer is one weight matrix and bias per class: W_y z + b_y, by hand
    dense = dec.body if net == "mlp" else dec.dense
    first = dense.layers[0]
    assert isinstance(first, ClassLinear)
    w = first.lin.weight.unflatten(0, (k, 16))  # (classes, out, in)
    b = first.lin.bias.unflatten(0, (k, 16))
    labels = y.argmax(-1)
    by_hand = torch.einsum("boi,bi->bo", w[labels], z[0]) + b[labels]
    assert torch.allclose(first(z[0], y), by_hand)
    assert not torch.allclose(w[0], w[1])  # the classes' weights differ
    # every other layer scales and shifts its units by the label (FiLM), by hand for one layer
    assert all(isinstance(m, CondLinear) and m.film for m in dense.layers[1:])
    layer = enc.body.layers[0] if net == "mlp" else enc.dense.layers[0]
    inp = x.flatten(1) if net == "mlp" else enc.conv(x)
    gamma, beta = (y @ layer.cond.weight.T).chunk(2, -1)
    assert torch.allclose(layer(inp, y), (inp @ layer.weight.T + layer.bias) * (1 + gamma) + beta)
    # so at the same z, another label gives another image
    swapped = dec(z[0], y.roll(1, 0))
    assert (swapped - dec(z[0], y)).abs().flatten(1).amax(1).min() > 1e-3


def test_label_layers_input_appends_the_label_and_leaves_unconditional_models_alone():
    vae = build_model(Config(conditional=True, label_layers="input", prior="normal", z_dim=4, hidden=[8]),
                      (1, 4, 4), num_classes=3)  # fmt: skip
    assert vae.decoder.body[0].in_features == 4 + 3 and vae.guide_net.encoder.body[0].in_features == 16 + 3
    shapes = {}
    for layers in ("input", "every"):
        model = build_model(Config(z_dim=4, hidden=[8], label_layers=layers), (1, 4, 4))
        shapes[layers] = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes["input"] == shapes["every"]
    with pytest.raises(ConfigError, match="label_layers"):
        Config(label_layers="middle").validate()


def _class_vamp(guide: str, dtype=torch.float64):
    pyro.set_rng_seed(0)
    vae = build_model(Config(conditional=True, guide=guide, z_dim=2, hidden=[8], pseudo_inputs=6).validate(),
                      (1, 4, 4), num_classes=3).to(dtype)  # fmt: skip
    with torch.no_grad():
        vae.prior.logits.normal_()
        for p in vae.guide_net.parameters():
            p.add_(0.5 * torch.randn_like(p))  # components that differ from one another
    return vae


@pytest.mark.parametrize("guide", ["diag", "fullrank"])  # its own components / all, masked
def test_class_wise_vamp_prior_mixes_its_own_class_only(guide):
    vae = _class_vamp(guide)
    assert isinstance(vae.prior, VampPrior) and vae.prior.pseudo_inputs.shape == (6, 1, 4, 4)
    y = torch.tensor([0, 2, 2, 1])
    p = vae.prior_dist(y)
    assert p.batch_shape == (4,) and p.event_shape == (2,)
    # by hand: the guide at each class's two pseudo-inputs, encoded with that class's label,
    # weighted by the softmax of that class's logits; other classes' components weigh nothing
    q = vae.guide_net(vae.prior.pseudo_inputs, torch.eye(3, dtype=torch.float64).repeat_interleave(2, 0))
    own = torch.arange(6)[None] // 2 == y[:, None]  # (4, 6)
    w = torch.where(own, vae.prior.logits, -math.inf).log_softmax(-1)
    z = torch.randn(5, 4, 2, dtype=torch.float64)  # (particles, batch, z_dim)
    by_hand = torch.logsumexp(q.log_prob(z[..., None, :]) + w, -1)
    assert p.log_prob(z).dtype == torch.float64
    assert torch.allclose(p.log_prob(z), by_hand, atol=1e-10)
    with torch.no_grad(), cached_prior(vae):  # evaluation's cached mixture: the same density
        assert torch.allclose(vae.prior_dist(y).log_prob(z), by_hand, atol=1e-10)
    with pytest.raises(ValueError, match="needs labels"):
        vae.prior(None)


@pytest.mark.parametrize("cached", [False, True])
def test_a_sample_of_label_k_comes_from_class_ks_pseudo_inputs(cached):
    vae = _class_vamp("diag")
    with torch.no_grad():
        vae.prior.logits.copy_(torch.tensor([0.0, 30.0, 30.0, 0.0, 0.0, 0.0]))  # class 0: component 1
    q = vae.guide_net(vae.prior.pseudo_inputs, torch.eye(3, dtype=torch.float64).repeat_interleave(2, 0))
    loc, scale = q.base_dist.loc.detach(), q.base_dist.scale.detach()
    pyro.set_rng_seed(1)
    with torch.no_grad(), cached_prior(vae) if cached else nullcontext():
        z = vae.prior_dist(torch.zeros(4000, dtype=torch.long)).sample()  # (4000, z_dim)
        zz = vae.prior_dist(torch.ones(4000, dtype=torch.long)).sample()
    assert z.dtype == torch.float64
    # label 0 draws from component 1 only: its mean and scale, within Monte Carlo error
    se = 4 * scale[1] / math.sqrt(4000)
    assert ((z.mean(0) - loc[1]).abs() < se).all(), (z.mean(0), loc[1])
    assert torch.allclose(z.std(0), scale[1], rtol=0.06)
    # label 1 draws from component 2 (its logit of 30 among class 1's components 2 and 3)
    assert ((zz.mean(0) - loc[2]).abs() < 4 * scale[2] / math.sqrt(4000)).all()
    # and the images decoded by sample_prior are each their own draw
    assert _distinct_rows(sample_prior(vae, y=torch.full((8,), 2)))


def test_float64_conditional_model_evaluates_in_float64(tmp_path):
    vae = _class_vamp("diag")
    x, y = torch.bernoulli(torch.full((12, 1, 4, 4), 0.3, dtype=torch.float64)), torch.arange(12) % 3
    from pyrovae.data import Split

    res = evaluate(vae, Split(x, y), k=20)
    ll = log_likelihood(vae, x, y, k=20)
    assert ll.dtype == torch.float64 and res["elbo"] <= res["log_likelihood"] + 1
    assert sample_prior(vae, y=y).dtype == torch.float64


def test_vamp_prior_without_classes_refuses_labels():
    from pyrovae.models import VAE

    with pytest.raises(ValueError, match="cannot be conditioned"):
        VAE((1, 4, 4), 2, hidden=(8,), num_classes=3, prior=VampPrior(2, (1, 4, 4), 4))


def test_prior_auto_and_old_runs(tmp_path):
    assert (
        Config().prior == "auto"
        and Config().prior_family == "normal"
        and Config().label_layers_used == "every"
    )
    assert Config(semi_supervised=True, labeled=10).label_layers_used == "input"
    assert Config(conditional=True).prior_family == "vamp"
    assert Config(conditional=True, guide="iaf").prior_family == "conditional"  # IAF cannot score any z
    assert Config(conditional=True, prior="normal").prior_family == "normal"
    # a config.json written before label_layers existed: the label went to the input only
    d = json.loads(Config(conditional=True, prior="normal").to_json())
    del d["label_layers"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert Config.load(tmp_path / "config.json").label_layers == "input"
    del d["conditional"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    assert Config.load(tmp_path / "config.json").label_layers == "auto"  # unconditional: no matter


def test_conditional_run_trains_resumes_evaluates_and_samples_its_label(
    tmp_path, capsys, monkeypatch, tiny_data_file
):
    """``pyrovae train --conditional`` with the defaults through the CLI: the class-wise VampPrior
    and the label in every layer, resumed, evaluated, and ``pyrovae sample --label k``."""
    data = tiny_data_file(tmp_path, n=60, shape=(1, 8, 8))
    run = tmp_path / "run"
    base = ["train", "--dataset", "file", "--data-file", str(data), "--val-size", "6", "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--pseudo-inputs", "9", "--eval-k", "10", "--quiet",
            "--out", str(run), "--conditional"]  # fmt: skip
    assert main([*base, "--epochs", "1", "--no-eval"]) == 0
    before = checkpoint.load(run / "checkpoint.pt")["model"]["prior.logits_unconstrained"].clone()
    # resuming names the prior "auto" stands for, or nothing: the same run; another prior is refused
    assert (
        main(["train", "--out", str(run), "--resume", "--epochs", "2", "--prior", "normal", "--quiet"]) == 2
    )
    assert "prior: saved 'auto', given 'normal'" in capsys.readouterr().err
    # started with --no-eval, which a resume keeps: --eval asks for the evaluation
    assert (
        main(
            ["train", "--out", str(run), "--resume", "--epochs", "2", "--prior", "vamp", "--eval", "--quiet"]
        )
        == 0
    )
    assert Config.load(run / "config.json").prior == "auto"
    after = checkpoint.load(run / "checkpoint.pt")
    assert after["state"]["epoch"] == 2 and not torch.equal(
        after["model"]["prior.logits_unconstrained"], before
    )
    res = json.loads((run / "eval.json").read_text())
    assert res["elbo"] <= res["log_likelihood"] + 1 and res["k"] == 10

    loaded = load_run(run)
    vae = loaded.model
    assert isinstance(vae.prior, VampPrior) and vae.prior.members.shape == (3, 3)
    assert isinstance(vae.decoder.body.layers[0], ClassLinear)
    assert main(["evaluate", str(run), "--k", "5", "--n-test", "6", "--quiet"]) == 0
    assert json.loads((run / "eval.json").read_text())["k"] == 5

    drawn = []
    monkeypatch.setattr(plots, "image_grid", lambda images, *a, **kw: drawn.append(images))
    assert (
        main(["sample", str(run), "--label", "2", "-n", "12", "--seed", "4", "-o", str(tmp_path / "s.png")])
        == 0
    )
    pyro.set_rng_seed(4)
    expected = sample_prior(vae, y=torch.full((12,), 2, device=loaded.device))  # where `sample` drew them
    assert torch.equal(drawn[0], expected) and _distinct_rows(drawn[0])
    assert main(["sample", str(run), "--label", "3", "-o", str(tmp_path / "s.png")]) == 2
    assert "label 3 is not a class" in capsys.readouterr().err


def test_mnist_conditional_samples_show_their_label(mnist_dir, tmp_path, monkeypatch):
    """End to end on real MNIST: a one-epoch ``--conditional`` run on 5000 images, then
    ``pyrovae sample --label d`` for each digit, named by a nearest-class-mean classifier of real
    test images (82% on those). Samples that ignore the label score about 10%."""
    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    args = ["train", "--preset", "tutorial", "--conditional", "--epochs", "1", "--train-size", "5000",
            "--val-size", "1000", "--data-dir", str(mnist_dir), "--out", str(run_dir), "--quiet", "--no-eval"]  # fmt: skip
    assert main(args) == 0
    drawn = []
    monkeypatch.setattr(plots, "image_grid", lambda images, *a, **kw: drawn.append(images))
    for d in range(10):
        assert (
            main(["sample", str(run_dir), "--label", str(d), "-n", "100", "-o", str(tmp_path / "s.png")]) == 0
        )
    assert len(drawn) == 10 and all(x.shape == (100, 1, 28, 28) and _distinct_rows(x) for x in drawn)

    _, test, _ = load_mnist(mnist_dir)
    means = torch.stack([test.x[test.y == k].mean(0) for k in range(10)]).flatten(1)  # (10, 784)

    def classify(x):
        return torch.cdist(x.flatten(1), means).argmin(-1)

    assert (classify(test.x) == test.y).float().mean() > 0.75
    acc = torch.stack([(classify(x) == d).float().mean() for d, x in enumerate(drawn)])
    # measured at this budget: 1.00 with the default model; 0.10 with the old one (--label-layers
    # input --prior normal draws the blurred mean of all digits, named 5 whatever the label)
    assert acc.mean() > 0.8, acc
    assert (acc > 0.5).all(), acc  # every label, not a few easy ones


def test_labels_are_one_hot_encoded_and_checked_while_pyro_validates():
    """``VAE.one_hot`` encodes class indices as ``F.one_hot`` does, without its check on the host
    at every call (which a captured step cannot hold): out-of-range labels are refused while
    Pyro's validation is on (the first training step, evaluation), with the range to use."""
    import torch.nn.functional as F

    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,), num_classes=3)
    x = torch.zeros(4, 1, 4, 4)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.equal(vae.one_hot(y, x), F.one_hot(y, 3).float())
    assert vae.one_hot(y, x.double()).dtype == torch.float64
    with (
        pyro.validation_enabled(True),
        pytest.raises(ValueError, match=r"class indices in \[0, 3\); got values from 0 to 3"),
    ):
        vae.one_hot(torch.tensor([0, 3]), x)
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="from -1 to 1"):
        vae.model(x[:2], torch.tensor([-1, 1]))


@pytest.mark.parametrize("n, per", [(2, 1), (4, 2), (6, 2)])
def test_sample_with_few_images_still_shows_every_class_in_its_row(tiny_conditional_run, tmp_path, monkeypatch,
                                                                   n, per):  # fmt: skip
    """``sample -n 2`` of a three-class run drew classes 0 and 1 under "one row per class", -n 4
    one image of class 2: every class gets a whole row (n rounded up), and the title says so."""
    from pyrovae import posterior

    drawn, labels, real = [], [], posterior.sample_prior
    monkeypatch.setattr(plots, "image_grid", lambda images, path, title, nrow=8: drawn.append((title, nrow)))
    monkeypatch.setattr(
        posterior, "sample_prior", lambda vae, n, y: labels.append(y.tolist()) or real(vae, n, y)
    )
    assert main(["sample", str(tiny_conditional_run.path), "-n", str(n), "-o", str(tmp_path / "s.png")]) == 0
    assert labels == [[c for c in range(3) for _ in range(per)]]
    assert drawn == [(f"Samples, one row of {per} per class (0, 1, 2)", per)]
