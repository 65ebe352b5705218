"""Every experiment script runs end to end on a tiny budget; a new script must be listed here."""

import importlib.util
import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
TINY = ["--epochs", "1", "--train-size", "600", "--k", "3", "--n-test", "20"]
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
    "ss_vae.py": [*TINY, "--labels", "100", "--quiet"],
    "custom_components.py": ["--epochs", "1", "--train-size", "600", "--k", "50", "--n-test", "50"],
}


def _scripts():
    return sorted(p.name for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_listed():
    assert _scripts() == sorted(SMOKE), "add new experiment scripts to SMOKE"


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_script_runs(name, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name[:-3], EXPERIMENTS / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = SMOKE[name] + ["--data-dir", str(mnist_dir)]
    if name == "mnist_vae.py":
        args += ["--out", str(tmp_path / "run")]
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
    elif name == "cvae_quadrants.py":
        assert [r["n_given"] for r in result] == [1, 3]
        for r in result:  # nats over the hidden pixels: positive and finite
            assert all(0 < r[k] < 500 for k in ("baseline", "cvae_elbo", "cvae_is"))
        assert result[1]["baseline"] < result[0]["baseline"]  # fewer hidden pixels with 3 given
        text = (tmp_path / "results" / "cvae_quadrants.md").read_text()
        assert "Command: `" in text
        _check_quadrant_rows(text, result, mod.PYRO_PUBLISHED)
        assert (tmp_path / "results" / "cvae_quadrants_q3.png").exists()
    elif name == "ss_vae.py":
        res = json.loads((tmp_path / "runs" / "ss_vae-100-seed0" / "eval.json").read_text())
        assert result[0]["test"] == pytest.approx(100 * res["test_accuracy"])
        text = (tmp_path / "results" / "ss_vae.md").read_text()
        assert f"| 100 | 1 | {result[0]['test']:.2f} (epoch 1) |" in text
        assert (tmp_path / "results" / "ss_vae_style.png").exists()
    else:  # the user-written prior and guide trained: far above the untrained ~ -540 nats
        assert -450 < result["elbo"] < result["log_likelihood"] + 2 and result["log_likelihood"] < 0


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
    tiny = [*TINY, "--z-dim", "4", "--hidden", "32", "--quiet", *common]
    default = mod.main(mod.parse_args([*tiny, "--quadrants", "2"]))
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
