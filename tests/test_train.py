"""The training loop: resume equivalence, checkpoints, non-finite losses, early stopping."""

import csv
import importlib
import json

import pytest
import torch
from conftest import tiny_data_file

from pyrovae import TrainingError, checkpoint, train
from pyrovae.config import Config, ConfigError
from pyrovae.step import grad_norm


def _cfg(path, **kw):
    base = dict(
        dataset="file",
        data_file=str(path),
        z_dim=2,
        hidden=[16],
        batch_size=16,
        epochs=3,
        val_size=12,
        seed=3,
    )
    return Config(**{**base, **kw})


def _params(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


def test_grad_norm_is_the_total_norm_and_sees_nan_and_inf():
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(7, 3), (3,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn_like(p)
    assert grad_norm(params).item() == pytest.approx(
        torch.nn.utils.get_total_norm([p.grad for p in params]).item(), rel=1e-6
    )
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no gradient: left out, as torch does
    assert torch.isfinite(grad_norm(params))
    for bad in (float("nan"), float("inf")):
        params[1].grad[0] = bad
        assert not torch.isfinite(grad_norm(params))


def test_run_directory_contents(tmp_path):
    cfg = _cfg(tiny_data_file(tmp_path), epochs=2)
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


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path):
    data = tiny_data_file(tmp_path)
    full = train(_cfg(data), tmp_path / "a", progress=False, evaluate=False).model
    full_last = checkpoint.load(tmp_path / "a" / "checkpoint.pt")["model"]
    train(_cfg(data, epochs=1), tmp_path / "b", progress=False, evaluate=False)
    resumed = train(_cfg(data), tmp_path / "b", resume=True, progress=False, evaluate=False).model
    last = checkpoint.load(tmp_path / "b" / "checkpoint.pt")["model"]
    assert full_last.keys() == last.keys()
    for k in last:
        assert torch.equal(full_last[k], last[k]), k
    for k, v in _params(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    strip = lambda lines: [line.rsplit(",", 1)[0] for line in lines]  # noqa: E731 (seconds differ)
    assert strip(a) == strip(b)


def test_resume_refuses_contradicting_config(tmp_path):
    data = tiny_data_file(tmp_path)
    train(_cfg(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    with pytest.raises(ConfigError, match="z_dim"):
        train(_cfg(data, z_dim=3), tmp_path / "r", resume=True, progress=False)


def test_existing_run_directory_is_refused(tmp_path):
    data = tiny_data_file(tmp_path)
    train(_cfg(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        train(_cfg(data, epochs=1), tmp_path / "r", progress=False, evaluate=False)
    train(_cfg(data, epochs=1), tmp_path / "r", overwrite=True, progress=False, evaluate=False)


def _poison_decoder(monkeypatch, at_call: int) -> None:
    """Make the decoder's ``at_call``-th forward pass return NaN: step 4 of epoch 2 for 11 (7 steps
    per epoch and one validation call)."""
    T = importlib.import_module("pyrovae.runs")
    real_build = T.build_model
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


def test_nan_loss_stops_at_its_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tiny_data_file(tmp_path), epochs=3)
    _poison_decoder(monkeypatch, 11)
    with pytest.raises(TrainingError, match=r"epoch 2, step \d+"):
        train(cfg, tmp_path / "r", progress=False)
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nan_rollback_continues_with_lower_lr(tmp_path, monkeypatch):
    data = tiny_data_file(tmp_path)
    _poison_decoder(monkeypatch, 11)
    train(_cfg(data, epochs=3, on_nan="rollback"), tmp_path / "r", progress=False, evaluate=False)
    ck = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["state"]["epoch"] == 3 and ck["state"]["rollbacks"] == 1 and ck["state"]["lr_factor"] == 0.5


def test_early_stopping(tmp_path):
    cfg = _cfg(tiny_data_file(tmp_path), epochs=30, patience=1, lr=0.5)  # a wild lr stops improving soon
    train(cfg, tmp_path / "r", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert len(rows) < 30
    best = max(float(r["val_elbo"]) for r in rows)
    assert float(rows[-2]["val_elbo"]) == best or float(rows[-1]["val_elbo"]) < best


def test_config_round_trip_and_validation(tmp_path):
    cfg = Config(prior="mixture", hidden=[10, 20], capacity=None)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="Did you mean 'vamp'"):
        Config(prior="vampp").validate()
    for bad, msg in [(dict(batch_size=0), "batch_size"), (dict(beta=-1.0), "beta"), (dict(lr=0.0), "lr"),
                     (dict(hidden=[0]), "hidden"), (dict(elbo="iwae"), "num_particles")]:  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            Config(**bad).validate()


def test_a_run_that_fails_at_its_first_step_leaves_nothing(tmp_path, monkeypatch):
    cfg = _cfg(tiny_data_file(tmp_path), epochs=2)
    _poison_decoder(monkeypatch, 1)
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # so the same command can simply be run again
    monkeypatch.undo()
    train(cfg, tmp_path / "r", progress=False, evaluate=False)
    assert (tmp_path / "r" / "checkpoint.pt").exists()


def test_resume_of_a_complete_run_keeps_its_evaluation(tmp_path, capsys, monkeypatch):
    import os

    from pyrovae.cli import main

    R = importlib.import_module("pyrovae.runs")
    data = tiny_data_file(tmp_path)
    cfg = _cfg(data, epochs=1, eval_k=3)
    first = train(cfg, tmp_path / "r", progress=False).results
    evaluations = []
    real = R.evaluate_run
    monkeypatch.setattr(R, "evaluate_run", lambda *a, **k: evaluations.append(1) or real(*a, **k))
    stamp = (tmp_path / "r" / "eval.json").stat().st_mtime_ns

    run = train(_cfg(data, epochs=1, eval_k=3), tmp_path / "r", resume=True)  # nothing left to do
    out = capsys.readouterr().out
    assert "is already complete (1 of 1 epochs): nothing to train; kept the results of eval.json" in out
    assert run.complete and run.results == first and not evaluations
    assert (tmp_path / "r" / "eval.json").stat().st_mtime_ns == stamp
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--quiet"]) == 0
    assert "was already complete: nothing trained; results kept from its eval.json" in capsys.readouterr().out
    assert not evaluations

    train(_cfg(data, epochs=1, eval_k=5), tmp_path / "r", resume=True, progress=False)  # a different K
    assert len(evaluations) == 1
    os.utime(
        tmp_path / "r" / "best.pt", ns=(stamp, (tmp_path / "r" / "eval.json").stat().st_mtime_ns + 10**9)
    )
    train(_cfg(data, epochs=1, eval_k=5), tmp_path / "r", resume=True, progress=False)  # best.pt changed
    assert len(evaluations) == 2
    run = train(_cfg(data, epochs=2, eval_k=5), tmp_path / "r", resume=True, progress=False)  # more epochs
    assert len(evaluations) == 3 and not run.complete
    assert checkpoint.load(tmp_path / "r" / "checkpoint.pt")["state"]["epoch"] == 2


def test_resume_of_an_early_stopped_run_trains_no_further(tmp_path):
    cfg = _cfg(tiny_data_file(tmp_path), epochs=30, patience=1, lr=0.5)
    train(cfg, tmp_path / "r", progress=False, evaluate=False)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    run = train(cfg, tmp_path / "r", resume=True, progress=False, evaluate=False)
    assert run.complete and (tmp_path / "r" / "metrics.csv").read_text() == before
