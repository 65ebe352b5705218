"""The semi-supervised VAE (M2): the enumerated ELBO against the sum over classes written out
from poutine traces, the labelled and unlabelled terms, particles, dtype, data split and CLI."""

import csv
import json
import re

import pyro
import pytest
import torch
from pyro import poutine

from pyrovae import SSVAE, Config, ConfigError, evaluate, load_run
from pyrovae.cli import main
from pyrovae.data import Split
from pyrovae.semisupervised import (
    UNLABELED,
    SemiSupervisedLoss,
    accuracy,
    balanced_labels,
    default_alpha,
    mixed_batches,
    style_and_content,
)

K = 3


@pytest.fixture
def ss():
    return SSVAE((1, 4, 4), z_dim=2, num_classes=K, hidden=(8,)).double()


@pytest.fixture
def x():
    return torch.bernoulli(torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))).double()


def _log_probs(tr) -> dict:
    return {
        name: site["fn"].log_prob(site["value"])
        for name, site in tr.nodes.items()
        if site["type"] == "sample"
    }


def _elbo_given(ss, x, y, z, beta=1.0):
    """Per-datum log p(y) + log p(x|y,z) + beta (log p(z) - log q(z|x,y)) at ``z``, from traces."""
    g = _log_probs(poutine.trace(poutine.condition(ss.guide, {"z": z})).get_trace(x, y))
    m = _log_probs(poutine.trace(poutine.condition(ss.model, {"z": z})).get_trace(x, y))
    return m["y"] + m["x"] + beta * (m["z"] - g["z"])


def _hand_unlabelled(ss, x, z, beta=1.0):
    """-sum_n sum_k q(k|x_n) [ELBO given k at z[k] - log q(k|x_n)]: z has shape (K, batch, z_dim)."""
    q = ss.classify(x)
    total = 0.0
    for k in range(K):
        yk = torch.full((len(x),), k)
        total = total + q.probs[:, k] * (_elbo_given(ss, x, yk, z[k], beta) - q.log_prob(yk))
    return -total.sum()


def _enumerated_z(ss, x, particles=None):
    """z of the guide's enumerated trace, (K, batch, z_dim), or (K, particles, batch, z_dim)."""
    guide = poutine.enum(ss.guide, first_available_dim=-2 if particles is None else -3)
    if particles is None:
        return poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    with pyro.plate("num_particles_vectorized", particles, dim=-2):
        return poutine.trace(guide).get_trace(x).nodes["z"]["value"]


def test_enumerated_elbo_is_the_sum_over_classes(ss, x):
    pyro.set_rng_seed(3)
    z = _enumerated_z(ss, x)
    assert z.shape == (K, 5, 2)
    pyro.set_rng_seed(3)  # TraceEnum_ELBO draws the same z: y is summed, not sampled
    loss = SemiSupervisedLoss(ss, alpha=7.0)(x, torch.full((5,), UNLABELED))
    assert loss.item() == pytest.approx(_hand_unlabelled(ss, x, z).item(), rel=1e-10)


def test_vectorized_particles_average_the_sum_over_classes(ss, x):
    pyro.set_rng_seed(4)
    z = _enumerated_z(ss, x, particles=3)  # (K, 3, batch, z_dim)
    assert z.shape == (K, 3, 5, 2) and not torch.equal(z[:, 0], z[:, 1])
    pyro.set_rng_seed(4)
    loss = SemiSupervisedLoss(ss, alpha=7.0, num_particles=3)(x, torch.full((5,), UNLABELED))
    hand = torch.stack([_hand_unlabelled(ss, x, z[:, p]) for p in range(3)]).mean()
    assert loss.item() == pytest.approx(hand.item(), rel=1e-10)


def test_labelled_rows_give_their_elbo_and_the_classification_loss(ss, x):
    y = torch.tensor([0, 2, 1, 1, 0])
    pyro.set_rng_seed(5)
    z = poutine.trace(ss.guide).get_trace(x, y).nodes["z"]["value"]
    pyro.set_rng_seed(5)
    loss = SemiSupervisedLoss(ss, alpha=0.0)(x, y)
    assert loss.item() == pytest.approx(-_elbo_given(ss, x, y, z).sum().item(), rel=1e-10)
    # the labelled ELBO does not train q(y|x); the classification loss does, weighted by alpha
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in ss.classifier.parameters())
    pyro.set_rng_seed(5)
    with_alpha = SemiSupervisedLoss(ss, alpha=2.5)(x, y)
    ce = -ss.classify(x).log_prob(y).sum()
    assert (with_alpha - loss).item() == pytest.approx(2.5 * ce.item(), rel=1e-10)


def test_a_mixed_batch_is_its_unlabelled_and_labelled_parts(ss, x):
    y = torch.tensor([UNLABELED, 2, UNLABELED, 1, UNLABELED])
    lab = y != UNLABELED
    pyro.set_rng_seed(6)
    mixed = SemiSupervisedLoss(ss, alpha=1.5)(x, y)
    pyro.set_rng_seed(6)  # the unlabelled part first, then the labelled one
    z = _enumerated_z(ss, x[~lab])
    zl = poutine.trace(ss.guide).get_trace(x[lab], y[lab]).nodes["z"]["value"]
    hand = _hand_unlabelled(ss, x[~lab], z) - _elbo_given(ss, x[lab], y[lab], zl).sum()
    hand = hand - 1.5 * ss.classify(x[lab]).log_prob(y[lab]).sum()
    assert mixed.item() == pytest.approx(hand.item(), rel=1e-10)
    mixed.backward()
    assert any(p.grad.any() for p in ss.classifier.parameters())  # unlabelled rows train q(y|x)


def test_beta_scales_the_z_terms_only(ss, x):
    y = torch.tensor([UNLABELED, 2, UNLABELED, 1, UNLABELED])
    lab = y != UNLABELED
    pyro.set_rng_seed(7)
    loss = SemiSupervisedLoss(ss, alpha=0.0)(x, y, beta=0.3)
    pyro.set_rng_seed(7)
    z = _enumerated_z(ss, x[~lab])
    zl = poutine.trace(ss.guide).get_trace(x[lab], y[lab]).nodes["z"]["value"]
    hand = _hand_unlabelled(ss, x[~lab], z, beta=0.3) - _elbo_given(ss, x[lab], y[lab], zl, beta=0.3).sum()
    assert loss.item() == pytest.approx(hand.item(), rel=1e-10)
    pyro.set_rng_seed(7)
    assert loss.item() != pytest.approx(SemiSupervisedLoss(ss, alpha=0.0)(x, y).item(), rel=1e-3)


def test_float64_is_kept(ss, x):
    loss = SemiSupervisedLoss(ss, alpha=1.0, num_particles=2)(
        x, torch.tensor([0, UNLABELED, 1, 2, UNLABELED])
    )
    loss.backward()
    assert loss.dtype == torch.float64
    assert all(p.grad.dtype == torch.float64 for p in ss.parameters() if p.grad is not None)
    recon, rate = ss.elbo_terms(x)
    assert recon.dtype == rate.dtype == torch.float64
    assert style_and_content(ss, x).dtype == torch.float64
    from pyrovae.evaluate import log_likelihood

    assert log_likelihood(ss, x, None, k=4).dtype == torch.float64


def test_elbo_terms_bound_log_px_and_match_the_enumerated_loss_on_average(ss, x):
    from pyrovae.evaluate import log_likelihood

    pyro.set_rng_seed(0)
    copies = 2000
    elbo = torch.sub(*ss.elbo_terms(x.repeat(copies, 1, 1, 1))).reshape(copies, 5).mean(0)  # (batch,)
    enum = -SemiSupervisedLoss(ss, 1.0, num_particles=copies)(x, torch.full((5,), UNLABELED)).detach()
    assert enum.item() == pytest.approx(elbo.sum().item(), abs=0.1)
    ll = log_likelihood(ss, x, None, k=2000)
    assert (elbo <= ll + 0.02).all() and (ll - elbo).max() < 5


def test_default_alpha_and_balanced_labels():
    assert default_alpha(50000, 100) == pytest.approx(50.0)
    y = torch.arange(90) % 3
    keep = balanced_labels(y, 7, 3, seed=0)
    assert keep.sum() == 7 and torch.bincount(y[keep]).tolist() == [3, 2, 2]
    assert torch.equal(keep, balanced_labels(y, 7, 3, seed=0))
    assert not torch.equal(keep, balanced_labels(y, 7, 3, seed=1))
    with pytest.raises(ValueError, match="class 0"):
        balanced_labels(torch.tensor([0, 1, 1, 1]), 4, 2)


def test_mixed_batches_hold_every_image_once_with_an_even_share_of_labels():
    labelled = torch.zeros(103, dtype=torch.bool)
    labelled[torch.arange(0, 103, 10)] = True  # 11 labelled, 92 unlabelled
    perm = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    batches = mixed_batches(perm, labelled, 20)
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert [int((~labelled[b]).sum()) for b in batches] == [20, 20, 20, 20, 12]
    assert [int(labelled[b].sum()) for b in batches] == [3, 2, 2, 2, 2]


def test_refuses_what_cannot_be_enumerated():
    for bad, option in [(dict(elbo="iwae", num_particles=2), "elbo"), (dict(elbo="meanfield"), "elbo"),
                        (dict(free_bits=0.5), "free_bits"), (dict(capacity=5.0), "capacity"),
                        (dict(conditional=True), "conditional"), (dict(prior="vamp"), "prior")]:  # fmt: skip
        with pytest.raises(ConfigError) as e:
            Config(semi_supervised=True, labeled=10, **bad).validate()
        assert e.value.option == option
    for bad in [dict(labeled=10), dict(monitor="accuracy"), dict(semi_supervised=True)]:
        with pytest.raises(ConfigError):
            Config(**bad).validate()


def _separable(tmp_path, n=150):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    proto = torch.zeros(3, 1, 6, 6)
    for k in range(3):
        proto[k, 0, 2 * k : 2 * k + 2] = 1  # three horizontal bars
    x = (proto[y] * 0.9 + 0.05).expand(n, 1, 6, 6)
    path = tmp_path / "bars.pt"
    torch.save({"x": torch.bernoulli(x, generator=g), "y": y}, path)
    return path


def test_cli_trains_resumes_evaluates_and_reports_accuracy(tmp_path, capsys):
    data = _separable(tmp_path)
    base = ["--dataset", "file", "--data-file", str(data), "--val-size", "15", "--semi-supervised",
            "--labeled", "6", "--z-dim", "2", "--hidden", "16", "--batch-size", "20", "--lr", "0.01",
            "--monitor", "accuracy", "--eval-k", "10", "--quiet"]  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", *base, "--epochs", "4", "--out", str(out), "--no-eval"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "8", "--eval", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 8 and {"val_accuracy", "test_accuracy"} <= set(rows[0])
    res = json.loads((out / "eval.json").read_text())
    best = max(rows, key=lambda r: float(r["val_accuracy"]))  # best.pt: first epoch of best accuracy
    assert res["test_accuracy"] == pytest.approx(float(best["test_accuracy"]))
    run = load_run(out)
    assert res["test_accuracy"] == pytest.approx(accuracy(run.model, run.data.test))
    assert res["test_accuracy"] >= 0.9  # six labels and the unlabelled bars suffice
    assert int((run.data.train.y != UNLABELED).sum()) == 6
    assert res["elbo"] <= res["log_likelihood"] + 0.5
    assert main(["evaluate", str(out), "--k", "5", "--quiet"]) == 0
    assert "test accuracy of q(y|x)" in capsys.readouterr().out
    # in Python, on the run's labelled test split, the same figures: log p(x) summed over y, not log p(x, y)
    pyro.set_rng_seed(0)  # evaluate's default --seed
    again, saved = (
        evaluate(run.model, run.data.test, k=5, n_ll=run.config.eval_n_test),
        json.loads((out / "eval.json").read_text()),
    )
    assert again["elbo"] == pytest.approx(saved["elbo"], abs=1e-5)
    assert again["log_likelihood"] == pytest.approx(saved["log_likelihood"], abs=1e-5)
    assert main(["sample", str(out), "--label", "2", "-n", "8", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(out), "--label", "3", "-o", str(tmp_path / "s.png")]) == 2
    assert main(["inspect", str(out), "--k", "5", "--n", "15"]) == 0
    assert "Style and content" in (out / "figures" / "index.md").read_text()


def test_step_graphed_says_at_once_that_the_m2_loss_runs_eagerly(tmp_path, capsys):
    """The M2 loss's shapes depend on which images are labelled, so no graph can hold it: the
    first line says the step is eager and why, and the run is the eager run, loss for loss."""
    data = _separable(tmp_path)
    base = ["--dataset", "file", "--data-file", str(data), "--val-size", "15", "--semi-supervised",
            "--labeled", "6", "--z-dim", "2", "--hidden", "16", "--batch-size", "20", "--epochs", "2",
            "--no-eval"]  # fmt: skip
    said, losses = {}, {}
    for step in ("graphed", "eager"):
        assert main(["train", *base, "--step", step, "--out", str(tmp_path / step)]) == 0
        said[step] = capsys.readouterr().out
        losses[step] = [r["train_loss"] for r in csv.DictReader(open(tmp_path / step / "metrics.csv"))]
    first = next(line for line in said["graphed"].splitlines() if line.startswith("training step:"))
    assert first.startswith("training step: eager (not graphed: the M2 loss splits each batch"), first
    assert "could not be captured" not in said["graphed"]
    assert losses["graphed"] == losses["eager"] and len(losses["eager"]) == 2


def test_cli_refuses_an_enumeration_it_cannot_do(tmp_path, capsys):
    data = _separable(tmp_path, n=30)
    code = main(["train", "--dataset", "file", "--data-file", str(data), "--semi-supervised", "--labeled", "3",
                 "--elbo", "iwae", "--num-particles", "2", "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 2 and "cannot enumerate" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_style_and_content_decodes_one_style_with_every_class(ss, x):
    grid = style_and_content(ss, x)
    assert grid.shape == (5, K, 1, 4, 4)
    z = ss.encode(x).mean
    assert torch.allclose(grid[:, 1], ss.decode(z, torch.ones(5, dtype=torch.long)).mean)
    assert not torch.allclose(grid[:, 0], grid[:, 1])
    assert accuracy(ss, Split(x, ss.classify(x).probs.argmax(-1))) == 1.0


def test_a_batch_of_as_many_images_as_classes_is_not_taken_for_one_hot_labels(ss):
    """q(y|x)'s draws for a batch of K images have shape (k, K), as one-hot rows would: they are
    class indices all the same (a run evaluated on 10 MNIST images crashed, and 3 images with 3
    classes gave a wrong log p(x) silently)."""
    from pyrovae.evaluate import log_likelihood

    x = torch.bernoulli(torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))).double()
    pyro.set_rng_seed(0)
    three = log_likelihood(ss, x[:K], k=4000)  # a batch of K = 3 images
    four = log_likelihood(ss, x, k=4000)[:K]
    assert torch.allclose(three, four, atol=0.1), (three, four)


def _trained_m2(tmp_path, epochs: int = 3):
    """A small M2 run on the bars, evaluated (eval.json) with K=10 on every test image."""
    data = _separable(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "file", "--data-file", str(data), "--val-size", "15", "--semi-supervised",
                 "--labeled", "6", "--z-dim", "2", "--hidden", "16", "--batch-size", "20", "--lr", "0.01",
                 "--epochs", str(epochs), "--eval-k", "10", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    return out


def test_score_and_inspect_of_m2_give_log_px_summed_over_y_as_evaluate_does(tmp_path, capsys):
    """score passed M2 the true label, so its figures were -log p(x, y), not eval.json's -log p(x)."""
    out = _trained_m2(tmp_path)
    res = json.loads((out / "eval.json").read_text())
    n = res["n_images"]
    assert res["n_ll_images"] == n <= 100  # one batch each, so score draws what evaluate drew
    scores = tmp_path / "scores.csv"
    assert main(["score", str(out), "--split", "test", "--k", "10", "--batch-size", "100", "-o", str(scores),
                 "--quiet"]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(scores)))
    assert len(rows) == n and [int(r["label"]) for r in rows] == load_run(out).data.test.y.tolist()
    neg_elbo = torch.tensor([float(r["neg_elbo"]) for r in rows])
    neg_ll = torch.tensor([float(r["neg_log_likelihood"]) for r in rows])
    assert neg_elbo.mean().item() == pytest.approx(-res["elbo"], abs=1e-4)
    assert neg_ll.mean().item() == pytest.approx(-res["log_likelihood"], abs=1e-4)
    # the reconstruction decodes with the class q(y|x) infers, the code evaluation takes
    run = load_run(out)
    x = run.data.test.x
    rec = run.model.decode(run.model.encode(x).mean, run.model.predict(x)).mean
    err = torch.tensor([float(r["recon_error"]) for r in rows])
    assert torch.allclose(err, (rec - x).pow(2).flatten(1).sum(1), atol=1e-4)
    # inspect's ranking is of the same -log p(x): its extremes are score's, to the nats it prints
    assert main(["inspect", str(out), "--k", "10", "--n", str(n)]) == 0
    text = (out / "figures" / "index.md").read_text()
    ranked = re.search(r"top: highest, (-?\d+) nats; bottom: lowest, (-?\d+) nats", text)
    assert ranked, text
    assert abs(float(ranked[1]) - neg_ll.max().item()) < 1 and abs(float(ranked[2]) - neg_ll.min().item()) < 1


def test_m2_scores_and_embeds_data_without_labels_and_its_own_unlabelled_images(tmp_path, capsys):
    """M2 infers y, so unlabelled data are its data: score of a file without labels was refused
    ("the run is conditional on labels"), and of the train split for its -1 markers."""
    import numpy as np

    from pyrovae.posterior import posterior_mean

    out = _trained_m2(tmp_path, epochs=1)
    run = load_run(out)
    x = run.data.test.x[:20]
    np.save(tmp_path / "x.npy", x.numpy())
    for source in (["--data-file", str(tmp_path / "x.npy")], ["--split", "train"]):
        assert main(["score", str(out), *source, "--k", "3", "-o", str(tmp_path / "s.csv"), "--quiet"]) == 0
        assert main(["embed", str(out), *source, "-o", str(tmp_path / "z.npy"), "--quiet"]) == 0
        assert "error" not in capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [int(r["label"]) for r in rows] == run.data.train.y.tolist()  # -1: hidden in training
    assert UNLABELED in run.data.train.y.tolist()
    # the code of an image is the mean of q(z|x,y) at the class q(y|x) infers, as evaluation's
    z = np.load(tmp_path / "z.npy")
    assert np.allclose(z, posterior_mean(run.model, run.data.train.x).numpy(), atol=1e-5)
    assert main(["embed", str(out), "--data-file", str(tmp_path / "x.npy"), "-o", str(tmp_path / "z.npy"),
                 "--quiet"]) == 0  # fmt: skip
    assert np.allclose(np.load(tmp_path / "z.npy"), posterior_mean(run.model, x).numpy(), atol=1e-5)


def test_inspect_of_m2_says_what_it_drew_and_counts_active_units_as_eval_json(tmp_path):
    """index.md said M2's samples decode z ~ p(z|y) (its prior is p(z)), and counted active units
    given the true label, against eval.json's count without it."""
    out = _trained_m2(tmp_path, epochs=1)
    res = json.loads((out / "eval.json").read_text())
    assert main(["inspect", str(out), "--k", "3", "--n", str(res["n_images"])]) == 0
    text = (out / "figures" / "index.md").read_text()
    assert "z ~ p(z) with one label y" in text and "p(z|y)" not in text
    assert "q(z|x,y) at the class q(y|x) infers, as in eval.json" in text
    assert f"{res['active_units']} of 2 dimensions are active over these {res['n_images']} images" in text
