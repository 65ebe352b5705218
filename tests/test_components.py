"""Table-driven tests over the registries: a newly registered component is tested here at once."""

import itertools
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from torch import nn

from pyrovae import checkpoint
from pyrovae.build import build_model
from pyrovae.config import Config, ConfigError
from pyrovae.guides import GUIDES
from pyrovae.likelihoods import LIKELIHOODS, Masked
from pyrovae.nets import NETS
from pyrovae.priors import PRIORS


class LowRankGuide(PyroModule):
    """A user's guide, written to the protocol only: q(z|x) = N(mu(x), F(x) F(x)^T + diag(d(x)))."""

    def __init__(self, encoder, z_dim, rank=2):
        super().__init__()
        self.encoder, self.z_dim, self.rank = encoder, z_dim, rank
        self.loc = nn.Linear(encoder.feature_dim, z_dim)
        self.factor = nn.Linear(encoder.feature_dim, z_dim * rank)
        self.raw_diag = nn.Linear(encoder.feature_dim, z_dim)

    def forward(self, x, y=None):
        h = self.encoder(x, y)
        factor = self.factor(h).reshape(-1, self.z_dim, self.rank)
        return dist.LowRankMultivariateNormal(self.loc(h), factor, F.softplus(self.raw_diag(h)) + 1e-4)


#: Components defined here, outside pyrovae, and registered for the tests of this module only.
USER_GUIDES = {"lowrank": LowRankGuide}


@pytest.fixture(autouse=True)
def user_components():
    """Register the user's components for one test and remove them afterwards, so no other test
    sees them."""
    GUIDES.update(USER_GUIDES)
    yield
    for name in USER_GUIDES:
        del GUIDES[name]


ALL_GUIDES = {**GUIDES, **USER_GUIDES}
SHAPES = {"mlp": [(1, 8, 8), (3, 4, 4), (12,)], "conv": [(1, 8, 8), (3, 4, 4)]}
# a prior that scores z under the guide (it binds to it, as the VampPrior) needs a guide that scores any z
REFUSED = {(p, g) for p, P in PRIORS.items() for g, G in ALL_GUIDES.items()
           if hasattr(P, "bind") and not getattr(G, "scores_any_z", True)}  # fmt: skip
UNCONDITIONAL_PRIORS = [p for p, P in PRIORS.items() if not getattr(P, "needs_labels", False)]


def _cfg(prior="normal", guide="diag", likelihood="bernoulli", net="mlp", **kw):
    return Config(prior=prior, guide=guide, likelihood=likelihood, net=net, z_dim=2, hidden=[8],
                  components=3, pseudo_inputs=4, **kw)  # fmt: skip


def _data(likelihood, shape, n=6):
    x = torch.rand(n, *shape)
    return torch.bernoulli(x) if LIKELIHOODS[likelihood].needs_binary else x


COMBOS = [
    (p, g, lik, net, shape)
    for p, g, lik in itertools.product(UNCONDITIONAL_PRIORS, ALL_GUIDES, LIKELIHOODS)
    for net in NETS
    for shape in SHAPES[net][:1]
] + [("normal", "diag", "bernoulli", net, shape) for net in NETS for shape in SHAPES[net][1:]]


@pytest.mark.parametrize("prior,guide,likelihood,net,shape", COMBOS)
def test_every_combination_traces_and_gets_gradients(prior, guide, likelihood, net, shape):
    try:
        vae = build_model(_cfg(prior, guide, likelihood, net), shape)
    except ConfigError as e:
        assert (prior, guide) in REFUSED, f"refused unexpectedly: {e}"
        assert "use --guide" in str(e)
        return
    assert (prior, guide) not in REFUSED
    x = _data(likelihood, shape)
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
def test_save_load_gives_identical_elbo(tmp_path, prior, guide, likelihood):
    shape = (1, 4, 4)
    cfg = _cfg(prior, guide, likelihood)
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
    x = _data(likelihood, shape)
    losses = []
    for m in (vae, other):
        pyro.set_rng_seed(5)
        losses.append(Trace_ELBO().loss(m.model, m.guide, x))
    assert losses[0] == losses[1]


@pytest.mark.parametrize("likelihood", [*LIKELIHOODS, "masked"])
def test_likelihood_log_prob_and_gradient_are_pyros_to_event(likelihood):
    shape = (1, 4, 4)
    if likelihood == "masked":
        lik = Masked(LIKELIHOODS["bernoulli"](shape), torch.rand(shape) < 0.5)
    else:
        lik = LIKELIHOODS[likelihood](shape).double()
    out = torch.randn(3, 5, *shape, dtype=torch.float64, requires_grad=True)  # particles lead
    x = _data("bernoulli" if likelihood == "masked" else likelihood, shape, n=5).double()
    ours = lik(out)
    pyros = lik(out).base_dist.to_event(len(shape))  # Pyro's own Independent over the same pixels
    lp, ref = ours.log_prob(x), pyros.log_prob(x)
    assert lp.shape == (3, 5) and lp.dtype == torch.float64 and torch.allclose(lp, ref, rtol=1e-12)
    (g,) = torch.autograd.grad(lp.sum(), out)
    assert torch.allclose(g, torch.autograd.grad(ref.sum(), out)[0], rtol=1e-12)


def _grid(lim=7.0, n=281):
    t = torch.linspace(-lim, lim, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return zz, (t[1] - t[0]) ** 2


def _check_density(d, zz, cell, samples):
    """exp(log_prob) integrates to 1 and its mean matches the sampler's (2-D, by quadrature)."""
    with torch.no_grad():
        dens = d.log_prob(zz).exp()  # (points,)
        mass = (dens * cell).sum().item()
        mean_quad = (zz * dens[:, None] * cell).sum(0) / mass
    assert mass == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(samples.mean(0).double(), mean_quad, atol=0.1)


@pytest.mark.parametrize("prior", [p for p in UNCONDITIONAL_PRIORS if not hasattr(PRIORS[p], "bind")])
def test_prior_density_normalized_and_matches_its_samples(prior):
    vae = build_model(_cfg(prior), (1, 4, 4)).double()
    with torch.no_grad():
        for p in vae.prior.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a non-trivial prior that stays on the grid
    zz, cell = _grid()
    d = vae.prior_dist(like=zz)
    _check_density(d, zz, cell, d.sample((20000,)))


@pytest.mark.parametrize(
    "guide", [g for g, G in ALL_GUIDES.items() if not getattr(G, "point_estimate", False)]
)
def test_guide_density_normalized_and_matches_its_samples(guide):
    vae = build_model(_cfg(guide=guide), (1, 4, 4)).double()
    with torch.no_grad():
        for p in vae.guide_net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    zz, cell = _grid()
    q = vae.encode(x.expand(len(zz), 1, 4, 4))  # the same q for every grid point
    samples = vae.encode(x).sample((20000,))[:, 0]
    _check_density(q, zz, cell, samples)


def test_vamp_prior_is_the_guide_at_pseudo_inputs():
    vae = build_model(_cfg("vamp"), (1, 4, 4))
    z = torch.randn(5, 2)
    q = vae.guide_net(vae.prior.pseudo_inputs)  # batch (K,)
    by_hand = torch.logsumexp(q.log_prob(z[:, None]), -1) - math.log(4)
    assert torch.allclose(vae.prior_dist().log_prob(z), by_hand, atol=1e-5)


def test_delta_guide_is_a_regularized_autoencoder():
    vae = build_model(_cfg(guide="delta"), (1, 4, 4))
    x = _data("bernoulli", (1, 4, 4))
    tr = poutine.trace(vae.guide).get_trace(x)
    tr.compute_log_prob()
    assert torch.all(tr.nodes["z"]["log_prob"] == 0)  # log q = 0: loss is -log p(x|z) - log p(z)


@pytest.mark.parametrize("net,shape", [("conv", (12,)), ("conv", (1, 6, 6))])
def test_nonsense_combinations_are_refused(net, shape):
    with pytest.raises(ConfigError, match="--net mlp"):
        build_model(_cfg(net=net), shape)


def test_vamp_prior_takes_labels():  # p(z|y) per class: tests/test_conditional.py
    _cfg("vamp", conditional=True).validate()
    assert build_model(_cfg("vamp", conditional=True), (1, 4, 4), num_classes=2).prior.num_classes == 2


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from conftest import tiny_data_file

    return tiny_data_file(tmp_path_factory.mktemp("data"), n=60, shape=(1, 8, 8))


@pytest.mark.parametrize(
    "prior,guide,likelihood,net",
    list(itertools.product(UNCONDITIONAL_PRIORS, ALL_GUIDES, LIKELIHOODS, NETS)),
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


def test_a_registered_guide_trains_from_python_and_the_cli_and_reloads(tmp_path, tiny_file, capsys):
    import pyrovae
    from pyrovae.cli import _parser, main

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


def test_a_prior_that_needs_labels_is_refused_without_them():
    class LabelPrior(PyroModule):  # a user's p(z|y), as the conditional prior
        needs_labels = True

        def __init__(self, z_dim, num_classes):
            super().__init__()
            self.loc = nn.Linear(num_classes, z_dim)

        def forward(self, y=None):
            return dist.Normal(self.loc(y), 1.0).to_event(1)

    PRIORS["labelled"] = LabelPrior
    try:
        with pytest.raises(ConfigError, match="prior labelled is p\\(z\\|y\\): set conditional"):
            _cfg("labelled").validate()
        _cfg("labelled", conditional=True).validate()
    finally:
        del PRIORS["labelled"]
    assert PRIORS["conditional"].needs_labels and not getattr(PRIORS["normal"], "needs_labels", False)
