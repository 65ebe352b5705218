"""End to end: train on dSprites from the command line, then `pyrovae disentanglement RUN`."""

import csv
import json

import numpy as np
import pytest
import torch

from pyrovae import disentanglement as D
from pyrovae import load_run
from pyrovae.cli import main
from pyrovae.dsprites import DSprites
from pyrovae.evaluate import kl_per_dim

TINY = ["--image-size", "16", "--val-size", "50", "--eval-k", "3", "--eval-n-test", "10", "--quiet"]


@pytest.fixture(scope="module")
def dsprites_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dis") / "run"
    args = ["train", "--dataset", "dsprites", *TINY, "--train-size", "1500", "--net", "mlp", "--hidden", "128",
            "--z-dim", "4", "--batch-size", "32", "--lr", "3e-3", "--epochs", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_disentanglement_command_writes_scores_consistent_with_the_metrics(dsprites_run, capsys):
    assert main(["disentanglement", str(dsprites_run), "--scale", "0.005", "--seed", "2"]) == 0
    assert "MIG" in capsys.readouterr().out
    res = json.loads((dsprites_run / "disentanglement.json").read_text())
    for key in (
        "beta_vae",
        "factor_vae",
        "mig",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness",
    ):
        assert 0 <= res[key] <= 1, (key, res[key])
    # the same figures from the metric functions called directly on the loaded run
    run, data = load_run(dsprites_run), DSprites(16)
    code, s = D.vae_code(run.model, data), res["settings"]
    assert s["beta_vae"] == {"batch_size": 64, "num_train": 50, "num_eval": 25}
    assert D.beta_vae_score(data, code, 2, **s["beta_vae"])["eval_accuracy"] == res["beta_vae"]
    assert D.factor_vae_score(data, code, 2, **s["factor_vae"])["eval_accuracy"] == res["factor_vae"]
    m = D.mig(data, code, 2, **s["mig"])
    assert m["mig"] == pytest.approx(res["mig"]) and np.allclose(m["mutual_info"], res["mutual_info"])
    # latents by decreasing KL, the KL of the images drawn with the seed, each with its best factor
    kl = kl_per_dim(run.model, data.images(data.sample(2000, np.random.RandomState(2))))
    latents = res["latents"]
    assert [r["dim"] for r in latents] == kl.argsort(descending=True).tolist()
    assert [r["kl"] for r in latents] == pytest.approx(kl.sort(descending=True).values.tolist(), rel=1e-5)
    assert latents[0]["kl"] > 0.3  # trained: the model uses its latents
    informs = m["mutual_info"] / m["entropy"]
    assert [r["factor"] for r in latents] == [data.factor_names[informs[r["dim"]].argmax()] for r in latents]
    assert (dsprites_run / "traversal.png").read_bytes()[:4] == b"\x89PNG"


def test_tc_beta_and_burgess_net_train_from_the_cli(tmp_path):
    def train(name, *extra):
        out = tmp_path / name
        args = ["train", "--dataset", "dsprites", *TINY, "--train-size", "256", "--net", "burgess", "--hidden", "32",
                "--z-dim", "3", "--batch-size", "32", "--epochs", "1", "--no-eval", "--out", str(out), *extra]  # fmt: skip
        assert main(args) == 0
        return [float(r["train_loss"]) for r in csv.DictReader(open(out / "metrics.csv"))]

    plain, one, six = train("plain"), train("tc1", "--tc-beta", "1"), train("tc6", "--tc-beta", "6")
    assert one == pytest.approx(plain, rel=1e-6)  # weight 1 on the total correlation: the ELBO
    assert six[0] > plain[0]  # a positive estimated total correlation, weighted 5 more
    vae = load_run(tmp_path / "tc6").model
    assert type(vae.guide_net.encoder).__name__ == "BurgessEncoder"


def test_npz_run_and_refusals(tmp_path, tiny_data_file, capsys):
    from test_dsprites import _tiny_npz

    npz = _tiny_npz(tmp_path / "dsprites.npz")
    out = tmp_path / "npz"
    args = ["train", "--dataset", "dsprites", "--data-file", str(npz), "--image-size", "32", "--val-size", "4",
            "--z-dim", "2", "--hidden", "16", "--batch-size", "8", "--epochs", "1", "--no-eval", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main(["disentanglement", str(out), "--scale", "0.01"]) == 0
    res = json.loads((out / "disentanglement.json").read_text())
    assert res["entropy"] == pytest.approx(np.log([3, 2, 2, 2, 2]), rel=0.1)  # the file's own factors
    capsys.readouterr()
    data = tiny_data_file(tmp_path)
    other = tmp_path / "file"
    assert main(["train", "--dataset", "file", "--data-file", str(data), "--val-size", "6", "--z-dim", "2",
                 "--hidden", "8", "--epochs", "1", "--batch-size", "16", "--no-eval", "--quiet",
                 "--out", str(other)]) == 0  # fmt: skip
    assert main(["disentanglement", str(other)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error:")
        and "--dataset dsprites" in err
        and not (other / "disentanglement.json").exists()
    )
    assert main(["train", "--dataset", "mnist", "--image-size", "32", "--out", str(tmp_path / "x")]) == 2
    assert "--image-size applies only to dataset dsprites" in capsys.readouterr().err
    assert torch.is_tensor(load_run(out).data.train.factors)


def test_the_docs_python_snippets_run():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "disentanglement.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 2
    first: dict = {}
    exec(blocks[0], first)
    assert first["x"].shape == (1, 1, 64, 64) and first["x"].sum() > 50
    assert first["factor_values"](first["classes"])[0].tolist() == pytest.approx([3, 1.0, np.pi / 2, 0, 1])
    second: dict = {}
    exec(blocks[1].replace("print(", "value = ("), second)
    assert 0.85 < second["value"] < 0.95  # "about 0.9"


def test_too_small_a_scale_is_refused_naming_the_smallest_that_works(dsprites_run, capsys):
    (dsprites_run / "disentanglement.json").unlink(missing_ok=True)
    assert main(["disentanglement", str(dsprites_run), "--scale", "1e-6", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--scale 0.005 or more" in err
    assert not (dsprites_run / "disentanglement.json").exists()
    # the smallest scale named keeps every sample size at 25 points or more (and runs, in the test above)
    sizes = [n for o in D.settings(0.005).values() for k, n in o.items() if k.startswith("num_")]
    assert min(n for n in sizes if n != 20) == 25  # 20: MIG's bins, not a sample size


def test_a_run_whose_encoder_needs_a_label_is_refused_naming_what_it_is(tmp_path, capsys):
    from test_dsprites import _tiny_npz

    npz = _tiny_npz(tmp_path / "dsprites.npz")
    common = ["train", "--dataset", "dsprites", "--data-file", str(npz), "--image-size", "32", "--val-size", "4",
              "--z-dim", "2", "--hidden", "8", "--batch-size", "8", "--epochs", "1", "--no-eval", "--quiet"]  # fmt: skip
    for name, extra, what in [("m2", ["--semi-supervised", "--labeled", "6"], "a semi-supervised VAE"),
                              ("cvae", ["--conditional"], "a conditional VAE")]:  # fmt: skip
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        capsys.readouterr()
        assert main(["disentanglement", str(tmp_path / name), "--scale", "0.01"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and what in err, err
        assert name == "cvae" or "conditional" not in err  # an M2 run is not called conditional
        assert not (tmp_path / name / "disentanglement.json").exists()
