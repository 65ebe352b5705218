"""``--classes`` / ``--exclude-classes``: training and validation on some classes, testing on all (a
conditional model: on those it trained on)."""

import numpy as np
import pytest
import torch

from pyrovae import load_run
from pyrovae.cli import main
from pyrovae.data import load_dataset


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    np.save(tmp_path / "x.npy", (rng.random((90, 6, 6)) < 0.2 + 0.2 * y[:, None, None]).astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    return tmp_path


def _train(files, out, *extra, labels=True):
    labelled = ["--labels-file", str(files / "y.npy")] if labels else []
    return main(["train", "--dataset", "file", "--data-file", str(files / "x.npy"), *labelled, "--val-size", "9",
                 "--z-dim", "2", "--hidden", "8", "--batch-size", "10", "--epochs", "1", "--eval-k", "3",
                 "--quiet", "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize("flags,kept", [(["--classes", "0,2"], [0, 2]), (["--exclude-classes", "1"], [0, 2]),
                                        (["--classes", "1"], [1])])  # fmt: skip
def test_excluded_classes_are_absent_from_training_and_validation(files, tmp_path, flags, kept):
    assert _train(files, tmp_path / "run", *flags) == 0
    data = load_run(tmp_path / "run").data
    whole = load_dataset("file", data_file=str(files / "x.npy"), labels_file=str(files / "y.npy"), val_size=9)
    for name in ("train", "val"):
        part, full = getattr(data, name), getattr(whole, name)
        assert sorted(part.y.unique().tolist()) == kept
        # exactly the images of the kept classes, in the split's order
        assert torch.equal(part.x, full.x[torch.isin(full.y, torch.tensor(kept))])
    assert torch.equal(data.test.y, whole.test.y)  # the test set keeps every class
    assert data.num_classes == 3


@pytest.mark.parametrize(
    "flags,labels,message",
    [
        (["--classes", "0"], False, "--classes needs labelled data"),
        (["--exclude-classes", "5"], True, "--exclude-classes [5] are not labels"),
        (["--exclude-classes", "0,1,2"], True, "leaves no class to train on"),
        (["--classes", "0", "--exclude-classes", "1"], True, "not both"),
        (["--classes", "-1"], True, "--classes must be class indices"),
    ],
)
def test_bad_classes_exit_2_and_leave_nothing(files, tmp_path, capsys, flags, labels, message):
    assert _train(files, tmp_path / "run", *flags, labels=labels) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_conditional_run_is_evaluated_on_the_classes_it_was_trained_on(files, tmp_path, capsys):
    """An unconditional run is tested on every class (anomaly detection is what --classes is for);
    a conditional one scores log p(x | y), and a label it never saw goes through untrained weights,
    so its test figures are of the classes it trained on, and say so."""
    import json

    from pyrovae import evaluate
    from pyrovae.data import Split

    assert _train(files, tmp_path / "cond", "--conditional", "--classes", "0,2") == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "cond" / "eval.json").read_text())
    run = load_run(tmp_path / "cond")
    seen = torch.isin(run.data.test.y, torch.tensor([0, 2]))
    assert res["test_classes"] == [0, 2] and res["n_images"] == int(seen.sum()) < len(run.data.test.y)
    assert f"over {res['n_images']} images of the classes it was trained on, [0, 2]" in out
    torch.manual_seed(0)
    again = evaluate(run.model, Split(run.data.test.x[seen], run.data.test.y[seen]), k=3)
    assert again["elbo"] == pytest.approx(res["elbo"], rel=1e-3)  # the same images; its own Monte Carlo draws

    assert _train(files, tmp_path / "plain", "--classes", "0,2") == 0  # unconditional: every test image
    res = json.loads((tmp_path / "plain" / "eval.json").read_text())
    assert "test_classes" not in res and res["n_images"] == len(run.data.test.y)
