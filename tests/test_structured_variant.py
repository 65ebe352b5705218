"""``--model structured``: the structured-output CVAE on the model registry. Its baseline trained
first and frozen, its loss by hand, every command on a run trained through the CLI with figures recomputed by hand,
and ``pyrovae runs`` naming each run's model variant."""

import csv
import json
import math

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from pyrovae.cli import main
from pyrovae.config import Config
from pyrovae.listing import list_runs
from pyrovae.loaded import load_run
from pyrovae.posterior import reconstruct, sample_prior
from pyrovae.structured import quadrant_mask
from pyrovae.variants.structured import StructuredCVAE, StructuredTraining

SHAPE = (1, 8, 8)


@torch.no_grad()
def _by_hand(model, x):
    """The condition, the baseline's masked log-likelihood and KL(q(z|x,c) || p(z|c)), from the
    networks alone: c is x on the given pixels and sigmoid(baseline logits) elsewhere."""
    given = model.given
    logits = model.baseline(torch.where(given, x, torch.full_like(x, -1.0)))
    c = torch.where(given, x, torch.sigmoid(logits))
    ll = -F.binary_cross_entropy_with_logits(logits, x, reduction="none")[:, ~given].sum(-1)
    q, p = model.cvae.guide_net(x, c.flatten(1)), model.cvae.prior(c.flatten(1))
    kl = kl_divergence(Normal(q.base_dist.loc, q.base_dist.scale), Normal(p.base_dist.loc, p.base_dist.scale))
    return c, ll, kl.sum(-1)


def test_the_baseline_trains_first_and_alone_then_the_cvae_with_it_frozen():
    from pyrovae.data import Dataset, Split

    torch.manual_seed(0)
    given = quadrant_mask(2, 8, 8)  # left half given; the hidden half mirrors it
    left = torch.bernoulli(torch.full((200, 1, 8, 4), 0.5), generator=torch.Generator().manual_seed(0))
    x = torch.cat([left, left.flip(-1)], dim=-1)
    data = Dataset(Split(x[:160]), Split(x[160:180]), Split(x[180:]))
    model = StructuredCVAE(SHAPE, given, z_dim=2, hidden=(32,), activation="tanh")
    cvae_before = {k: v.clone() for k, v in model.cvae.state_dict().items()}
    rng = torch.get_rng_state()
    cfg = Config(elbo="meanfield", epochs=25, batch_size=32, lr=1e-2, binarize="none")
    training = StructuredTraining(model, data, cfg)
    # the baseline learned the mirror alone (chance: 32 hidden pixels x log 2), the CVAE is untouched
    _, val_ll, _ = _by_hand(model, data.val.x)
    assert -val_ll.mean() < 0.8 * 32 * math.log(2)
    assert training.scores(model)["val_baseline_nll"] == pytest.approx(-val_ll.mean().item(), rel=1e-5)
    assert all(torch.equal(v, model.cvae.state_dict()[k]) for k, v in cvae_before.items())
    assert torch.equal(torch.get_rng_state(), rng)  # the CVAE's draws are as if the baseline were given
    # ... and it is frozen: the run's loss is the CVAE's -ELBO on c, by hand, and moves no baseline weight
    assert not any(p.requires_grad for p in model.baseline.parameters())
    xb = data.train.x[:6]
    c, _, kl = _by_hand(model, xb)
    assert torch.allclose(model.condition(xb), c, atol=1e-6)
    model.zero_grad(set_to_none=True)
    pyro.set_rng_seed(3)
    loss = training.loss(xb)
    pyro.set_rng_seed(3)
    z = model.cvae.guide_net(xb, c.flatten(1)).rsample()
    recon = model.cvae.decode(z, c).log_prob(xb)
    assert loss.item() == pytest.approx(-(recon - kl).sum().item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in model.baseline.parameters())
    assert any(p.grad is not None for p in model.cvae.parameters())


def test_trains_through_the_cli_and_every_command_works(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path, n=96, shape=SHAPE)
    out = tmp_path / "run"
    base = ["--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "16", "--batch-size", "16",
            "--val-size", "16", "--eval-k", "20", "--quiet"]  # fmt: skip
    assert (
        main(
            ["train", "--model", "structured", "--quadrants", "2", "--epochs", "2", *base, "--out", str(out)]
        )
        == 0
    )
    run = load_run(out)
    model, test = run.model, run.data.test
    assert model.variant == "structured" and torch.equal(model.given, quadrant_mask(2, 8, 8))
    # eval.json: the CVAE's KL and the baseline's NLL are those of the networks, by hand
    res = json.loads((out / "eval.json").read_text())
    c, ll, kl = _by_hand(model, test.x)
    assert res["kl"] == pytest.approx(kl.mean().item(), abs=1e-5)
    assert res["test_baseline_nll"] == pytest.approx(-ll.mean().item(), abs=1e-4)
    assert res["elbo"] == pytest.approx(res["recon"] - res["kl"], abs=1e-4)
    # ... and log p(x) is the hidden pixels' alone: the given ones may change without changing it
    pyro.set_rng_seed(0)
    recon = -torch.stack(
        [model.cvae.decode(model.encode(test.x).sample(), c).log_prob(test.x) for _ in range(200)]
    )
    assert res["recon"] == pytest.approx(-recon.mean().item(), rel=0.05)
    # the baseline, trained first and then frozen, has the same validation NLL in every row, by hand
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    _, val_ll, _ = _by_hand(model, run.data.val.x)
    assert all(float(r["val_baseline_nll"]) == pytest.approx(-val_ll.mean().item(), abs=1e-4) for r in rows)
    # completions keep the given pixels exactly and vary where they are hidden
    given = model.given
    pyro.set_rng_seed(1)
    rows_ = model.completions(test.x[:5])
    assert rows_.shape == (6, 5, *SHAPE)
    for row in rows_[1:]:
        assert torch.equal(row[:, given], test.x[:5][:, given])
    assert (rows_[0][:, ~given] == 0.5).all() and torch.allclose(rows_[2], c[:5], atol=1e-6)
    draws = torch.stack([sample_prior(model, y=test.x[:5]) for _ in range(2)])
    assert not torch.equal(draws[0][:, ~given], draws[1][:, ~given])  # each draw its own z ~ p(z|c)
    # a reconstruction decodes with the condition of its own image, not of a blank one
    rec = reconstruct(model, test.x[:5], test.x[:5])
    z = model.encode(test.x[:5]).mean.detach()
    assert torch.allclose(rec, torch.sigmoid(model.cvae.decoder(z, c[:5].flatten(1))), atol=1e-6)

    assert main(["evaluate", str(out), "--k", "10", "--n-test", "8", "--quiet"]) == 0
    assert json.loads((out / "eval.json").read_text())["k"] == 10
    assert main(["sample", str(out), "-o", str(tmp_path / "s.png"), "-n", "4"]) == 0
    assert (tmp_path / "s.png").exists()
    capsys.readouterr()
    assert main(["sample", str(out), "-o", str(tmp_path / "s3.png"), "--label", "3"]) == 2
    assert "takes no --label" in capsys.readouterr().err and not (tmp_path / "s3.png").exists()
    assert main(["reconstruct", str(out), "-o", str(tmp_path / "r.png"), "-n", "4"]) == 0
    assert main(["inspect", str(out), "--k", "5", "--n", "20"]) == 0
    index = (out / "figures" / "index.md").read_text()
    assert "(completions.png)" in index and "(reconstructions.png)" in index
    assert "interpolation" not in index and "Prior samples" not in index  # no image from nothing
    csv_path = tmp_path / "s.csv"
    assert main(["score", str(out), "--split", "test", "--k", "20", "-o", str(csv_path), "--quiet"]) == 0
    scores = list(csv.DictReader(open(csv_path)))
    assert len(scores) == len(test)
    assert np.mean([float(r["neg_log_likelihood"]) for r in scores]) <= np.mean(
        [float(r["neg_elbo"]) for r in scores]
    )
    assert main(["embed", str(out), "--split", "test", "-o", str(tmp_path / "z.npy"), "--quiet"]) == 0
    assert np.allclose(np.load(tmp_path / "z.npy")[:5], z.numpy(), atol=1e-5)  # the mean of q(z|x,c)
    assert main(["runs", str(tmp_path)]) == 0
    assert "structured 2 given quadrants z2" in capsys.readouterr().out


def test_options_it_owns_and_refuses(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path)
    for extra, message in [
        (["--quadrants", "2"], "--quadrants applies to model structured"),
        (["--model", "hierarchical", "--quadrants", "2"], "--quadrants belongs to model structured"),
        (["--model", "structured"], "model structured needs --quadrants 1, 2 or 3"),
        (["--model", "structured", "--quadrants", "4"], "got 4"),
        (["--model", "structured", "--quadrants", "1", "--prior", "vamp"], "drop --prior vamp"),
        (["--model", "structured", "--quadrants", "1", "--conditional"], "--conditional belongs to model conditional"),
    ]:  # fmt: skip
        code = main(["train", "--dataset", "file", "--data-file", str(data), "--out", str(tmp_path / "r"), "--quiet",
                     *extra])  # fmt: skip
        assert code == 2 and message in capsys.readouterr().err, extra
        assert not (tmp_path / "r").exists()


def test_runs_names_the_model_variant_of_every_run(tmp_path, capsys):
    configs = {
        "plain": Config(),
        "cvae": Config(conditional=True),
        "m2": Config(semi_supervised=True, labeled=100),
        "two_layers": Config(model="hierarchical", z_dim=20),
        "quadrants": Config(model="structured", quadrants=1, z_dim=200),
    }
    for name, cfg in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(cfg.to_json())
    models = {r["run"]: r["model"] for r in list_runs(tmp_path)}
    assert models == {
        "cvae": "conditional vamp/diag/bernoulli z50",
        "m2": "semisupervised normal/diag/bernoulli z50",
        "plain": "vae normal/diag/bernoulli z50",
        "quadrants": "structured 1 given quadrant z200 (nats of hidden pixels)",
        "two_layers": "hierarchical bernoulli z1 40 z2 20",
    }
    assert main(["runs", str(tmp_path)]) == 0
    assert "hierarchical bernoulli z1 40 z2 20" in capsys.readouterr().out


def test_runs_says_what_every_variant_trains_on(tmp_path):
    configs = {
        "m2": Config(semi_supervised=True, labeled=100),
        "m2_alpha": Config(semi_supervised=True, labeled=100, aux_weight=5.0, beta=2.0),
        "free_bits": Config(
            elbo="meanfield", free_bits=0.5, beta=4.0, beta_schedule="linear", warmup_epochs=3
        ),
        "two_layers": Config(model="hierarchical", elbo="iwae", num_particles=5),
        "beta": Config(beta=4.0),
        "two_layers_beta": Config(model="hierarchical", beta=2.0),
    }
    for name, cfg in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(cfg.to_json())
    rows = {r["run"]: (r["model"], r["objective"]) for r in list_runs(tmp_path)}
    assert {run: objective for run, (_, objective) in rows.items()} == {
        "m2": "M2: trace β=1, y enumerated; α=0.1·N/100",
        "m2_alpha": "M2: trace β=2, y enumerated; α=5",
        "free_bits": "meanfield β=4 (linear over 3 epochs), free bits λ=0.5",
        "two_layers": "iwae k=5",
        "beta": "trace β=4",
        "two_layers_beta": "trace β=2",
    }
    assert rows["beta"][0] == "vae normal/diag/bernoulli z50"  # β is the objective's, not the model's
    assert rows["two_layers_beta"][0] == "hierarchical bernoulli z1 100 z2 50"


def test_float64_images_stay_float64():
    from pyrovae.data import Split
    from pyrovae.evaluate import evaluate

    model = StructuredCVAE(SHAPE, quadrant_mask(3, 8, 8), z_dim=2, hidden=(8,)).double()
    x = torch.bernoulli(torch.full((4, *SHAPE), 0.5, dtype=torch.float64))
    res = evaluate(model, Split(x, None), k=5)
    assert res["log_likelihood"] <= 0 and res["z_dim"] == 2
    assert sample_prior(model, y=x).dtype == torch.float64 and model.completions(x).dtype == torch.float64


def test_the_baseline_reports_its_epochs_before_the_cvae_unless_quiet(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path, n=96, shape=SHAPE)
    base = ["train", "--model", "structured", "--quadrants", "1", "--baseline-epochs", "3", "--epochs", "2",
            "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8", "--batch-size", "16",
            "--val-size", "16", "--no-eval"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "loud")]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("baseline: the deterministic network"))
    done = next(i for i, line in enumerate(lines) if line.startswith("baseline: done"))
    baseline_epochs = [line for line in lines[first:done] if line.startswith("epoch ")]
    cvae_epochs = [line for line in lines[done:] if line.startswith("epoch ")]
    assert [e.split(":")[0] for e in baseline_epochs] == ["epoch 1", "epoch 2", "epoch 3"]
    assert [e.split(":")[0] for e in cvae_epochs] == ["epoch 1", "epoch 2"]
    # the figure it says it froze at is the baseline's validation NLL that metrics.csv logs
    said = -float(lines[done].split("validation ELBO ")[1].split()[0])
    rows = list(csv.DictReader(open(tmp_path / "loud" / "metrics.csv")))
    assert said == pytest.approx(float(rows[0]["val_baseline_nll"]), abs=0.006)
    assert main([*base, "--quiet", "--out", str(tmp_path / "quiet")]) == 0
    assert "baseline:" not in capsys.readouterr().out
