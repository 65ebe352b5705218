"""The run layer: what a run directory holds, resuming it, and refusing what would overwrite or contradict it."""

import csv
import dataclasses
import importlib

import pytest
import torch

from pyrovae import TrainingError, checkpoint, train
from pyrovae.config import Config, ConfigError


def test_run_directory_contents(tmp_path, tiny_data_file, tiny_config):
    cfg = tiny_config(tiny_data_file(tmp_path), epochs=2)
    train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["val_elbo"]) < 0 for r in rows)
    assert float(rows[0]["val_elbo"]) == pytest.approx(float(rows[0]["val_recon"]) - float(rows[0]["val_kl"]))
    assert Config.load(run / "config.json") == cfg
    ck = checkpoint.load(run / "checkpoint.pt")  # weights_only=True
    assert ck["state"]["epoch"] == 2 and ck["x_shape"] == [1, 8, 8]


def test_resume_refuses_contradicting_config(tmp_path, tiny_data_file, tiny_config):
    data = tiny_data_file(tmp_path)
    train(tiny_config(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    with pytest.raises(ConfigError, match="z_dim"):
        train(tiny_config(data, z_dim=3), tmp_path / "r", resume=True, progress=False)


def test_resume_refuses_a_config_json_edited_since_the_checkpoint(
    tmp_path, tiny_data_file, tiny_config, capsys
):
    """An edited activation would otherwise resume the saved weights in another network, silently;
    `pyrovae train --resume` says so in one error line (CheckpointError is a user error there)."""
    import json

    from pyrovae.checkpoint import CheckpointError
    from pyrovae.cli import main

    data = tiny_data_file(tmp_path)
    train(tiny_config(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**saved, "activation": "relu"}))
    with pytest.raises(CheckpointError, match="activation: checkpoint.pt 'softplus', config.json 'relu'"):
        train(tiny_config(data, epochs=2, activation="relu"), tmp_path / "r", resume=True, progress=False)
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--epochs", "2", "--quiet"]) == 2
    assert "(--activation: checkpoint.pt 'softplus', config.json 'relu')" in capsys.readouterr().err
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 2  # still the one epoch


def test_resume_refuses_fewer_epochs_than_the_run_has_trained(tmp_path, tiny_data_file, tiny_config, capsys):
    """Its config.json would otherwise say 1 epoch of a model trained for 2."""
    from pyrovae.cli import main

    data = tiny_data_file(tmp_path)
    train(tiny_config(data, epochs=2), tmp_path / "r", progress=False, evaluate=False)
    saved = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(ConfigError, match="epochs 1 is fewer than the 2 the run in .* has trained"):
        train(tiny_config(data, epochs=1), tmp_path / "r", resume=True, progress=False)
    assert main(["train", "--resume", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    assert "error: resume: --epochs 1 is fewer than the 2 " in capsys.readouterr().err
    assert (tmp_path / "r" / "config.json").read_text() == saved
    assert train(tiny_config(data, epochs=2), tmp_path / "r", resume=True, progress=False).complete


def test_resume_without_checkpoint_pt_is_refused_not_trained_anew(
    tmp_path, tiny_data_file, tiny_config, capsys
):
    """It trained from epoch 0 again, silently, over the run's best.pt."""
    from pyrovae.checkpoint import CheckpointError
    from pyrovae.cli import main

    data, run = tiny_data_file(tmp_path), tmp_path / "r"
    train(tiny_config(data, epochs=1), run, progress=False, evaluate=False)
    (run / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: resume: ") and len(err.splitlines()) == 1
    assert (
        "--checkpoint best" in err
        and "cannot be resumed without checkpoint.pt" in err
        and "--overwrite" in err
    )
    with pytest.raises(CheckpointError, match="cannot be resumed without checkpoint.pt"):
        train(tiny_config(data, epochs=2), run, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_existing_run_directory_is_refused(tmp_path, tiny_data_file, tiny_config):
    data = tiny_data_file(tmp_path)
    train(tiny_config(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        train(tiny_config(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    train(tiny_config(data, epochs=1), tmp_path / "r", overwrite=True, progress=False, evaluate=False)


def test_a_config_json_alone_is_refused_as_a_run_in_its_first_epoch_and_resumes(
    tmp_path, tiny_data_file, tiny_config
):
    """A kill -9 before the first checkpoint leaves config.json alone, as a run still in its first
    epoch does: the same command refuses the folder (replacing it would train a second run into a
    live one's folder); --resume trains it, as far as one trained straight through."""
    data = tiny_data_file(tmp_path)
    cfg = tiny_config(data, epochs=2)
    straight = train(cfg, tmp_path / "straight", progress=False, evaluate=False)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text((tmp_path / "straight" / "config.json").read_text())
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        train(cfg, tmp_path / "r", progress=False, evaluate=False)
    resumed = train(cfg, tmp_path / "r", resume=True, progress=False, evaluate=False)
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_overwrite_removes_what_pyrovae_wrote_about_the_old_model_and_keeps_the_users_files(
    tmp_path, tiny_data_file, capsys
):
    """``inspect``'s figures/ (with an index.md describing the replaced model) outlived --overwrite."""
    from pyrovae.cli import main

    data, run = tiny_data_file(tmp_path), tmp_path / "r"
    args = ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
            "--batch-size", "16", "--val-size", "12", "--epochs", "1", "--no-eval", "--quiet", "--out", str(run)]  # fmt: skip
    inspect = ["inspect", str(run), "--n", "10", "--k", "2"]
    assert main(args) == 0 and main(inspect) == 0
    (run / "disentanglement.json").write_text("{}")  # as `pyrovae disentanglement` leaves it
    (run / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    assert not (run / "figures").exists() and not (run / "disentanglement.json").exists()
    assert main(inspect) == 0
    (run / "figures" / "mine.png").write_text("a figure of the user's")
    assert main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    assert [p.name for p in (run / "figures").iterdir()] == ["mine.png"]
    assert (run / "notes.txt").read_text() == "mine"


def test_a_run_that_fails_at_its_first_step_leaves_nothing(
    tmp_path, monkeypatch, tiny_data_file, poison_decoder, tiny_config
):
    cfg = tiny_config(tiny_data_file(tmp_path), epochs=2)
    poison_decoder(1)
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # so the same command can simply be run again
    monkeypatch.undo()
    train(cfg, tmp_path / "r", progress=False, evaluate=False)
    assert (tmp_path / "r" / "checkpoint.pt").exists()


def test_resume_of_a_complete_run_keeps_its_evaluation(
    tmp_path, capsys, monkeypatch, tiny_data_file, tiny_config
):
    import os

    from pyrovae.cli import main

    R = importlib.import_module("pyrovae.loaded")
    data = tiny_data_file(tmp_path)
    cfg = tiny_config(data, epochs=1, eval_k=3)
    first = train(cfg, tmp_path / "r", progress=False).results
    evaluations = []
    real = R.evaluate_run
    monkeypatch.setattr(R, "evaluate_run", lambda *a, **k: evaluations.append(1) or real(*a, **k))
    stamp = (tmp_path / "r" / "eval.json").stat().st_mtime_ns

    run = train(tiny_config(data, epochs=1, eval_k=3), tmp_path / "r", resume=True)  # nothing left to do
    out = capsys.readouterr().out
    assert "is already complete (1 of 1 epochs): nothing to train; kept the results of eval.json" in out
    assert run.complete and run.results == first and not evaluations
    assert (tmp_path / "r" / "eval.json").stat().st_mtime_ns == stamp
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--quiet"]) == 0
    assert "was already complete: nothing trained; results kept from its eval.json" in capsys.readouterr().out
    assert not evaluations

    train(tiny_config(data, epochs=1, eval_k=5), tmp_path / "r", resume=True, progress=False)  # a different K
    assert len(evaluations) == 1
    os.utime(
        tmp_path / "r" / "best.pt", ns=(stamp, (tmp_path / "r" / "eval.json").stat().st_mtime_ns + 10**9)
    )
    assert (
        main(["train", "--out", str(tmp_path / "r"), "--resume", "--eval-k", "5", "--quiet"]) == 0
    )  # best.pt changed
    said = capsys.readouterr().out
    assert len(evaluations) == 2
    assert "nothing trained; best.pt evaluated afresh" in said and "kept" not in said
    run = train(
        tiny_config(data, epochs=2, eval_k=5), tmp_path / "r", resume=True, progress=False
    )  # more epochs
    assert len(evaluations) == 3 and not run.complete
    assert checkpoint.load(tmp_path / "r" / "checkpoint.pt")["state"]["epoch"] == 2


def test_resume_of_an_early_stopped_run_trains_no_further(tmp_path, tiny_data_file, tiny_config):
    cfg = tiny_config(tiny_data_file(tmp_path), epochs=30, patience=1, lr=0.5)
    train(cfg, tmp_path / "r", progress=False, evaluate=False)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    run = train(cfg, tmp_path / "r", resume=True, progress=False, evaluate=False)
    assert run.complete and (tmp_path / "r" / "metrics.csv").read_text() == before


def test_a_float64_run_reopens_as_float64_and_evaluate_repeats_its_figures(
    tmp_path, tiny_data_file, tiny_config
):
    """A run trained under a float64 default (grey data binarized once, which float64 draws do
    differently) is evaluated in an ordinary float32 process: its model keeps float64, its data is
    loaded as train loaded it, and `pyrovae evaluate` repeats the eval.json train wrote."""
    import json

    import torch

    from pyrovae import load_run
    from pyrovae.cli import main

    cfg = tiny_config(tiny_data_file(tmp_path, binary=False), epochs=1, binarize="dynamic", eval_k=5)
    torch.set_default_dtype(torch.float64)
    try:
        train(cfg, tmp_path / "run", progress=False)
    finally:
        torch.set_default_dtype(torch.float32)
    trained = json.loads((tmp_path / "run" / "eval.json").read_text())
    run = load_run(tmp_path / "run")
    assert {p.dtype for p in run.model.parameters()} == {torch.float64}
    assert run.data.test.x.dtype == torch.float64 and torch.get_default_dtype() == torch.float32
    assert main(["evaluate", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == trained

    # resumed here, in float32, it trains on in float64: as if it had trained 2 epochs at once
    resumed = train(dataclasses.replace(cfg, epochs=2), tmp_path / "run", resume=True, progress=False)
    torch.set_default_dtype(torch.float64)
    try:
        straight = train(dataclasses.replace(cfg, epochs=2), tmp_path / "straight", progress=False)
    finally:
        torch.set_default_dtype(torch.float32)
    for (name, a), b in zip(
        resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True
    ):
        assert a.dtype == b.dtype and torch.equal(a, b), name
