"""``step`` (``--step``): the synchronisation-free step (``graphed``; a CUDA graph on CUDA, a
compiled graph on a CPU) trains as the eager one, finds and rolls back a non-finite step it
reads late, contains no host read (which a graph cannot hold), and falls back to the eager
step where capture fails. tests/test_cuda.py replays the captured graph against the eager step."""

import contextlib
import csv
import subprocess
import sys
from unittest import mock

import pyro
import pytest
import torch

from pyrovae import VAE, checkpoint, train
from pyrovae.config import Config, ConfigError
from pyrovae.graphs import GraphedStep, SyncFreeSteps, fused_adam
from pyrovae.objectives import ELBOLoss, make_elbo
from pyrovae.step import resolve_step


def _rows(run) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def _same_runs(a, b) -> None:
    for ra, rb in zip(_rows(a), _rows(b), strict=True):
        for key in ("train_loss", "val_elbo", "val_kl", "beta", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6), key
    pa, pb = checkpoint.load(a / "checkpoint.pt")["model"], checkpoint.load(b / "checkpoint.pt")["model"]
    for name in pa:
        assert torch.allclose(pa[name], pb[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"beta_schedule": "linear", "warmup_epochs": 1.5, "clip_norm": 5.0},
        {"capacity": 4.0, "capacity_epochs": 1.0, "weight_decay": 1e-3},
        {"elbo": "iwae", "num_particles": 3, "lr_schedule": "cosine"},
        {"elbo": "meanfield", "free_bits": 0.1},
    ],
    ids=["plain", "warmup-clip", "capacity-decay", "iwae-cosine", "freebits"],
)
def test_the_graphed_step_trains_as_the_eager_step(tmp_path, tiny_data_file, tiny_config, options):
    """108 training images in batches of 16: six full batches take the synchronisation-free step
    (compiled; β, C and the learning rate fed as tensors), the seventh of 12 the eager one; the
    loss is read once per epoch. Same losses, validation figures and parameters as the eager step."""
    data = tiny_data_file(tmp_path)
    for kind in ("eager", "graphed"):
        train(
            tiny_config(data, epochs=2, step=kind, **options), tmp_path / kind, progress=False, evaluate=False
        )
    _same_runs(tmp_path / "eager", tmp_path / "graphed")
    assert float(_rows(tmp_path / "graphed")[-1]["val_elbo"]) > float("-inf")


def test_a_scheduled_capacity_is_a_device_tensor_when_the_step_is_captured(
    tmp_path, tiny_data_file, tiny_config
):
    """A CUDA graph keeps a float's value of the capture: the capacity C it reads must be a tensor
    that the schedule fills, so C rises between replays as it does in the eager step."""
    data = tiny_data_file(tmp_path)
    seen = []
    real = GraphedStep.__init__

    def capture(self, loss_fn, *args, **kwargs):
        seen.append(loss_fn.elbo.capacity)
        real(self, loss_fn, *args, **kwargs)

    with mock.patch.object(GraphedStep, "__init__", capture):
        train(tiny_config(data, epochs=2, step="graphed", capacity=4.0, capacity_epochs=2.0), tmp_path / "r",
              progress=False, evaluate=False)  # fmt: skip
    assert len(seen) == 1 and isinstance(seen[0], torch.Tensor)
    # the tensor captured is the one the schedule filled: C as it rose to epoch 2's last step
    capacities = [float(r["capacity"]) for r in _rows(tmp_path / "r")]
    assert seen[0].item() == pytest.approx(capacities[-1]) and 2.0 < capacities[-1] < 4.0
    assert capacities[0] < 2.0


def _eager_graphed_step():
    """``step graphed`` run eagerly (``graph=False``), so Python in the model runs at every step."""
    real = SyncFreeSteps.__init__

    def eagerly(self, *args, **kwargs):
        real(self, *args, **{**kwargs, "graph": False})

    return mock.patch.object(SyncFreeSteps, "__init__", eagerly)


def test_a_non_finite_step_read_late_is_rolled_back(tmp_path, tiny_data_file, poison_decoder, tiny_config):
    """The decoder's 11th call (epoch 2, step 4) is NaN: the graphed step (run eagerly, so the
    decoder's Python runs at each step) skips it on the device, the loop learns of it when it
    reads the loss at the end of the epoch, and rolls back to the end of epoch 1 with half the
    learning rate, as the eager step does at once. tests/test_graphs.py skips a non-finite
    compiled step."""
    data = tiny_data_file(tmp_path)
    poison_decoder(11)
    with _eager_graphed_step():
        train(tiny_config(data, epochs=3, on_nan="rollback", step="graphed"), tmp_path / "r", progress=False,
              evaluate=False)  # fmt: skip
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 3 and ck["state"]["rollbacks"] == 1 and ck["state"]["lr_factor"] == 0.5
    assert all(
        float(r["lr"]) == pytest.approx(1e-3 * (0.5 if r["epoch"] != "1" else 1))
        for r in _rows(tmp_path / "r")
    )


def test_a_non_finite_compiled_step_is_rolled_back_and_captured_again(tmp_path, tiny_data_file, tiny_config):
    """A parameter turned NaN before the compiled step's 8th replay (epoch 2's third full batch):
    the replay is skipped on the device, the loop learns of it at the end of the epoch, rolls back
    to the end of epoch 1 with half the learning rate, and captures the step again for the
    parameters and optimizer state it loaded; the run ends finite."""
    data = tiny_data_file(tmp_path)
    real_call, real_init = GraphedStep.__call__, GraphedStep.__init__
    calls, captures = [], []

    def call(self, x, y=None):
        calls.append(1)
        if len(calls) == 8:
            with torch.no_grad():
                self.params[0].fill_(float("nan"))
        return real_call(self, x, y)

    def init(self, *args, **kwargs):
        captures.append(1)
        real_init(self, *args, **kwargs)

    with mock.patch.object(GraphedStep, "__call__", call), mock.patch.object(GraphedStep, "__init__", init):
        train(tiny_config(data, epochs=3, on_nan="rollback", step="graphed"), tmp_path / "r", progress=False,
              evaluate=False)  # fmt: skip
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 3 and ck["state"]["rollbacks"] == 1 and ck["state"]["lr_factor"] == 0.5
    assert len(captures) == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert [r["epoch"] for r in _rows(tmp_path / "r")] == ["1", "2", "3"]


@contextlib.contextmanager
def _host_reads_refused():
    """Every way a tensor's value reaches Python raises, as it would during CUDA graph capture."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a host read in the graphed step")

    with contextlib.ExitStack() as stack:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse))
        yield


@pytest.mark.parametrize(
    "kind, options",
    [("trace", {}), ("meanfield", {}), ("iwae", {"num_particles": 3}), ("trace", {"gamma": 10.0, "capacity": 1.0}),
     ("meanfield", {"free_bits": 0.5}), ("trace", {"tc_beta": 4.0, "dataset_size": 100})],
    ids=["trace", "meanfield", "iwae", "capacity", "freebits", "tcvae"],
)  # fmt: skip
def test_the_graphed_step_reads_nothing_on_the_host(kind, options):
    """A graph cannot contain ``.item()`` or ``bool(tensor)``; Pyro's ELBOs call both (its NaN
    warnings and ``torch_item``). The step's logic, run eagerly, runs with every host read refused
    (refusing them would stop torch.compile itself)."""
    pyro.set_rng_seed(0)
    vae = VAE((1, 4, 4), z_dim=2, hidden=(8,))
    params = list(vae.parameters())
    x = torch.bernoulli(torch.full((10, 1, 4, 4), 0.5))
    beta = torch.tensor(0.5)
    step = GraphedStep(ELBOLoss(vae, make_elbo(kind, **options)), params, fused_adam(params, 1e-2), x, beta=beta,
                       clip_norm=1.0, graph=False)  # fmt: skip
    before = params[0].detach().clone()
    with _host_reads_refused():
        step(x)
        step(x)
    assert not torch.equal(params[0], before)
    total, skipped = step.read()
    assert skipped == 0 and total > 0


def test_where_capture_fails_the_eager_step_trains_and_says_why(
    tmp_path, tiny_data_file, tiny_config, capsys
):
    """Capture that fails (here: as without a C++ compiler for torch.compile): the steps stay
    eager, the reason is printed, and training gives the eager step's figures."""
    data = tiny_data_file(tmp_path)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    train(tiny_config(data, epochs=1, step="eager"), tmp_path / "eager", progress=False, evaluate=False)
    with mock.patch("pyrovae.graphs.capture", no_compiler):
        train(
            tiny_config(data, epochs=1, step="graphed"), tmp_path / "fallback", progress=False, evaluate=False
        )
    assert "could not be captured (RuntimeError: no C++ compiler found)" in capsys.readouterr().out
    _same_runs(tmp_path / "eager", tmp_path / "fallback")


def test_auto_is_graphed_on_one_cuda_device_and_graphed_refuses_torchrun():
    assert resolve_step("auto", torch.device("cpu")) == "eager"
    assert resolve_step("auto", torch.device("cuda", 0)) == "graphed"
    assert resolve_step("auto", torch.device("cuda", 0), world=2) == "eager"
    assert resolve_step("graphed", torch.device("cpu")) == "graphed"
    with pytest.raises(ConfigError, match="one process") as e:
        resolve_step("graphed", torch.device("cuda", 0), world=2)
    assert e.value.option == "step"
    with pytest.raises(ConfigError, match="auto, eager, graphed"):
        Config(step="fast").validate()


def test_train_says_which_step_it_takes(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path)
    base = [sys.executable, "-m", "pyrovae", "train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--val-size", "12", "--epochs", "1", "--no-eval"]  # fmt: skip
    said = {}
    for kind in ("auto", "graphed"):
        p = subprocess.run(
            [*base, "--step", kind, "--out", str(tmp_path / kind)], capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr
        said[kind] = p.stdout
    assert "training step: eager" in said["auto"]  # no CUDA here
    assert "training step: graphed (captured once and compiled by torch.compile" in said["graphed"]
    assert float(_rows(tmp_path / "auto")[0]["train_loss"]) == pytest.approx(
        float(_rows(tmp_path / "graphed")[0]["train_loss"])
    )
