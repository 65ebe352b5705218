"""``pyrovae score`` and ``pyrovae embed``: per-datum scores and codes of whole files, streamed."""

import csv
import math
import re
import threading

import numpy as np
import pyro
import pytest
import torch

from pyrovae import Config, load_run, train
from pyrovae.cli import main
from pyrovae.data import DataError
from pyrovae.evaluate import elbo_terms, log_likelihood
from pyrovae.posterior import posterior_mean, reconstruct
from pyrovae.score import Rows, open_rows, score, score_batch, threshold_from

SHAPE = (8, 8)


def _images(n: int, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Binary (n, 8, 8) images of ``classes`` noisy prototypes, uint8 in {0, 255}, and labels."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).random((classes, *SHAPE))
    y = np.arange(n) % classes
    x = rng.random((n, *SHAPE)) < 0.1 + 0.8 * protos[y]
    return (x * 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("score")
    x, y = _images(150)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    return d


def _train(files, out, **options):
    cfg = Config(dataset="file", data_file=str(files / "x.npy"), labels_file=str(files / "y.npy"), val_size=30,
                 z_dim=2, hidden=[16], batch_size=16, epochs=6, eval_k=5, lr=0.01, **options)  # fmt: skip
    pyro.clear_param_store()
    return train(cfg, out, progress=False, evaluate=False)


@pytest.fixture(scope="module")
def run_dir(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "vae"
    _train(files, out, exclude_classes=[2])
    return out


@pytest.fixture(scope="module")
def cond_dir(files, tmp_path_factory):
    """A conditional run of three classes that trained on two, 0 and 1."""
    out = tmp_path_factory.mktemp("run") / "cvae01"
    _train(files, out, conditional=True, prior="conditional", classes=[0, 1])
    return out


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_scores_are_evaluates_per_datum_numbers(run_dir, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", str(run_dir), "--split", "test", "--k", "7", "--batch-size", "8", "-o", str(out),
                 "--quiet"]) == 0  # fmt: skip
    rows = _read_csv(out)
    run = load_run(run_dir)
    test = run.data.test
    assert [int(r["index"]) for r in rows] == list(range(len(test)))
    assert [int(r["label"]) for r in rows] == test.y.tolist()
    # the same estimators, called batch by batch in the same order with the same seed
    pyro.set_rng_seed(0)
    neg_elbo, neg_ll, err = [], [], []
    for i in range(0, len(test), 8):
        x = test.x[i : i + 8]
        recon, kl = elbo_terms(run.model, x)
        neg_elbo.append(kl - recon)
        neg_ll.append(-log_likelihood(run.model, x, k=7))
        mean = run.model.likelihood.mean(run.model.decoder(posterior_mean(run.model, x), None))
        err.append(((mean - x) ** 2).flatten(1).sum(1))
    for column, expected in [("neg_elbo", neg_elbo), ("neg_log_likelihood", neg_ll), ("recon_error", err)]:
        got = torch.tensor([float(r[column]) for r in rows])
        assert torch.allclose(got, torch.cat(expected), rtol=1e-6, atol=1e-5), column


def test_autoencoder_reports_what_it_has(files, tmp_path, capsys):
    """A point-mass guide has no ELBO and no log p(x): its columns are -log p(x|z*) and
    -log p(x, z*), whose difference is -log p(z*), here N(0, I) in closed form; nothing is
    importance-sampled, so no K is reported."""
    run = _train(files, tmp_path / "ae", guide="delta")
    out = tmp_path / "ae.csv"
    assert (
        main(["score", str(tmp_path / "ae"), "--data-file", str(files / "x.npy"), "-o", str(out), "--quiet"])
        == 0
    )
    said = capsys.readouterr().out
    assert said.startswith(f"scored 150 rows of {files / 'x.npy'}; means: neg_recon ") and "K=" not in said
    rows = _read_csv(out)
    assert list(rows[0]) == ["index", "neg_recon", "neg_log_joint", "recon_error"]
    x = torch.from_numpy(np.load(files / "x.npy")).float().div(255).unsqueeze(1)
    z = posterior_mean(run.model, x)
    neg_log_prior = 0.5 * (z**2).sum(1) + z.shape[1] / 2 * math.log(2 * math.pi)
    got = torch.tensor([float(r["neg_log_joint"]) - float(r["neg_recon"]) for r in rows])
    assert torch.allclose(got, neg_log_prior, atol=1e-4)


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"RssAnon:\s+(\d+)", f.read()).group(1))


def test_100k_rows_in_bounded_memory_in_order(run_dir, tmp_path):
    """A 100,000-row file (25.6 MB of uint8, 102 MB as float32) is scored a batch at a time: anonymous
    memory grows by far less than the data would take, and row i of the output is datum i."""
    x, _ = _images(100_000, seed=1)
    np.save(tmp_path / "big.npy", x)
    del x
    run = load_run(run_dir)
    rows = Rows(np.load(tmp_path / "big.npy", mmap_mode="r"), None, "big")
    peak, start, done = [0], _rss_anon_kib(), threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_kib())
            done.wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        res = score(run, rows, tmp_path / "big.csv", k=2, batch_size=2000, progress=False)
    finally:
        done.set()
        watcher.join()
    assert res["n"] == 100_000
    assert (peak[0] - start) / 1024 < 30, f"memory grew by {(peak[0] - start) / 1024:.0f} MiB"
    # order: the deterministic column against one direct pass over the whole array
    got = np.loadtxt(tmp_path / "big.csv", delimiter=",", skiprows=1, usecols=(0, 3), dtype=np.float64)
    assert (got[:, 0] == np.arange(100_000)).all()
    xs = torch.from_numpy(np.load(tmp_path / "big.npy")).float().div(255).unsqueeze(1)
    direct = (reconstruct(run.model, xs) - xs).pow(2).flatten(1).sum(1)
    assert np.allclose(got[:, 1], direct.numpy(), rtol=1e-5, atol=1e-4)


def test_threshold_flags_the_fraction_asked_on_validation(run_dir, tmp_path):
    out = tmp_path / "val.csv"
    assert main(["score", str(run_dir), "--split", "val", "--k", "5", "--threshold-from", "val", "--fpr", "0.2",
                 "-o", str(out), "--quiet"]) == 0  # fmt: skip
    rows = _read_csv(out)
    flagged = sum(r["anomalous"] == "True" for r in rows)
    assert abs(flagged - 0.2 * len(rows)) <= 1 and 0 < flagged < len(rows)
    # the flag is "score above the validation quantile", whichever column it thresholds
    run = load_run(run_dir)
    t = threshold_from(run, Rows(run.data.val.x, None, "val"), "recon_error", fpr=0.2, k=5, progress=False)
    assert main(["score", str(run_dir), "--split", "test", "--threshold-from", "val", "--fpr", "0.2",
                 "--threshold-score", "recon_error", "-o", str(out), "--quiet"]) == 0  # fmt: skip
    rows = _read_csv(out)
    assert [r["anomalous"] == "True" for r in rows] == [float(r["recon_error"]) > t for r in rows]


def test_held_out_class_scores_higher(run_dir, tmp_path):
    """The run never saw class 2 (exclude_classes): its test images are the less likely ones."""
    out = tmp_path / "test.csv"
    assert main(["score", str(run_dir), "--split", "test", "--k", "20", "-o", str(out), "--quiet"]) == 0
    rows = _read_csv(out)
    held = [float(r["neg_log_likelihood"]) for r in rows if r["label"] == "2"]
    seen = [float(r["neg_log_likelihood"]) for r in rows if r["label"] != "2"]
    assert held and seen and np.mean(held) > np.mean(seen) + 1


def test_embed_in_order_means_and_draws(run_dir, files, tmp_path):
    run = load_run(run_dir)
    x = torch.from_numpy(np.load(files / "x.npy")).float().div(255).unsqueeze(1)
    assert main(["embed", str(run_dir), "--data-file", str(files / "x.npy"), "--batch-size", "40",
                 "-o", str(tmp_path / "z.npy"), "--quiet"]) == 0  # fmt: skip
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (150, 2)
    assert np.allclose(z, posterior_mean(run.model, x).numpy(), atol=1e-6)
    for suffix in ("npy", "csv"):
        assert main(["embed", str(run_dir), "--data-file", str(files / "x.npy"), "--labels-file",
                     str(files / "y.npy"), "--samples", "100", "-o", str(tmp_path / f"d.{suffix}"), "--quiet"]) == 0  # fmt: skip
    draws = np.load(tmp_path / "d.npy")
    assert draws.shape == (150, 100, 2)
    rows = _read_csv(tmp_path / "d.csv")
    assert list(rows[0]) == ["index", "label", "sample", "z0", "z1"] and len(rows) == 150 * 100
    assert [int(r["label"]) for r in rows[::100]] == np.load(files / "y.npy").tolist()
    from_csv = np.array([[float(r["z0"]), float(r["z1"])] for r in rows]).reshape(150, 100, 2)
    assert np.allclose(from_csv, draws, atol=1e-6)  # same seed, same draws
    # the draws scatter around the posterior mean as q's scale says
    q = run.model.encode(x)
    se = q.base_dist.scale.detach().numpy() / math.sqrt(100)
    assert (np.abs(draws.mean(1) - z) < 5 * se).all()


def test_scores_keep_the_models_dtype(run_dir):
    run = load_run(run_dir)
    run.model.double()
    s = score_batch(run, run.data.test.x.double(), None, k=3)
    assert all(v.dtype == torch.float64 for v in s.values())
    res = score(run, Rows(run.data.test.x, None, "test"), None, k=3, keep=True, progress=False)
    assert res["scores"]["neg_elbo"].dtype == torch.float64  # float32 rows scored by a float64 model


def test_conditional_run_needs_labels(files, tmp_path):
    _train(files, tmp_path / "cvae", conditional=True, prior="conditional")
    out = tmp_path / "c.csv"
    args = [
        "score",
        str(tmp_path / "cvae"),
        "--data-file",
        str(files / "x.npy"),
        "-o",
        str(out),
        "--quiet",
        "--k",
        "3",
    ]
    assert main(args) == 2
    assert main([*args, "--labels-file", str(files / "y.npy")]) == 0
    assert [int(r["label"]) for r in _read_csv(out)] == np.load(files / "y.npy").tolist()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data-file", "missing.npy"], "does not exist"),
        (["--data-file", "{wide}"], "rows of shape (1, 8, 9)"),
        (["--data-file", "{grey}"], "expects [0, 1]"),
        (["--data-file", "{x}", "--labels-file", "{short}"], "150 rows but 3 labels"),
        (["--data-file", "{x}", "--labels-file", "{half}"], "not whole numbers (1.5 in row 1)"),
        (["--split", "test", "--k", "0"], "--k"),
        (["--split", "test", "--threshold-from", "val", "--fpr", "1.5"], "--fpr must be between 0 and 1"),
        (["--split", "test", "--threshold-from", "val", "--threshold-score", "elbo"], "no score 'elbo'"),
    ],
)
def test_bad_input_exits_2_with_a_message(run_dir, files, tmp_path, capsys, extra, message):
    np.save(tmp_path / "wide.npy", np.zeros((4, 8, 9), np.uint8))
    np.save(tmp_path / "grey.npy", np.full((4, 8, 8), 3.0))
    np.save(tmp_path / "short.npy", np.zeros(3, np.int64))
    np.save(tmp_path / "half.npy", np.load(files / "y.npy") + np.arange(150) % 2 / 2)
    paths = {"wide": tmp_path / "wide.npy", "grey": tmp_path / "grey.npy", "short": tmp_path / "short.npy",
             "half": tmp_path / "half.npy", "x": files / "x.npy"}  # fmt: skip
    extra = [e.format(**paths) for e in extra]
    assert main(["score", str(run_dir), *extra, "-o", str(tmp_path / "s.csv"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_embed_refuses_unknown_formats_and_both_sources(run_dir, files, tmp_path, capsys):
    assert main(["embed", str(run_dir), "--split", "test", "-o", str(tmp_path / "z.txt")]) == 2
    assert "name a .npy or .csv file" in capsys.readouterr().err
    # argparse: one source only
    assert (
        main(["embed", str(run_dir), "--split", "test", "--data-file", str(files / "x.npy"), "-o", "z.npy"])
        == 2
    )
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("command,output", [("score", "s.csv"), ("embed", "z.npy"), ("embed", "z.csv")])
def test_a_bad_row_late_in_the_file_leaves_no_output(run_dir, tmp_path, capsys, command, output):
    x = _images(50)[0].astype(np.float32) / 255
    x[47, 0, 0] = 2.0  # in the last batch of 10
    np.save(tmp_path / "late.npy", x)
    args = [command, str(run_dir), "--data-file", str(tmp_path / "late.npy"), "--batch-size", "10", "--quiet"]
    assert main([*args, "-o", str(tmp_path / output)]) == 2
    assert "rows 40-49" in capsys.readouterr().err
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("command,output", [("score", "s.csv"), ("embed", "z.npy"), ("embed", "z.csv")])
def test_a_failed_run_keeps_the_file_already_there(run_dir, tmp_path, capsys, command, output):
    """Output is written beside the file and renamed over it at the end: a failure midway leaves
    an earlier result whole, and no temporary file."""
    x = _images(50)[0].astype(np.float32) / 255
    x[47, 0, 0] = 2.0  # in the last batch of 10
    np.save(tmp_path / "late.npy", x)
    (tmp_path / output).write_text("old\n")
    args = [command, str(run_dir), "--data-file", str(tmp_path / "late.npy"), "--batch-size", "10", "--quiet"]
    assert main([*args, "-o", str(tmp_path / output)]) == 2
    assert "rows 40-49" in capsys.readouterr().err
    assert (tmp_path / output).read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.npy", output]


@pytest.mark.parametrize("label", [2, 5])  # a class the run never trained on, one past its classes
@pytest.mark.parametrize("command,output", [("score", "s.csv"), ("embed", "z.npy")])
def test_labels_of_classes_not_trained_on_are_refused(
    cond_dir, files, tmp_path, capsys, command, output, label
):
    """Labels the model was not trained on are refused before it runs, as ``sample --label`` refuses
    them: one line, status 2, no output; in Python a DataError without Pyro's dump of its trace."""
    y = np.load(files / "y.npy") % 2
    y[120:] = label  # late in the file, after batches that would be written
    np.save(tmp_path / "y.npy", y)
    args = [command, str(cond_dir), "--data-file", str(files / "x.npy"), "--labels-file", str(tmp_path / "y.npy"),
            "--batch-size", "10", "-o", str(tmp_path / output), "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: label {label} is not a class this model was trained on (0, 1): it labels "
                          "row 120 of ") and "(and 29 other rows)" in err and "--labels-file" in err  # fmt: skip
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / output).exists()
    run = load_run(cond_dir)
    rows = open_rows(run, files / "x.npy", tmp_path / "y.npy")
    with pytest.raises(DataError, match=f"label {label} is not a class") as e:
        score(run, rows, k=2, progress=False)
    assert "Trace" not in str(e.value)


def test_a_conditional_run_of_some_classes_is_scored_embedded_and_inspected_on_them(
    cond_dir, tmp_path, capsys
):
    """Its model learned p(x | y) of classes 0 and 1 only: the test split is taken as evaluation
    takes it, the images of those classes, and the output says so (an unconditional run keeps
    every class: see test_held_out_class_scores_higher)."""
    test_y = load_run(cond_dir).data.test.y
    n = int((test_y < 2).sum())
    assert 0 < n < len(test_y)
    said = f"its {n} images of the classes the run was trained on, [0, 1], of {len(test_y)}"
    assert main(["score", str(cond_dir), "--split", "test", "--k", "2", "-o", str(tmp_path / "s.csv"),
                 "--quiet"]) == 0  # fmt: skip
    assert f"scored {n} rows" in (out := capsys.readouterr().out) and said in out and "(K=2)" in out
    rows = _read_csv(tmp_path / "s.csv")
    assert [int(r["label"]) for r in rows] == test_y[test_y < 2].tolist()
    # index: each image's position in the test split, so it can be found there
    assert [int(r["index"]) for r in rows] == (test_y < 2).nonzero().squeeze(1).tolist()
    assert main(["embed", str(cond_dir), "--split", "test", "-o", str(tmp_path / "z.csv"), "--quiet"]) == 0
    assert [int(r["index"]) for r in _read_csv(tmp_path / "z.csv")] == [int(r["index"]) for r in rows]
    assert main(["embed", str(cond_dir), "--split", "test", "-o", str(tmp_path / "z.npy"), "--quiet"]) == 0
    assert said in capsys.readouterr().out and np.load(tmp_path / "z.npy").shape == (n, 2)
    import pyrovae.plots

    drawn = []
    real = pyrovae.plots.reconstruction_grid
    with pytest.MonkeyPatch.context() as m:
        m.setattr(
            pyrovae.plots,
            "reconstruction_grid",
            lambda vae, x, y, path: drawn.append(y) or real(vae, x, y, path),
        )
        assert main(["reconstruct", str(cond_dir), "-n", "1000", "-o", str(tmp_path / "r.png")]) == 0
    assert drawn[0].tolist() == test_y[test_y < 2].tolist()  # decoded with labels it learned only
    assert f"drawing all {n}" in capsys.readouterr().err
    assert main(["inspect", str(cond_dir), "--k", "2"]) == 0
    index = (cond_dir / "figures" / "index.md").read_text()
    assert "Test images: those of the classes the run was trained on, [0, 1]" in index
    assert f"Average KL(q||p) per latent dimension over the first {n} test images" in index
