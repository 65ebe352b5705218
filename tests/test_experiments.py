"""Every experiment script runs end to end on a tiny budget; a new script must be listed here."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
TINY = ["--epochs", "1", "--train-size", "600", "--k", "3", "--n-test", "20"]
NO_LOG_PX = TINY[:4]  # for the scripts that estimate no log p(x): they take no --k, --n-test
SMOKE = {
    "mnist_vae.py": ["--epochs", "1", "--k", "3", "--n-test", "20", "--quiet", "--overwrite"],
    "compare_priors_guides.py": [
        *TINY,
        "--priors",
        "normal",
        "vamp",
        "--guides",
        "diag",
        "iaf",
        "--z-dim",
        "4",
        "--hidden",
        "32",
        "--quiet",
    ],  # fmt: skip
    "beta_sweep.py": [*TINY, "--betas", "0.5", "4", "--z-dim", "4", "--quiet"],
    "cvae_quadrants.py": [*TINY, "--quadrants", "1", "3", "--z-dim", "4", "--hidden", "32", "--quiet"],
    "latent_dim.py": [*TINY, "--z-dims", "2", "5", "--quiet"],
    "overfitting.py": [*TINY, "--val-size", "500", "--quiet"],
    "kl_vanishing.py": [*TINY, "--z-dim", "8", "--hidden", "32", "--val-size", "500", "--quiet"],
    "anomaly_mnist.py": [*TINY, "--digits", "1", "--z-dim", "4", "--n-pca", "1000", "--quiet"],
    "embedding.py": [*NO_LOG_PX, "--z-dims", "2", "3", "--n-probe", "1000", "--n-map", "60", "--quiet"],
    "ss_vae.py": [*TINY, "--labels", "100", "--quiet"],
    "ss_vae_pyro_protocol.py": [*NO_LOG_PX, "--labels", "100", "--quiet"],
    "disentanglement.py": [
        *TINY,
        "--image-size",
        "16",
        "--models",
        "beta16",
        "tcvae16",
        "--seeds",
        "0",
        "--z-dim",
        "3",
        "--val-size",
        "64",
        "--metric-scale",
        "0.005",
        "--mig-scale",
        "0.05",
        "--dci-trees",
        "5",
        "--quiet",
    ],  # fmt: skip
    "custom_components.py": ["--epochs", "1", "--train-size", "600", "--k", "50", "--n-test", "50"],
    "conditional_samples.py": [
        *TINY,
        "--per-class",
        "20",
        "--diagnostic-images",
        "500",
        "--classifier-epochs",
        "3",
        "--variants",
        "input",
        "every+vamp",
        "--quiet",
    ],  # fmt: skip
}


def _scripts():
    return sorted(p.name for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_listed():
    assert _scripts() == sorted(SMOKE), "add new experiment scripts to SMOKE"


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_script_runs(name, mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name[:-3], EXPERIMENTS / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = SMOKE[name] + (
        [] if name == "disentanglement.py" else ["--data-dir", str(mnist_dir)]
    )  # dSprites is made
    if name == "mnist_vae.py":
        args += ["--out", str(tmp_path / "run")]
    elif name == "ss_vae_pyro_protocol.py":  # trains in-process, keeping no run directory
        args += ["--results-dir", str(tmp_path / "results")]
    elif name != "custom_components.py":
        args += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    result = mod.main(mod.parse_args(args))
    if name == "mnist_vae.py":
        assert (tmp_path / "run" / "training.png").exists() and result["k"] == 3
    elif name == "compare_priors_guides.py":
        text = (tmp_path / "results" / "compare_priors_guides.md").read_text()
        assert "Command: `" in text and "vamp x iaf: refused" in text
        assert (tmp_path / "results" / "compare_priors_guides.png").exists()
    elif name == "beta_sweep.py":
        assert [r["beta"] for r in result] == [0.5, 4.0]
        assert result[1]["rate"] < result[0]["rate"]  # a larger beta buys a lower rate
        assert (tmp_path / "results" / "beta_sweep.png").exists()
    elif name == "disentanglement.py":
        _check_disentanglement(result, tmp_path)
        _check_disentanglement_reuse(mod, args, result, tmp_path)
    elif name == "cvae_quadrants.py":
        assert [r["n_given"] for r in result] == [1, 3]
        for r in result:  # nats over the hidden pixels: positive and finite
            assert all(0 < r[k] < 500 for k in ("baseline", "cvae_elbo", "cvae_is"))
        assert result[1]["baseline"] < result[0]["baseline"]  # fewer hidden pixels with 3 given
        text = (tmp_path / "results" / "cvae_quadrants.md").read_text()
        assert "Command: `" in text
        _check_quadrant_rows(text, result, mod.PYRO_PUBLISHED)
        assert (tmp_path / "results" / "cvae_quadrants_q3.png").exists()
    elif name == "conditional_samples.py":
        _check_conditional_samples(result, tmp_path / "results")
    elif name == "latent_dim.py":
        assert [r["z"] for r in result] == [2, 5] and all(r["au"] <= r["z"] for r in result)
        picked = max(result, key=lambda r: r["val_elbo"])["z"]
        assert f"picks **z = {picked}**" in (tmp_path / "results" / "latent_dim.md").read_text()
        assert (tmp_path / "results" / "latent_dim.png").exists()
    elif name == "overfitting.py":
        by = {r["setting"]: r for r in result}
        assert list(by) == ["none", "dropout", "weight decay", "early stopping", "LR decay", "all"]
        # one epoch never reaches the patience: early stopping trained exactly the unregularized run
        assert by["early stopping"] == {**by["none"], "setting": "early stopping"}
        assert by["dropout"]["best_val"] != by["none"]["best_val"]
        assert (tmp_path / "results" / "overfitting.png").exists()
        assert (tmp_path / "results" / "overfitting.md").read_text().startswith("# Overfitting on 600 images")
    elif name == "kl_vanishing.py":
        assert [r["setting"] for r in result] == ["none", "warm-up", "cyclical", "free bits"]
        assert all(0 <= r["au"] <= 8 and len(r["au_curve"]) == 1 for r in result)
        text = (tmp_path / "results" / "kl_vanishing.md").read_text()
        assert f"| free bits | {result[3]['au']}/8 |" in text
        assert (tmp_path / "results" / "kl_vanishing.png").exists()
    elif name == "anomaly_mnist.py":
        assert [r["digit"] for r in result] == [1] and result[0]["positives"] == 3  # 1s in the first 20
        assert all(0 <= v <= 1 for k, v in result[0].items() if k.startswith(("auroc_", "auprc_")))
        from pyrovae.loaded import load_run

        for model in ("vae", "ae"):  # both were trained without the held-out digit, through the run layer
            assert not (load_run(tmp_path / "runs" / f"anomaly-{model}-without-1").data.train.y == 1).any()
        text = (tmp_path / "results" / "anomaly_mnist.md").read_text()
        cells = " | ".join(f"{result[0]['auroc_' + c]:.3f}" for c in mod.SCORES)
        assert (
            f"| 1 | 3 | {cells} |" in text and f"| mean |  | {cells} |" in text
        )  # one digit: its row is the mean
        assert "Command: `" in text and (tmp_path / "results" / "anomaly_mnist.png").exists()
        n_pca = len(load_run(tmp_path / "runs" / "anomaly-ae-without-1").data.train)  # below --n-pca 1000
        assert f"fitted on {n_pca} binarized training images" in " ".join(text.split())
    elif name == "embedding.py":
        assert [(r["z_dim"], r["method"]) for r in result] == [(2, "VAE"), (2, "PCA"), (3, "VAE"), (3, "PCA")]
        assert all(r["knn"] > 0.2 for r in result if r["method"] == "PCA")  # chance is 0.1
        assert (tmp_path / "results" / "embedding.png").exists()
        from pyrovae.loaded import load_run

        text = " ".join((tmp_path / "results" / "embedding.md").read_text().split())
        n_train = len(load_run(tmp_path / "runs" / "embedding-z2").data.train)  # below --n-probe 1000
        assert f"codes of the first {n_train} training images" in text
    elif name == "ss_vae.py":
        res = json.loads((tmp_path / "runs" / "ss_vae-100-seed0" / "eval.json").read_text())
        assert result[0]["test"] == pytest.approx(100 * res["test_accuracy"])
        text = (tmp_path / "results" / "ss_vae.md").read_text()
        assert f"| 100 | 1 | {result[0]['test']:.2f} (epoch 1) |" in text
        assert (tmp_path / "results" / "ss_vae_style.png").exists()
    elif name == "ss_vae_pyro_protocol.py":
        (r,) = result
        assert r["per_class"] == [10] * 10  # 100 labels, balanced
        assert len(r["rows"]) == 1 and 0 <= r["test"] <= 100 and r["rows"][0]["cpu_min"] > 0
        text = (tmp_path / "results" / "ss_vae_pyro_protocol.md").read_text()
        assert f"| 100 | 1 | {r['test']:.2f} (epoch 1) |" in text and "Command: `" in text
    else:  # the user-written prior and guide trained: far above the untrained ~ -540 nats
        assert -450 < result["elbo"] < result["log_likelihood"] + 2 and result["log_likelihood"] < 0
        out = capsys.readouterr().out  # the report names the images scored and how they were binarized
        assert (
            "(K=50), nats/image on the first 50 MNIST test images (binarized once, seed 0; trained on 600"
            in out
        )


def _check_disentanglement(result: list[dict], tmp_path: Path) -> None:
    from pyrovae.config import Config

    assert [(r["model"], r["seed"]) for r in result] == [("beta16", 0), ("tcvae16", 0)]
    for r in result:
        assert all(0 <= r[m] <= 1 for m in ("beta_vae", "factor_vae", "mig", "dci_disentanglement"))
        run = tmp_path / "runs" / f"dis-{r['model']}-seed0"
        saved = json.loads((run / "disentanglement.json").read_text())
        assert saved["mig"] == r["mig"] and saved["settings"]["mig"]["num_train"] == 500
        assert saved["settings"]["dci"] == {"num_train": 50, "num_test": 25, "n_estimators": 5}
        assert r["kl"] == pytest.approx(json.loads((run / "eval.json").read_text())["kl"])
        assert (tmp_path / "results" / f"disentanglement_{r['model']}.png").exists()
    beta16, tcvae = (
        Config.load(tmp_path / "runs" / f"dis-{m}-seed0" / "config.json") for m in ("beta16", "tcvae16")
    )
    assert (beta16.beta, beta16.tc_beta, tcvae.beta, tcvae.tc_beta) == (16.0, None, 1.0, 16.0)
    assert beta16.net == tcvae.net == "burgess" and beta16.image_size == 16
    text = (tmp_path / "results" / "disentanglement.md").read_text()
    assert "Command: `" in text and f"| beta16 | beta 16 | {result[0]['beta_vae']:.3f} |" in text
    t, b = result[1]["mig"], result[0]["mig"]  # one seed: the means are the runs
    verdict = f"β-TCVAE against β-VAE at β = 16: MIG {t:.3f} against {b:.3f}: {'higher' if t > b else 'not higher'}."
    assert verdict in text
    assert (tmp_path / "results" / "disentanglement.png").exists()


def _check_disentanglement_reuse(mod, args: list[str], result: list[dict], tmp_path: Path) -> None:
    """--reuse (how the committed table was assembled from one process per seed) reads the runs back
    without training, and names a latent's factor only where it tells at least 5 % of its entropy."""
    run = tmp_path / "runs" / "dis-tcvae16-seed0"
    saved = json.loads((run / "disentanglement.json").read_text())
    saved["latents"] = [
        {"dim": 0, "kl": 3.0, "factor": "pos_x", "mi_over_entropy": 0.4},
        {"dim": 1, "kl": 2.0, "factor": "shape", "mi_over_entropy": 0.01},  # KL spent on no factor
        {"dim": 2, "kl": 0.001, "factor": "scale", "mi_over_entropy": 0.3},  # no KL: not a latent in use
    ]
    (run / "disentanglement.json").write_text(json.dumps(saved))
    before = {p: p.stat().st_mtime_ns for p in (run / "best.pt", run / "eval.json")}
    again = mod.main(mod.parse_args(args + ["--reuse", "--results-dir", str(tmp_path / "again")]))
    assert [r["mig"] for r in again] == [r["mig"] for r in result]
    assert again[1]["factors"] == ["pos_x"]
    assert before == {p: p.stat().st_mtime_ns for p in before}  # nothing trained again
    text = (tmp_path / "again" / "disentanglement.md").read_text()
    assert "read back here (--reuse)" in text and "-0.000" not in text
    assert re.search(r"\| tcvae16 \| 0 \| [^\n]*\| pos_x \|", text)
    from pyrovae.config import ConfigError

    with pytest.raises(ConfigError, match="holds no finished run with these options"):
        mod.main(mod.parse_args(args + ["--reuse", "--lr", "0.01", "--results-dir", str(tmp_path / "other")]))
    assert not (tmp_path / "other").exists()  # a refused --reuse writes nothing


def _check_conditional_samples(result: dict, results_dir: Path) -> None:
    # even 3 epochs on 600 images make a classifier far above chance (10%) on the real test set
    assert 0.3 < result["classifier_accuracy"] <= 1
    assert list(result["variants"]) == ["input", "every+vamp"] and result["default"] == "every+vamp"
    text = (results_dir / "conditional_samples.md").read_text()
    assert "Command: `" in text and f"test accuracy\n{100 * result['classifier_accuracy']:.2f}%" in text
    for name, r in result["variants"].items():
        assert sorted(r["per_class"]) == list(range(10)) and all(0 <= a <= 1 for a in r["per_class"].values())
        assert r["accuracy"] == pytest.approx(sum(r["per_class"].values()) / 10)
        assert -600 < r["elbo"] < r["log_likelihood"] + 5 and 0 <= r["swap"] <= 1 and 0 <= r["probe"] <= 1
        row = f"| **{name}** (default) |" if name == "every+vamp" else f"| {name} |"
        line = next(line for line in text.splitlines() if line.startswith(row))
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]  # "\|" is a pipe in a cell
        assert cells[2:4] == [f"{100 * r['accuracy']:.2f}", f"{r['elbo']:.2f}"], cells
    assert (results_dir / "conditional_samples.png").read_bytes()[:4] == b"\x89PNG"


def _table_rows(text: str) -> dict[str, list[str]]:
    """The cells of each ``| N given | ...`` row of a results table, by quadrant label."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].endswith(" given"):
            rows[cells[0]] = cells
    return rows


def _check_quadrant_rows(section: str, result: list[dict], published: dict) -> None:
    """Every row of the table shows the run's figures, Pyro's published ones, and the gaps between
    them, in the columns the header names."""
    rows = _table_rows(section)
    assert sorted(rows) == sorted(f"{r['n_given']} given" for r in result)
    for r in result:
        cells, i = rows[f"{r['n_given']} given"], r["n_given"] - 1
        pb, pc = published["baseline"][i], published["cvae"][i]
        assert cells[1:7] == [
            f"{r['baseline']:.2f}",
            f"{pb:.2f}",
            f"{r['cvae_elbo']:.2f}",
            f"{pc:.2f}",
            f"{r['baseline'] - r['cvae_elbo']:.2f}",
            f"{pb - pc:.2f}",
        ]
        assert r["epochs"] in cells


def test_cvae_quadrants_pyro_protocol(mnist_dir, tmp_path, monkeypatch):
    """``--protocol pyro`` (grey targets, selection on half the test set) writes its own section
    and keeps the default protocol's section of the same file."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("cvae_quadrants", EXPERIMENTS / "cvae_quadrants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    common = [
        "--data-dir",
        str(mnist_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--results-dir",
        str(tmp_path),
    ]
    tiny = [*NO_LOG_PX, "--z-dim", "4", "--hidden", "32", "--quiet", *common]
    default = mod.main(mod.parse_args([*tiny, "--k", "3", "--n-test", "20", "--quadrants", "2"]))
    result = mod.main(mod.parse_args([*tiny, "--quadrants", "1", "3", "--protocol", "pyro"]))
    assert [r["n_given"] for r in result] == [1, 3] and all(r["protocol"] == "pyro" for r in result)
    for r in result:  # grey targets: the cross-entropy includes their entropy, still finite and positive
        assert all(0 < r[k] < 500 for k in ("baseline", "cvae_elbo")) and 0 < r["baseline_se"] < 5
    text = (tmp_path / "cvae_quadrants.md").read_text()
    assert text.count("# Structured-output CVAE") == 1
    default_part, pyro_part = text.split("<!-- protocol: pyro -->")
    _check_quadrant_rows(default_part, default, mod.PYRO_PUBLISHED)
    _check_quadrant_rows(pyro_part, result, mod.PYRO_PUBLISHED)
    assert "## Pyro's protocol" in pyro_part and "the other 5,000 are reported" in " ".join(pyro_part.split())
    assert (tmp_path / "cvae_quadrants_pyro_q3.png").exists() and (
        tmp_path / "cvae_quadrants_q2.png"
    ).exists()
    # Running a protocol again replaces its own section only.
    again = mod.main(mod.parse_args([*tiny, "--quadrants", "2", "--protocol", "pyro"]))
    text = (tmp_path / "cvae_quadrants.md").read_text()
    assert text.count("<!-- protocol: pyro -->") == 1 and text.count("<!-- protocol: default -->") == 1
    _check_quadrant_rows(text.split("<!-- protocol: pyro -->")[1], again, mod.PYRO_PUBLISHED)
    _check_quadrant_rows(text.split("<!-- protocol: pyro -->")[0], default, mod.PYRO_PUBLISHED)


def test_disentanglement_names_any_beta_and_refuses_an_unknown_model(tmp_path, monkeypatch):
    script = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "disentanglement.py"), "--models", "beta8", "tcvae2.5", "tcvea8",
         "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert script.returncode == 2 and "unknown model 'tcvea8'" in script.stderr and "betaB" in script.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    spec = importlib.util.spec_from_file_location("disentanglement", EXPERIMENTS / "disentanglement.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec.loader.exec_module(mod)
    args = mod.parse_args(
        ["--models", "beta8", "tcvae2.5", "tcvae", "capacity", "--tc-beta", "6", "--epochs", "4"]
    )
    assert mod.models(args) == {
        "beta8": {"beta": 8.0},
        "tcvae2.5": {"tc_beta": 2.5},
        "tcvae": {"tc_beta": 6.0},
        "capacity": {"capacity": 25.0, "gamma": 1000.0, "capacity_epochs": 4.0},
    }


@pytest.mark.parametrize(
    ("name", "option", "default"),
    [("kl_vanishing.py", "--train-size", "10000"), ("overfitting.py", "--train-size", "1000"),
     ("disentanglement.py", "--image-size", "64; pass 32 on a CPU")],
)  # fmt: skip
def test_help_states_the_real_default(name, option, default, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name[:-3], EXPERIMENTS / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit):
        mod.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"{option} \w+ [^-]*\(default: {re.escape(default)}\)", text), text
    assert mod.parse_args([]).__dict__[option[2:].replace("-", "_")] == int(default.split(";")[0])


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPERIMENTS / name), *args], capture_output=True, text=True)


def test_a_user_error_in_any_script_is_one_error_line(mnist_dir, tmp_path):
    """A refused option or an occupied run folder ends a script as it ends ``pyrovae``: one
    ``error:`` line and status 2, no traceback."""
    data = ["--data-dir", str(mnist_dir)]
    quadrants = _script("cvae_quadrants.py", *TINY, *data, "--quadrants", "4", "--runs-dir", str(tmp_path / "runs"),
                        "--results-dir", str(tmp_path / "results"))  # fmt: skip
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    occupied = _script("mnist_vae.py", "--epochs", "1", "--quiet", *data, "--out", str(tmp_path / "run"))
    for script, says in [(quadrants, "--quadrants 1, 2 or 3"), (occupied, "--overwrite")]:
        assert script.returncode == 2 and "Traceback" not in script.stderr, script.stderr
        assert (
            script.stderr.startswith("error: ") and script.stderr.count("\n") == 1 and says in script.stderr
        )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_compare_priors_guides_refuses_an_unknown_name_before_training(tmp_path):
    """A mistyped prior is a usage error that writes nothing; "refused" in the table is kept for a
    known pair that cannot be combined (vamp x iaf, in test_script_runs)."""
    script = _script("compare_priors_guides.py", "--priors", "nromal", "--guides", "diag",
                     "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"))  # fmt: skip
    assert (
        script.returncode == 2 and "invalid choice: 'nromal'" in script.stderr and "'normal'" in script.stderr
    )
    assert "Traceback" not in script.stderr and not script.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_disentanglement_reuse_without_runs_is_one_error_line(tmp_path):
    """--reuse where no run was ever made is refused as a run with other options is, writing nothing."""
    script = _script("disentanglement.py", "--reuse", "--models", "beta16", "--seeds", "0",
                     "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"))  # fmt: skip
    assert script.returncode == 2 and "Traceback" not in script.stderr, script.stderr
    assert script.stderr.startswith("error: --reuse: ") and "holds no finished run" in script.stderr
    assert script.stderr.count("\n") == 1 and not (tmp_path / "results").exists()


def test_ss_vae_reruns_with_other_options(mnist_dir, tmp_path, monkeypatch):
    """A rerun with more epochs continues the run; one with another --lr or --train-size replaces it,
    where resuming would refuse the contradicting options."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("ss_vae", EXPERIMENTS / "ss_vae.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = [*SMOKE["ss_vae.py"], "--data-dir", str(mnist_dir), "--runs-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results")]  # fmt: skip
    run = tmp_path / "runs" / "ss_vae-100-seed0"
    mod.main(mod.parse_args(base))
    (more,) = mod.main(mod.parse_args([*base, "--epochs", "2"]))
    assert more["epochs"] == 2  # resumed: the first epoch was kept
    (other,) = mod.main(mod.parse_args([*base, "--lr", "0.002", "--train-size", "500"]))
    saved = json.loads((run / "config.json").read_text())
    assert other["epochs"] == 1 and (saved["lr"], saved["train_size"]) == (0.002, 500)


@pytest.mark.parametrize(
    "name, given",
    [("ss_vae_pyro_protocol.py", ["--k", "3"]), ("ss_vae_pyro_protocol.py", ["--n-test", "20"]),
     ("ss_vae_pyro_protocol.py", ["--runs-dir", "r"]), ("embedding.py", ["--k", "3"]),
     ("embedding.py", ["--n-test", "20"]), ("disentanglement.py", ["--data-dir", "d"]),
     ("cvae_quadrants.py", ["--protocol", "pyro", "--k", "3"]),
     ("cvae_quadrants.py", ["--protocol", "pyro", "--n-test", "20"])],
)  # fmt: skip
def test_an_option_the_script_would_ignore_is_refused(name, given, tmp_path):
    script = _script(name, *given, "--results-dir", str(tmp_path / "results"))
    assert script.returncode == 2 and "error:" in script.stderr and "Traceback" not in script.stderr
    assert given[-2] in script.stderr.splitlines()[-1] and not (tmp_path / "results").exists()
