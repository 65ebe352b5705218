import os
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

DATA = os.environ.get("PYROVAE_DATA")


@pytest.fixture(autouse=True)
def _clean_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.enable_validation(False)


@pytest.fixture
def mnist_dir() -> Path:
    if not DATA or not (Path(DATA) / "MNIST" / "raw").exists():
        pytest.skip("set PYROVAE_DATA to a folder holding MNIST/raw/ to run the real-data tests")
    return Path(DATA).resolve()


def _tiny_data_file(
    tmp_path: Path, n: int = 120, shape=(1, 8, 8), classes: int = 3, binary: bool = True
) -> Path:
    """A small labelled data set with class structure, saved as a .pt file."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    proto = torch.rand(classes, *shape, generator=g)
    x = (proto[y] * 0.8 + 0.1 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
    if binary:
        x = torch.bernoulli(x, generator=g)
    path = tmp_path / "tiny.pt"
    torch.save({"x": x, "y": y}, path)
    return path


@pytest.fixture(scope="session")
def tiny_data_file():
    """``tiny_data_file(folder, n=120, shape=(1, 8, 8), classes=3, binary=True) -> path``: a small
    labelled data set with class structure, saved as a .pt file."""
    return _tiny_data_file


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(data_file, **options) -> Config``: a small, fast run on a tiny data file (z 2,
    one hidden layer of 16, batches of 16, 3 epochs, 12 validation images, seed 3)."""
    from pyrovae.config import Config

    def make(path, **kw):
        base = dict(dataset="file", data_file=str(path), z_dim=2, hidden=[16], batch_size=16, epochs=3,
                    val_size=12, seed=3)  # fmt: skip
        return Config(**{**base, **kw})

    return make


@pytest.fixture(scope="session")
def component_config():
    """``component_config(prior, guide, likelihood, net, **options) -> Config``: the smallest model
    of a component combination (z 2, one hidden layer of 8, 3 components, 4 pseudo-inputs)."""
    from pyrovae.config import Config

    def make(prior="normal", guide="diag", likelihood="bernoulli", net="mlp", **kw):
        return Config(prior=prior, guide=guide, likelihood=likelihood, net=net, z_dim=2, hidden=[8],
                      components=3, pseudo_inputs=4, **kw)  # fmt: skip

    return make


@pytest.fixture(scope="session")
def component_data():
    """``component_data(likelihood, shape, n=6) -> x``: random data a likelihood accepts (binarized
    for those normalized only on {0, 1})."""
    from pyrovae.likelihoods import LIKELIHOODS

    def make(likelihood, shape, n=6):
        x = torch.rand(n, *shape)
        return torch.bernoulli(x) if LIKELIHOODS[likelihood].needs_binary else x

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A model trained on a tiny three-class data set (15 epochs), loaded as a user would."""
    from pyrovae import train
    from pyrovae.config import Config
    from pyrovae.loaded import load_run

    tmp = tmp_path_factory.mktemp("post")
    data = _tiny_data_file(tmp, n=240, classes=3)
    cfg = Config(dataset="file", data_file=str(data), z_dim=3, hidden=[32], batch_size=16, val_size=24,
                 epochs=15, lr=3e-3)  # fmt: skip
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    train(cfg, tmp / "run", progress=False)
    return load_run(tmp / "run")


@pytest.fixture(scope="session")
def tiny_conditional_run(tmp_path_factory, tiny_config):
    """A conditional VAE (its class-wise VampPrior) trained briefly on the tiny three-class data."""
    from pyrovae import train
    from pyrovae.loaded import load_run

    tmp = tmp_path_factory.mktemp("cond")
    cfg = tiny_config(_tiny_data_file(tmp, n=60), conditional=True, pseudo_inputs=6, epochs=2)
    pyro.clear_param_store()
    train(cfg, tmp / "run", progress=False, evaluate=False)
    return load_run(tmp / "run")


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


#: Components defined outside pyrovae, as a user would, registered only for the tests that ask.
USER_GUIDES = {"lowrank": LowRankGuide}


@pytest.fixture
def user_components():
    """Register the user's components for one test and remove them afterwards, so no other test
    sees them."""
    from pyrovae.guides import GUIDES

    GUIDES.update(USER_GUIDES)
    yield USER_GUIDES
    for name in USER_GUIDES:
        del GUIDES[name]


@pytest.fixture(scope="session")
def check_density():
    """``check_density(log_prob, samples)``: the exp of a 2-D ``log_prob`` integrates to 1 over a grid,
    and its mean by quadrature matches the sampler's."""

    def check(log_prob, samples, lim=7.0, n=281):
        t = torch.linspace(-lim, lim, n, dtype=torch.float64)
        zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        cell = (t[1] - t[0]) ** 2
        with torch.no_grad():
            dens = log_prob(zz).exp()  # (points,)
            mass = (dens * cell).sum().item()
            mean_quad = (zz * dens[:, None] * cell).sum(0) / mass
        assert mass == pytest.approx(1.0, abs=0.02)
        assert torch.allclose(samples.mean(0).double(), mean_quad, atol=0.1)

    return check


@pytest.fixture
def poison_decoder(monkeypatch):
    """``poison_decoder(at_call)``: the decoder's ``at_call``-th forward pass returns NaN in the runs
    built by ``pyrovae.runs`` during the test (with 7 steps per epoch and one validation call, 11 is
    step 4 of epoch 2)."""
    import importlib

    T = importlib.import_module("pyrovae.runs")
    real_build = T.build_model

    def poison(at_call: int) -> None:
        calls = {"n": 0}

        def poisoned(*a, **k):
            vae = real_build(*a, **k)
            fwd = vae.decoder.forward

            def forward(z, y=None):
                calls["n"] += 1
                return fwd(z, y) * float("nan") if calls["n"] == at_call else fwd(z, y)

            vae.decoder.forward = forward
            return vae

        monkeypatch.setattr(T, "build_model", poisoned)

    return poison


@pytest.fixture
def check_evaluation(monkeypatch):
    """Properties every trained run must have, whatever its options:

    - the ELBO is not above the importance-sampled log p(x) beyond Monte Carlo noise;
    - β never enters evaluation (the same parameters evaluate the same at β = 4 and β = 1);
    - log p(x) estimated in chunks (a small ``MAX_ELEMENTS``) equals the unchunked estimate.
    """
    import importlib
    import json

    from pyrovae import load_run

    E = importlib.import_module("pyrovae.evaluate")

    def check(run_dir: Path) -> dict:
        run = load_run(run_dir)
        vae, test = run.model, run.data.test
        y = test.y if vae.num_classes else None
        x = test.x
        if E.is_point_estimate(vae):
            res = json.loads((run_dir / "eval.json").read_text())
            assert "elbo" not in res and "log_likelihood" not in res and "log_joint" in res
            return res
        pyro.set_rng_seed(0)
        elbos = torch.stack([(lambda r, k: r - k)(*E.elbo_terms(vae, x, y)).mean() for _ in range(9)])
        lls = torch.stack([E.log_likelihood(vae, x, y, k=32).mean() for _ in range(3)])
        noise = 4 * (elbos.std() / 3 + lls.std()) + 0.1
        assert elbos.mean() <= lls.mean() + noise, (elbos.mean().item(), lls.mean().item())
        pyro.set_rng_seed(1)
        at_one = E.evaluate(vae, test.subset(slice(0, None)), k=5)
        vae.beta = 4.0  # the default weight of the latent site if model/guide are called without one
        pyro.set_rng_seed(1)
        at_four = E.evaluate(vae, test.subset(slice(0, None)), k=5)
        vae.beta = 1.0
        assert at_one == at_four
        pyro.set_rng_seed(2)
        whole = E.log_likelihood(vae, x, y, k=10)
        monkeypatch.setattr(E, "MAX_ELEMENTS", x[0].numel() * len(x) * 3)  # chunks of 3 samples
        pyro.set_rng_seed(2)
        chunked = E.log_likelihood(vae, x, y, k=10)
        monkeypatch.undo()
        assert torch.allclose(whole, chunked, atol=1e-4, rtol=1e-5)
        res = json.loads((run_dir / "eval.json").read_text())
        assert res["elbo_ll_images"] <= res["log_likelihood"] + 5 + 0.05 * abs(res["log_likelihood"])
        return res

    return check


@pytest.fixture
def optuna_to_stderr(monkeypatch):
    """Optuna's own log handler writing to the ``sys.stderr`` of the test (capsys's), not to the
    stderr of when the handler was made, so a test can read what a sweep prints; returns optuna."""
    import logging
    import sys

    optuna = pytest.importorskip("optuna")
    optuna.logging.get_logger("optuna")  # Optuna's handler, made now if not yet
    for h in logging.getLogger("optuna").handlers:
        if type(h) is logging.StreamHandler:  # Optuna's own: pytest's capture handlers are subclasses
            monkeypatch.setattr(h, "stream", sys.stderr)
    return optuna
