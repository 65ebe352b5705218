"""Table-driven tests over the registries: a newly registered component is tested here at once."""

import itertools
import math
import re

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae import checkpoint
from pyrovae.build import build_model
from pyrovae.config import Config, ConfigError
from pyrovae.guides import GUIDES
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.nets import NETS
from pyrovae.priors import PRIORS

#: the built-in guides and a user's guide ("lowrank", written outside pyrovae in conftest), which the
#: fixture below registers for each test of this module, so every table here covers it
ALL_GUIDES = [*GUIDES, "lowrank"]
SHAPES = {
    "mlp": [(1, 8, 8), (3, 4, 4), (12,)],
    "conv": [(1, 8, 8), (3, 4, 4)],
    "burgess": [(1, 16, 16), (3, 16, 32)],
}
# burgess needs sides divisible by 16 and follows conv's protocol: it is traced with the default
# components at two shapes, and trains from the command line on dsprites (test_disentanglement_cli)
FULL_NETS = [n for n in NETS if n != "burgess"]
# a prior that scores z under the guide (it binds to it, as the VampPrior) needs a guide that scores any z
REFUSED = {(p, g) for p, P in PRIORS.items() for g, G in GUIDES.items()
           if hasattr(P, "bind") and not getattr(G, "scores_any_z", True)}  # fmt: skip
UNCONDITIONAL_PRIORS = [p for p, P in PRIORS.items() if not getattr(P, "needs_labels", False)]


@pytest.fixture(autouse=True)
def _users_guide(user_components):
    yield


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_data_file):
    return tiny_data_file(tmp_path_factory.mktemp("data"), n=60, shape=(1, 8, 8))


COMBOS = [
    (p, g, lik, net, shape)
    for p, g, lik in itertools.product(UNCONDITIONAL_PRIORS, ALL_GUIDES, LIKELIHOODS)
    for net in FULL_NETS
    for shape in SHAPES[net][:1]
] + [("normal", "diag", "bernoulli", net, shape) for net in NETS for shape in SHAPES[net][net == "burgess" :]]


@pytest.mark.parametrize("prior,guide,likelihood,net,shape", COMBOS)
def test_every_combination_traces_and_gets_gradients(
    prior, guide, likelihood, net, shape, component_config, component_data
):
    try:
        vae = build_model(component_config(prior, guide, likelihood, net), shape)
    except ConfigError as e:
        assert (prior, guide) in REFUSED, f"refused unexpectedly: {e}"
        assert "use --guide" in str(e)
        return
    assert (prior, guide) not in REFUSED
    x = component_data(likelihood, shape)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, guide_tr)).get_trace(x)
    assert guide_tr.nodes["z"]["value"].shape == (6, 2)
    assert model_tr.nodes["z"]["fn"].batch_shape == (6,) and model_tr.nodes["z"]["fn"].event_shape == (2,)
    assert model_tr.nodes["x"]["fn"].event_shape == shape
    loss = Trace_ELBO(num_particles=2, vectorize_particles=True).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize(
    "prior,guide,likelihood",
    [(p, g, lk) for p in UNCONDITIONAL_PRIORS for g in ALL_GUIDES for lk in LIKELIHOODS][::5],
)
def test_save_load_gives_identical_elbo(tmp_path, prior, guide, likelihood, component_config, component_data):
    shape = (1, 4, 4)
    cfg = component_config(prior, guide, likelihood)
    try:
        vae = build_model(cfg, shape)
    except ConfigError:
        assert (prior, guide) in REFUSED
        return
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.01 * torch.randn_like(p))  # move off the initial values
    checkpoint.save({"model": vae.state_dict()}, tmp_path / "m.pt")
    other = build_model(cfg, shape)
    other.load_state_dict(checkpoint.load(tmp_path / "m.pt")["model"])
    x = component_data(likelihood, shape)
    losses = []
    for m in (vae, other):
        pyro.set_rng_seed(5)
        losses.append(Trace_ELBO().loss(m.model, m.guide, x))
    assert losses[0] == losses[1]


@pytest.mark.parametrize(
    "net,shape,use",
    [("conv", (12,), "--net mlp"), ("conv", (1, 6, 6), "--net mlp"), ("burgess", (1, 8, 8), "--net conv"),
     ("burgess", (784,), "--net mlp for flat")],
)  # fmt: skip
def test_nonsense_combinations_are_refused_naming_a_net_that_takes_the_data(
    net, shape, use, component_config
):
    with pytest.raises(ConfigError, match=f"use {use}") as refused:
        build_model(component_config(net=net), shape)
    if len(shape) == 1:  # conv takes no flat vectors: not offered for them
        assert "conv" not in str(refused.value).split("use ")[-1]


@pytest.mark.parametrize(
    "prior,guide,likelihood,net",
    list(itertools.product(UNCONDITIONAL_PRIORS, ALL_GUIDES, LIKELIHOODS, FULL_NETS)),
)
def test_every_combination_trains_from_the_cli_and_reloads(
    tmp_path, tiny_file, capsys, check_evaluation, prior, guide, likelihood, net
):
    from pyrovae.cli import main

    run = tmp_path / "r"
    args = ["train", "--dataset", "file", "--data-file", str(tiny_file), "--epochs", "1", "--z-dim", "2",
            "--hidden", "8", "--batch-size", "24", "--val-size", "6", "--components", "3", "--pseudo-inputs", "4",
            "--prior", prior, "--guide", guide, "--likelihood", likelihood, "--net", net, "--out", str(run),
            "--no-eval", "--quiet"]  # fmt: skip
    code = main(args)
    if (prior, guide) in REFUSED:
        assert code == 2 and "VampPrior" in capsys.readouterr().err and not run.exists()
        return
    assert code == 0
    assert main(["evaluate", str(run), "--k", "3", "--n-test", "6"]) == 0

    res = check_evaluation(run)  # ELBO <= log p(x), beta-free and chunk-invariant evaluation
    assert res.get("k", 3) == 3 and all(math.isfinite(v) for v in res.values() if isinstance(v, float))


def test_a_registered_guide_trains_from_python_and_the_cli_and_reloads(
    tmp_path, tiny_file, capsys, user_components
):
    LowRankGuide = user_components["lowrank"]
    import pyrovae
    from pyrovae.arguments import parser as _parser
    from pyrovae.cli import main

    opts = dict(dataset="file", data_file=str(tiny_file), guide="lowrank", epochs=1, z_dim=2, hidden=[8],
                batch_size=24, val_size=6, eval_k=3)  # fmt: skip
    run = pyrovae.train(Config(**opts), tmp_path / "py", progress=False)
    assert isinstance(run.model.guide_net, LowRankGuide) and math.isfinite(run.results["log_likelihood"])
    again = pyrovae.load_run(tmp_path / "py")
    assert isinstance(again.model.guide_net, LowRankGuide)
    x = again.data.test.x
    pyro.set_rng_seed(0)
    a = Trace_ELBO().loss(run.model.model, run.model.guide, x)
    pyro.set_rng_seed(0)
    assert Trace_ELBO().loss(again.model.model, again.model.guide, x) == a

    train_help = _parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "lowrank" in re.search(r"--guide NAME\s+guide family[^{]*\{([^}]*)\}", train_help)[1].split(", ")
    args = ["train", "--dataset", "file", "--data-file", str(tiny_file), "--guide", "lowrank", "--epochs", "1",
            "--z-dim", "2", "--hidden", "8", "--batch-size", "24", "--val-size", "6", "--eval-k", "3",
            "--out", str(tmp_path / "cli"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert main(["evaluate", str(tmp_path / "cli"), "--k", "3"]) == 0
    assert "log p(x)" in capsys.readouterr().out

    del GUIDES["lowrank"]  # a process that has not registered it cannot rebuild the run: say so
    try:
        with pytest.raises(ConfigError, match=r"guide 'lowrank'.*GUIDES\['lowrank'\]"):
            pyrovae.load_run(tmp_path / "py")
    finally:
        GUIDES["lowrank"] = LowRankGuide
