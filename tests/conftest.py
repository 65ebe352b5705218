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
