"""A table of user mistakes on the command line: each must end in exactly one ``error:`` line,
exit status 2, no traceback, and no file written, changed or left half-written."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae.cli import main


def _train(data, out, *extra):
    return main(["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
                 "--batch-size", "16", "--val-size", "10", "--epochs", "1", "--eval-k", "3", "--eval-n-test", "5",
                 "--quiet", "--out", str(out), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_data_file):
    """A folder of runs and files to make mistakes with: ``run`` (trained and evaluated), ``crun``
    (conditional, trained on classes 0 and 1 of three), damaged copies of ``run``, bad data files."""
    w = tmp_path_factory.mktemp("world")
    data = tiny_data_file(w, n=90, classes=3)
    assert _train(data, w / "run") == 0
    assert _train(data, w / "crun", "--conditional", "--classes", "0,1") == 0
    assert _train(data, w / "exprun", "--guide-scale", "exp") == 0
    for name in ("badconfig", "truncated", "garbage", "edited", "swapped", "nobest", "nockpt"):
        shutil.copytree(w / "run", w / name)
    (w / "nobest" / "best.pt").unlink()
    (w / "nockpt" / "best.pt").unlink()
    (w / "nockpt" / "checkpoint.pt").unlink()
    config = json.loads((w / "edited" / "config.json").read_text())
    (w / "edited" / "config.json").write_text(json.dumps({**config, "activation": "tanh"}))
    shutil.copy(w / "exprun" / "best.pt", w / "swapped" / "best.pt")  # another model, the same shapes
    (w / "badconfig" / "config.json").write_text('{"z_dim": 2,')
    best = (w / "truncated" / "best.pt").read_bytes()
    (w / "truncated" / "best.pt").write_bytes(best[: len(best) // 2])
    (w / "garbage" / "best.pt").write_bytes(b"garbage!")
    np.save(w / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    np.save(w / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(w / "wide.npy", np.zeros((4, 8, 9), np.uint8))
    np.save(w / "big.npy", np.full((20, 8, 8), 3.0, np.float32))
    (w / "garbage.pt").write_bytes(b"not a tensor")
    (w / "afile").write_text("a file, not a folder")
    (w / "space.toml").write_text("[lr]\nlow = 1e-4\nhigh = 1e-2\n")
    return {"dir": w, "data": data}


T = ["train", "--dataset", "file", "--data-file", "{data}", "--epochs", "1", "--quiet", "--out", "{w}/new"]
R = ["--z-dim", "2", "--hidden", "8", "--batch-size", "16", "--val-size", "10"]
SWEEP = ["sweep", "--space", "{w}/space.toml", "--trials", "1", "--out", "{w}/sweep", "--quiet"]

#: (what the user did, the arguments, text the error must hold, text it must not)
MISTAKES = [
    ("unknown prior", [*T, "--prior", "vampp"], "unknown --prior 'vampp'", None),
    ("a word for a number", [*T, "--z-dim", "abc"], "invalid int value", None),
    ("batch size 0", [*T, *R, "--batch-size", "0"], "--batch-size must be a positive integer", None),
    ("learning rate 0", [*T, *R, "--lr", "0"], "--lr must be positive", None),
    ("eval-k 0", [*T, *R, "--eval-k", "0"], "--eval-k must be a positive integer", None),
    ("a negative seed", [*T, *R, "--seed", "-1"], "--seed: expected an integer from 0 to 2**32 - 1, got '-1'", None),
    ("a seed too large", [*T, *R, "--seed", "99999999999"], "--seed: expected an integer from 0 to 2**32 - 1", None),
    ("evaluate with a negative seed", ["evaluate", "{w}/run", "--seed", "-1"], "--seed: expected an integer", None),
    ("sample with a negative seed", ["sample", "{w}/run", "--seed", "-1", "-o", "{w}/s.png"],
     "--seed: expected an integer", None),
    ("sweep with a negative seed", [*SWEEP, "--sampler-seed", "-1"], "--sampler-seed: expected an integer", None),
    ("file data without a file", ["train", "--dataset", "file", "--out", "{w}/new", "--quiet"],
     "needs --data-file", None),
    ("data file missing", [*T[:4], "{w}/missing.pt", *T[5:], *R], "does not exist", "--data-file, --data-file"),
    ("data file not a tensor", [*T[:4], "{w}/garbage.pt", *T[5:], *R], "could not read", None),
    ("data of strings", [*T[:4], "{w}/strings.npy", *T[5:], *R], "not numbers", None),
    ("data outside [0, 1]", [*T[:4], "{w}/big.npy", *T[5:], *R], "expects [0, 1]", None),
    ("dSprites from a plain .npy", ["train", "--dataset", "dsprites", "--data-file", "{w}/big.npy", *T[5:], *R],
     "could not read", "IndexError"),
    ("train over a run", [*T[:-1], "{w}/run", *R], "already holds files", None),
    ("resume nothing", ["train", "--resume", "--out", "{w}/none", "--quiet"], "holds no run", None),
    ("resume with another z", ["train", "--resume", "--out", "{w}/run", "--z-dim", "7", "--quiet"],
     "--z-dim: saved 2, given 7", None),
    ("resume with another preset", ["train", "--resume", "--out", "{w}/run", "--preset", "iwae", "--quiet"],
     "contradict the saved run", None),
    ("run inside a file", [*T[:-1], "{w}/afile/r", *R], "is a file, not a folder", None),
    ("keep and drop classes", [*T, *R, "--classes", "0", "--exclude-classes", "1"], "give --classes", None),
    ("a class the data lacks", [*T, *R, "--classes", "9"], "not labels of the training data", None),
    ("a data file for MNIST", ["train", "--data-file", "{data}", *T[5:], *R],
     "--data-file was given but --dataset is 'mnist': set --dataset file to train on your own file", None),
    ("a labels file for MNIST", ["train", "--labels-file", "{data}", *T[5:], *R],
     "--labels-file was given but --dataset is 'mnist': set --dataset file", None),
    ("M2 on some classes", [*T, *R, "--semi-supervised", "--labeled", "6", "--classes", "0", "2"],
     "--classes leaves class(es) 1 without training images, but --semi-supervised's label y ranges over all 3 "
     "classes of the data (q(y|x), the ELBO's sum over y, the test accuracy), and no labels can be balanced over a "
     "class with no images: train on every class", "lower"),
    ("M2 without a class", [*T, *R, "--semi-supervised", "--labeled", "6", "--exclude-classes", "1"],
     "--exclude-classes leaves class(es) 1 without training images", "lower"),
    ("M2 with its switch off", [*T, *R, "--model", "semisupervised", "--labeled", "6", "--no-semi-supervised"],
     "--semi-supervised is off, but model semisupervised is the model it chooses: leave it on, or use --model vae",
     None),
    ("a conditional VAE with its switch off", [*T, *R, "--model", "conditional", "--no-conditional"],
     "--conditional is off, but model conditional is the model it chooses", None),
    ("MNIST not there", ["train", "--data-dir", "{w}/nowhere", "--out", "{w}/new", "--quiet"],
     "MNIST files missing", None),
    ("evaluate a plain folder", ["evaluate", "{w}"], "not a pyrovae run directory", None),
    ("evaluate with K 0", ["evaluate", "{w}/run", "--k", "0"], "--k: expected a positive integer", None),
    ("evaluate on 0 images", ["evaluate", "{w}/run", "--n-test", "0"], "expected a positive integer", None),
    ("damaged config.json", ["evaluate", "{w}/badconfig"], "is not valid JSON", None),
    ("no such checkpoint", ["evaluate", "{w}/run", "--checkpoint", "nothere.pt"], "no checkpoint at", None),
    ("truncated best.pt", ["evaluate", "{w}/truncated"], "--checkpoint last", "resume from"),
    ("config.json edited", ["evaluate", "{w}/edited", "--k", "2"],
     "(--activation: best.pt 'softplus', config.json 'tanh'); was config.json edited", None),
    ("another run's best.pt", ["evaluate", "{w}/swapped", "--k", "2"],
     "(--guide-scale: best.pt 'exp', config.json 'softplus'); was config.json edited", None),
    ("another run's best.pt, sampled", ["sample", "{w}/swapped", "-o", "{w}/s.png"], "--guide-scale", None),
    ("sample a truncated best.pt", ["sample", "{w}/truncated", "-o", "{w}/s.png"], "--checkpoint last", None),
    ("best.pt missing", ["reconstruct", "{w}/nobest", "-o", "{w}/r.png"],
     "nobest/best.pt; the run's last checkpoint is there: use it (--checkpoint last)", None),
    ("no checkpoint at all", ["inspect", "{w}/nockpt"], "holds no checkpoint: train the run", None),
    ("8 bytes of garbage", ["evaluate", "{w}/garbage"], "truncated or corrupted", "pickled"),
    ("sample no images", ["sample", "{w}/run", "-n", "0", "-o", "{w}/s.png"], "positive integer", None),
    ("sample as GIF", ["sample", "{w}/run", "-o", "{w}/s.gif"], "name a .png", None),
    ("sample an untrained class", ["sample", "{w}/crun", "--label", "2", "-o", "{w}/s.png"],
     "not a class this model was trained on (0, 1)", None),
    ("label without labels", ["sample", "{w}/run", "--label", "1", "-o", "{w}/s.png"],
     "needs a conditional model", None),
    ("sample into a file", ["sample", "{w}/run", "-o", "{w}/afile/s.png"], "is a file, not a folder", None),
    ("reconstruct nothing", ["reconstruct", "{w}/run", "-n", "0", "-o", "{w}/r.png"], "positive integer", None),
    ("inspect 0 images", ["inspect", "{w}/run", "--n", "0"], "positive integer", None),
    ("inspect with K 0", ["inspect", "{w}/run", "--k", "0"], "positive integer", None),
    ("score to a text file", ["score", "{w}/run", "--split", "test", "-o", "{w}/nodir/x.txt"], "name a .csv", None),
    ("score an empty file", ["score", "{w}/run", "--data-file", "{w}/empty.npy", "-o", "{w}/s.csv"],
     "N >= 1", None),
    ("score strings", ["score", "{w}/run", "--data-file", "{w}/strings.npy", "-o", "{w}/s.csv"], "not numbers", None),
    ("score the wrong shape", ["score", "{w}/run", "--data-file", "{w}/wide.npy", "-o", "{w}/s.csv", "--quiet"],
     "rows of shape (1, 8, 9)", None),
    ("evaluate the wrong shape", ["evaluate", "{w}/run", "--data-file", "{w}/wide.npy", "--k", "2", "--quiet"],
     "wide.npy has rows of shape (1, 8, 9) but the run was trained on (1, 8, 8)", None),
    ("reconstruct the wrong shape", ["reconstruct", "{w}/run", "--data-file", "{w}/wide.npy", "-o", "{w}/r.png"],
     "rows of shape (1, 8, 9)", None),
    ("inspect the wrong shape", ["inspect", "{w}/run", "--data-file", "{w}/wide.npy", "--k", "2", "--n", "4"],
     "rows of shape (1, 8, 9)", None),
    ("score with the run's data of the wrong shape", ["score", "{w}/run", "--split", "test", "--run-data-file",
     "{w}/wide.npy", "-o", "{w}/s.csv", "--quiet"], "rows of shape (1, 8, 9)", None),
    ("flag 200 %", ["score", "{w}/run", "--split", "test", "--threshold-from", "val", "--fpr", "2", "-o",
                    "{w}/s.csv", "--quiet"], "--fpr must be between 0 and 1", None),
    ("fpr without a threshold", ["score", "{w}/run", "--split", "test", "--fpr", "0.1", "-o", "{w}/s.csv",
                                 "--quiet"], "--fpr sets the threshold that --threshold-from computes", None),
    ("threshold score without a threshold", ["score", "{w}/run", "--split", "test", "--threshold-score",
     "recon_error", "-o", "{w}/s.csv", "--quiet"], "--threshold-score sets the threshold", None),
    ("an MNIST folder for a run on a file", ["evaluate", "{w}/run", "--data-dir", "{w}", "--quiet"],
     "not on MNIST, so the MNIST folder given for it would be ignored: drop it", None),
    ("resume and overwrite", ["train", "--resume", "--overwrite", "--out", "{w}/run", "--quiet"],
     "--resume (resume=True) continues the run in the folder and --overwrite", None),
    ("embed to a text file", ["embed", "{w}/run", "--split", "test", "-o", "{w}/z.txt"], ".npy or .csv", None),
    ("embed 0 draws", ["embed", "{w}/run", "--split", "test", "--samples", "0", "-o", "{w}/z.npy"],
     "positive integer", None),
    ("sweep a missing space", [*SWEEP[:2], "{w}/missing.toml", *SWEEP[3:]], "does not exist", None),
    ("sweep 0 trials", [*SWEEP[:4], "0", *SWEEP[5:]], "positive integer", None),
    ("resume no sweep", [*SWEEP, "--resume"], "holds no sweep", None),
    ("sweep inside a file", [*SWEEP[:6], "{w}/afile/sweep", "--quiet"], "is a file, not a folder", None),
    ("list a missing folder", ["runs", "{w}/nowhere"], "is not a folder", None),
    ("no command", [], "required", None),
]  # fmt: skip


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _args(template, world):
    return [a.format(w=world["dir"], data=world["data"]) for a in template]


@pytest.mark.parametrize("what,template,message,not_message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_error_line_exit_2_and_writes_nothing(world, capsys, what, template, message,
                                                               not_message):  # fmt: skip
    before = _snapshot(world["dir"])
    code = main(_args(template, world))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert message in lines[0]
    assert not_message is None or not_message not in lines[0]
    assert _snapshot(world["dir"]) == before  # nothing written, changed or left half-written


def test_the_table_is_long_enough():
    assert len(MISTAKES) >= 30


@pytest.mark.parametrize("what", ["damaged config.json", "sample no images"])
def test_the_console_script_says_the_same(world, what):
    template = next(m for m in MISTAKES if m[0] == what)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    res = subprocess.run([sys.executable, "-m", "pyrovae", *_args(template[1], world)], capture_output=True,
                         text=True, env=env)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith("error: ")
    assert template[2] in res.stderr


def test_evaluate_refuses_a_run_it_cannot_write_before_computing(world, capsys, monkeypatch):
    """A read-only run folder: refused up front (simulated when the tests run as root, who may
    write anywhere), so no evaluation is computed to be lost."""
    import pyrovae.loaded as R
    import pyrovae.outputs as O

    run = world["dir"] / "run"
    computed = []
    monkeypatch.setattr(R, "evaluate", lambda *a, **k: computed.append(1))
    if os.geteuid() == 0:
        real = O.os.access
        monkeypatch.setattr(
            O.os, "access", lambda p, mode: False if Path(p) == run.absolute() else real(p, mode)
        )
    else:
        run.chmod(0o555)
    try:
        before = _snapshot(world["dir"])
        assert main(["evaluate", str(run)]) == 2
    finally:
        run.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write results in") and "not writable" in err
    assert computed == [] and _snapshot(world["dir"]) == before


def test_library_errors_name_fields_and_the_cli_names_flags(tmp_path, capsys):
    from pyrovae import Config, ConfigError, train
    from pyrovae.data import DataError

    with pytest.raises(DataError) as e:
        train(Config(dataset="file"), tmp_path / "r", progress=False)
    assert "data_file" in str(e.value) and "--" not in str(e.value)
    assert main(["train", "--dataset", "file", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--data-file" in capsys.readouterr().err
    with pytest.raises(ConfigError) as e:  # a field the data set does not read: named, and what to set
        Config(data_file="f.npy").validate()
    assert "data_file was given but dataset is 'mnist': set dataset file" in str(e.value)
    assert "--" not in str(e.value) and e.value.option == "dataset"


@pytest.mark.parametrize("on_nan, says, never", [("stop", "(--on-nan rollback)", "'rollback'"),
                                                 ("rollback", "After 5 rollbacks", "roll back on NaN")])  # fmt: skip
def test_a_non_finite_loss_gets_advice_that_fits(world, tmp_path, capsys, monkeypatch, on_nan, says, never):
    G = importlib.import_module("pyrovae.step")  # the eager step fit takes on a CPU
    monkeypatch.setattr(G, "svi_step", lambda *a, **k: (float("nan"), 0.0))
    assert _train(world["data"], tmp_path / "r", "--on-nan", on_nan) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: non-finite loss") and says in err and never not in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # a run that never finished an epoch leaves nothing


@pytest.mark.parametrize("command", [["sample", "-o", "{t}/s.png"], ["reconstruct", "-o", "{t}/r.png"],
                                     ["inspect", "--n", "5", "--k", "2"], ["evaluate", "--k", "2", "--quiet"]])  # fmt: skip
def test_the_advice_for_a_damaged_best_pt_can_be_followed(world, tmp_path, capsys, command):
    run = tmp_path / "run"
    shutil.copytree(world["dir"] / "truncated", run)
    args = [command[0], str(run), *(a.format(t=tmp_path) for a in command[1:])]
    assert main(args) == 2 and "(--checkpoint last)" in capsys.readouterr().err
    assert main([*args, "--checkpoint", "last"]) == 0, capsys.readouterr().err


def test_evaluate_takes_a_file_smaller_than_a_training_batch(world, tmp_path, capsys):
    """A run's batch size is a training option: evaluating on a small file of the right shape
    is no mistake (it used to be refused with advice to lower a --batch-size evaluate has not)."""
    run = tmp_path / "run"
    shutil.copytree(world["dir"] / "run", run)
    np.save(tmp_path / "small.npy", np.random.default_rng(0).random((12, 8, 8)).astype(np.float32))
    args = ["evaluate", str(run), "--data-file", str(tmp_path / "small.npy"), "--k", "2", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["n_images"] == 1


def test_score_creates_its_output_folder_as_sample_does(world, tmp_path):
    out = tmp_path / "new" / "deeper" / "s.csv"
    assert (
        main(["score", str(world["dir"] / "run"), "--split", "test", "--k", "2", "-o", str(out), "--quiet"])
        == 0
    )
    n_test = json.loads((world["dir"] / "run" / "eval.json").read_text())["n_images"]
    assert len(out.read_text().splitlines()) == 1 + n_test
    z = tmp_path / "other" / "z.npy"
    assert main(["embed", str(world["dir"] / "run"), "--split", "test", "-o", str(z), "--quiet"]) == 0
    assert np.load(z).shape == (n_test, 2)
    assert torch.isfinite(torch.from_numpy(np.load(z))).all()
