"""Every experiment script runs end to end on a tiny budget; a new script must be listed here."""

import importlib.util
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
        assert "Command: `" in text and "| 3 given |" in text and "71.80" in text  # Pyro's figure beside ours
        assert (tmp_path / "results" / "cvae_quadrants_q3.png").exists()
    else:  # the user-written prior and guide trained: far above the untrained ~ -540 nats
        assert -450 < result["elbo"] < result["log_likelihood"] + 2 and result["log_likelihood"] < 0
