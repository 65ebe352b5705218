import os
from pathlib import Path

import pyro
import pytest
import torch

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


def tiny_data_file(
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
