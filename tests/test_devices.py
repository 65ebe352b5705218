"""Which device the commands that use a trained run pick, checked on the CPU by standing in for
torch's CUDA queries; tests/test_cuda.py runs the same paths on a real GPU."""

import json

import pytest
import torch

from pyrovae import checkpoint, loaded, runs
from pyrovae.build import run_device
from pyrovae.cli import main
from pyrovae.config import Config, ConfigError
from pyrovae.loop import deterministic_algorithms


def test_a_run_opens_where_train_would_put_it_and_on_the_cpu_where_its_gpu_is_absent(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert run_device(name) == torch.device("cpu"), name
    with pytest.raises(ConfigError, match="unknown device"):
        run_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert run_device("auto") == torch.device("cuda")
    assert run_device("cuda:3") == torch.device("cuda")  # trained on another machine's fourth GPU
    assert run_device("cpu") == torch.device("cpu")  # a run trained on the CPU stays there


@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct", "inspect", "score", "embed"])
def test_every_command_on_a_run_uses_the_device_train_would(command, tmp_path, tiny_data_file, monkeypatch):
    """Without --device, each command asks for the run's own device option (train's default,
    auto), not for the CPU; --device overrides it."""
    data = tiny_data_file(tmp_path, n=60)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
                 "--batch-size", "16", "--val-size", "6", "--epochs", "1", "--eval-k", "3", "--quiet",
                 "--out", str(run)]) == 0  # fmt: skip
    asked = []
    monkeypatch.setattr(loaded, "run_device", lambda name: asked.append(name) or torch.device("cpu"))
    out = tmp_path / ("x.csv" if command in ("score", "embed") else "x.png")
    extra = {"evaluate": ["--k", "2"], "sample": ["-o", str(out)], "reconstruct": ["-o", str(out)],
             "inspect": ["--k", "2", "--n", "12"], "score": ["--split", "test", "--k", "2", "-o", str(out)],
             "embed": ["--split", "test", "-o", str(out)]}[command]  # fmt: skip
    assert main([command, str(run), *extra]) == 0
    assert asked == ["auto"]
    asked.clear()
    assert main([command, str(run), *extra, "--device", "cpu"]) == 0
    assert asked == []  # an explicit device is taken as given


def test_evaluate_repeats_the_figures_train_reported(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=60)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
                 "--batch-size", "16", "--val-size", "6", "--epochs", "2", "--eval-k", "7", "--quiet",
                 "--out", str(run)]) == 0  # fmt: skip
    first = json.loads((run / "eval.json").read_text())
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert json.loads((run / "eval.json").read_text()) == first


def test_deterministic_is_a_resumable_option_and_restores_torchs_setting(
    tmp_path, tiny_data_file, tiny_config
):
    """--deterministic trains (a no-op on the CPU, which is deterministic already), is saved, may
    change on resume, and leaves torch's global setting as it found it."""
    data = tiny_data_file(tmp_path)
    whole = runs.train(tiny_config(data, epochs=2), tmp_path / "a", progress=False, evaluate=False)
    runs.train(
        tiny_config(data, epochs=1, deterministic=True), tmp_path / "b", progress=False, evaluate=False
    )
    assert Config.load(tmp_path / "b" / "config.json").deterministic is True
    resumed = runs.train(
        tiny_config(data, epochs=2), tmp_path / "b", resume=True, progress=False, evaluate=False
    )
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert checkpoint.load(tmp_path / "b" / "checkpoint.pt")["state"]["epoch"] == 2

    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_cpu_n_is_the_cpu_and_a_run_trained_on_it_ends_and_reopens(tmp_path, tiny_data_file, capsys):
    """`--device cpu:0` trained, then failed at the end loading best.pt onto "cpu:0", which
    torch.load cannot map to, with a false message about a corrupted checkpoint."""
    data = tiny_data_file(tmp_path, n=60)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
                 "--batch-size", "16", "--val-size", "6", "--epochs", "1", "--eval-k", "3", "--quiet",
                 "--device", "cpu:0", "--out", str(run)]) == 0  # fmt: skip
    assert (run / "eval.json").exists() and "corrupted" not in capsys.readouterr().err
    assert main(["evaluate", str(run), "--k", "2", "--device", "CPU:1", "--quiet"]) == 0
    # a whole checkpoint that cannot be put on a device is not called damaged
    with pytest.raises(checkpoint.CheckpointError, match="could not be loaded onto device cpu:0") as e:
        checkpoint.load(run / "best.pt", map_location=torch.device("cpu:0"))
    assert "corrupted" not in str(e.value)
