"""``step`` (``--step``): the synchronisation-free step (``graphed``: a CUDA graph on CUDA, a traced
graph on a CPU; ``compiled``: that graph compiled by torch.compile) trains as the eager one, finds and rolls back a non-finite step it
reads late, contains no host read (which a graph cannot hold), and falls back to the eager
step where capture fails. tests/test_cuda.py replays the captured graph against the eager step."""

import contextlib
import csv
import dataclasses
import subprocess
import sys
from unittest import mock

import pyro
import pytest
import torch

from pyrovae import VAE, checkpoint, train
from pyrovae.config import Config, ConfigError
from pyrovae.fit import TrainingError
from pyrovae.graphs import GraphedStep, SyncFreeSteps, fused_adam
from pyrovae.objectives import ELBOLoss, make_elbo
from pyrovae.step import TRACE_PAYS_FROM, resolve_step


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
@pytest.mark.parametrize("step", ["graphed", "compiled"])
def test_the_graphed_step_trains_as_the_eager_step(tmp_path, tiny_data_file, tiny_config, options, step):
    """96 training images in six batches of 16: the run's first step is eager (with Pyro's checks),
    the others take the synchronisation-free step (captured, and compiled for ``compiled``; β, C and
    the learning rate fed as tensors); the loss is read once per epoch. Same losses, validation figures and
    parameters as the eager step: the graphed step's are the eager step's bit for bit (the same
    kernels, the same Adam), the compiled step's agree to float32 rounding."""
    data = tiny_data_file(tmp_path)
    for kind in ("eager", step):
        train(
            tiny_config(data, epochs=2, step=kind, **options), tmp_path / kind, progress=False, evaluate=False
        )
    _same_runs(tmp_path / "eager", tmp_path / step)
    if step == "graphed":
        pa, pb = (checkpoint.load(tmp_path / k / "checkpoint.pt")["model"] for k in ("eager", step))
        assert all(torch.equal(pa[name], pb[name]) for name in pa)
    assert float(_rows(tmp_path / step)[-1]["val_elbo"]) > float("-inf")


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


@pytest.mark.parametrize(
    "options",
    [{"beta_schedule": "linear", "warmup_epochs": 1.5}, {"capacity": 4.0, "capacity_epochs": 1.5}],
    ids=["warmup", "capacity"],
)
def test_a_float64_models_graphed_step_is_its_eager_step_bit_for_bit(tmp_path, tiny_data_file, tiny_config,
                                                                     options):  # fmt: skip
    """β and C fed to the graphed step as tensors in the model's dtype: float32 ones would round a
    float64 model's schedule, which the eager step takes as Python floats."""
    from pyrovae import build_model, fit
    from pyrovae.data import Dataset
    from pyrovae.loaded import load_data

    cfg = tiny_config(tiny_data_file(tmp_path), **options)
    data = load_data(cfg)
    data = Dataset(*(s.to("cpu", torch.float64) for s in (data.train, data.val, data.test)), data.num_classes)
    params = {}
    for kind in ("eager", "graphed"):
        torch.manual_seed(0)
        vae = build_model(dataclasses.replace(cfg, step=kind), data.x_shape).double()
        fit(vae, data, tmp_path / kind, dataclasses.replace(cfg, step=kind), progress=False)
        params[kind] = checkpoint.load(tmp_path / kind / "checkpoint.pt")["model"]
    assert all(v.dtype == torch.float64 for v in params["graphed"].values() if v.is_floating_point())
    assert all(torch.equal(params["eager"][k], params["graphed"][k]) for k in params["eager"])
    # C moves only the loss (its gradient is the sign of KL - C): the losses agree to float64 rounding
    # (summed in another order); a float32 C or β puts them 1e-8 apart
    losses = {kind: [float(r["train_loss"]) for r in _rows(tmp_path / kind)] for kind in params}
    assert losses["graphed"] == pytest.approx(losses["eager"], rel=1e-12, abs=0)


def test_the_hierarchical_models_meanfield_elbo_is_captured_and_trains_as_its_eager_step(
    tmp_path, tiny_data_file, tiny_config, capsys
):
    """LayerwiseMeanField_ELBO read its loss with ``.item()``, which a captured step cannot hold:
    capture failed and the run fell back to the eager step (a host read per step on CUDA)."""
    data = tiny_data_file(tmp_path)
    for kind in ("eager", "graphed"):
        train(tiny_config(data, epochs=2, step=kind, model="hierarchical", elbo="meanfield"), tmp_path / kind,
              progress=False, evaluate=False)  # fmt: skip
    assert "could not be captured" not in capsys.readouterr().out
    pa, pb = (checkpoint.load(tmp_path / k / "checkpoint.pt")["model"] for k in ("eager", "graphed"))
    assert all(torch.equal(pa[name], pb[name]) for name in pa)
    _same_runs(tmp_path / "eager", tmp_path / "graphed")


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
    captured step."""
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


def _poisoned_replay(at: int):
    """Turn a parameter NaN before the captured step's ``at``-th replay; count the captures."""
    real_call, real_init = GraphedStep.__call__, GraphedStep.__init__
    calls, captures = [], []

    def call(self, x, y=None):
        calls.append(1)
        if len(calls) == at:
            with torch.no_grad():
                self.params[0].fill_(float("nan"))
        return real_call(self, x, y)

    def init(self, *args, **kwargs):
        captures.append(1)
        real_init(self, *args, **kwargs)

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(GraphedStep, "__call__", call))
    stack.enter_context(mock.patch.object(GraphedStep, "__init__", init))
    return stack, captures


def test_a_non_finite_captured_step_is_rolled_back_and_captured_again(tmp_path, tiny_data_file, tiny_config):
    """A parameter turned NaN before the captured step's 8th replay (epoch 2's third full batch):
    the replay is skipped on the device, the loop learns of it at the end of the epoch, rolls back
    to the end of epoch 1 with half the learning rate, and captures the step again for the
    parameters and optimizer state it loaded; the run ends finite."""
    data = tiny_data_file(tmp_path)
    poisoned, captures = _poisoned_replay(8)
    with poisoned:
        train(tiny_config(data, epochs=3, on_nan="rollback", step="graphed"), tmp_path / "r", progress=False,
              evaluate=False)  # fmt: skip
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 3 and ck["state"]["rollbacks"] == 1 and ck["state"]["lr_factor"] == 0.5
    assert len(captures) == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert [r["epoch"] for r in _rows(tmp_path / "r")] == ["1", "2", "3"]


def test_a_non_finite_captured_step_stops_the_run_naming_the_steps_it_was_in(
    tmp_path, tiny_data_file, tiny_config
):
    """With ``--on-nan stop`` (the default) the same poisoned replay stops the run when the loop
    reads the loss at the end of epoch 2 (six steps of 16 images), naming the steps since the last
    read, and keeps epoch 1's checkpoint."""
    data = tiny_data_file(tmp_path)
    poisoned, _ = _poisoned_replay(8)
    with (
        poisoned,
        pytest.raises(TrainingError, match=r"non-finite loss or gradient at epoch 2, within steps 1-6"),
    ):
        train(tiny_config(data, epochs=3, step="graphed"), tmp_path / "r", progress=False, evaluate=False)
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


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


def test_auto_is_graphed_in_one_process_and_graphed_refuses_torchrun():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for device in (cpu, cuda):
        assert resolve_step("auto", device) == "graphed"
        assert resolve_step("auto", device, steps=TRACE_PAYS_FROM) == "graphed"
        assert resolve_step("auto", device, world=2) == "eager"
    # on a CPU a short run does not repay the tracing
    assert resolve_step("auto", cpu, steps=TRACE_PAYS_FROM - 1) == "eager"
    assert resolve_step("auto", cuda, steps=10) == "graphed"
    assert resolve_step("compiled", torch.device("cpu")) == "compiled"
    for kind in ("graphed", "compiled"):
        with pytest.raises(ConfigError, match="one process") as e:
            resolve_step(kind, torch.device("cpu"), world=2)
        assert e.value.option == "step"
    with pytest.raises(ConfigError, match="on CUDA use step graphed"):
        resolve_step("compiled", torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="auto, eager, graphed, compiled"):
        Config(step="fast").validate()


def test_train_says_which_step_it_takes(tmp_path, tiny_data_file):
    """``auto`` on a CPU: eager for this run of 6 steps (tracing would not pay); graphed traced,
    compiled compiled; all three train to the same figures."""
    data = tiny_data_file(tmp_path)
    base = [sys.executable, "-m", "pyrovae", "train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--val-size", "12", "--epochs", "1", "--no-eval"]  # fmt: skip
    said = {}
    for kind in ("auto", "graphed", "compiled"):
        p = subprocess.run(
            [*base, "--step", kind, "--out", str(tmp_path / kind)], capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr
        said[kind] = p.stdout
    assert (
        "training step: eager (a run of 6 steps, too short to repay tracing the graphed step" in said["auto"]
    )
    assert "training step: graphed (traced once at the first full batch" in said["graphed"]
    assert "training step: compiled (traced once and compiled by torch.compile" in said["compiled"]
    for kind in ("graphed", "compiled"):
        assert float(_rows(tmp_path / "auto")[0]["train_loss"]) == pytest.approx(
            float(_rows(tmp_path / kind)[0]["train_loss"])
        )


def test_auto_traces_the_step_of_a_run_long_enough_to_repay_it(
    tmp_path, tiny_data_file, tiny_config, monkeypatch
):
    """``auto`` on a CPU takes the graphed step for a run of at least ``TRACE_PAYS_FROM`` steps
    (lowered here to this run's 12) and trains to the eager step's parameters bit for bit."""
    monkeypatch.setattr("pyrovae.step.TRACE_PAYS_FROM", 12)
    data = tiny_data_file(tmp_path)
    seen = []
    real = SyncFreeSteps.__init__

    def init(self, *args, **kwargs):
        seen.append(1)
        real(self, *args, **kwargs)

    with mock.patch.object(SyncFreeSteps, "__init__", init):
        for kind in ("auto", "eager"):
            train(tiny_config(data, epochs=2, step=kind), tmp_path / kind, progress=False, evaluate=False)
        assert seen == [1]
        train(tiny_config(data, epochs=1, step="auto"), tmp_path / "short", progress=False, evaluate=False)
        assert seen == [1]  # 6 steps: eager
    pa, pb = (checkpoint.load(tmp_path / k / "checkpoint.pt")["model"] for k in ("auto", "eager"))
    assert all(torch.equal(pa[name], pb[name]) for name in pa)
    _same_runs(tmp_path / "auto", tmp_path / "eager")
