"""The command line, on real MNIST (from $PYROVAE_DATA) and on bad input."""

import json
import subprocess
import sys

import pytest
import torch

from pyrovae import load_run
from pyrovae.cli import main


def test_one_epoch_on_real_mnist_then_evaluate_sample_reconstruct(tmp_path, mnist_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "tutorial", "--epochs", "1", "--out", str(run), "--data-dir", str(mnist_dir),
            "--eval-k", "20", "--eval-n-test", "100", "--quiet"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["n_images"] == 10000 and res["k"] == 20
    # the IW estimate is the tighter bound on the same images
    assert -200 < res["elbo_ll_images"] < res["log_likelihood"] < 0 and -200 < res["elbo"] < 0
    for f in ["samples.png", "reconstructions.png", "metrics.csv", "best.pt"]:
        assert (run / f).stat().st_size > 0
    first = res
    assert main(["evaluate", str(run), "--k", "20", "--n-test", "100"]) == 0  # as train's own evaluation
    assert json.loads((run / "eval.json").read_text()) == first  # seeded: the figures repeat
    assert main(["evaluate", str(run), "--k", "5", "--n-test", "50"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["k"] == 5 and res["n_ll_images"] == 50 and len(res["kl_per_dim"]) == 50
    out = capsys.readouterr().out
    assert "nats/image" in out and "K=5" in out
    assert main(["sample", str(run), "-o", str(tmp_path / "s.png"), "-n", "16"]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["reconstruct", str(run), "-o", str(tmp_path / "r.png")]) == 0
    # a data file for a run that read none would be ignored, and MNIST evaluated: refused
    torch.save(torch.zeros(5, 1, 28, 28), tmp_path / "other.pt")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-file", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err
    assert f"error: {run} was trained on MNIST, not on a data file" in err and "pyrovae score" in err


def test_console_script_reports_user_errors_without_traceback(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "pyrovae", "train", "--prior", "vampp", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
    assert "error: unknown --prior 'vampp'" in bad.stderr and "Did you mean 'vamp'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trian"], "invalid choice: 'trian' (choose from 'train', "),
        (["trian"], "; did you mean 'train'? (see pyrovae --help)"),
        # abbreviations are refused: "--epoch" would silently change meaning once "--epoch-size" exists
        (
            ["train", "--epoch", "1"],
            "unrecognized arguments: --epoch 1; did you mean --epochs? (see pyrovae train",
        ),
        (["runs", "--sortt", "nll"], "unrecognized arguments: --sortt; did you mean --sort?"),
        (["train", "--bogus"], "unrecognized arguments: --bogus (see pyrovae train --help)"),
        # a mistyped required option: argparse reports it missing; the typo is named beside it
        (
            ["sweep", "--space", "s.toml", "--trails", "2"],
            "required: --trials, --out; unrecognized arguments: --trails; did you mean --trials?",
        ),
        (
            ["embed", "run", "--spilt=test", "-o", "x.npz"],
            "is required; unrecognized arguments: --spilt=test; did you mean --split?",
        ),
    ],
)
def test_a_mistyped_command_or_option_is_refused_with_the_closest_name(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "r")] if argv[0] == "train" else argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--beta", "-1"], "--beta must be >= 0"),
        (["--batch-size", "100000"], "larger than the"),
        (["--device", "cuda:7"], "CUDA"),
        (["--binarize", "none"], None),  # binary data: fine
        # every option in the message is named by its flag, not only the one the error concerns
        (
            ["--classes", "0,1", "--exclude-classes", "2"],
            "give --classes (those to keep) or --exclude-classes",
        ),
        (
            ["--semi-supervised", "--labeled", "30", "--capacity", "5"],
            "--semi-supervised cannot use --capacity",
        ),
        (["--monitor", "accuracy"], "--monitor applies to a semi-supervised run: add --semi-supervised"),
    ],
)
def test_bad_options_are_refused(tmp_path, capsys, extra, message, tiny_data_file):
    data = tiny_data_file(tmp_path)
    args = ["train", "--dataset", "file", "--data-file", str(data), "--epochs", "1", "--z-dim", "2",
            "--hidden", "8", "--batch-size", "16", "--val-size", "10", "--out", str(tmp_path / "r"),
            "--no-eval", "--quiet", *extra]  # fmt: skip
    code = main(args)
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "options, field_advice, flag_advice",
    [
        (
            dict(model="hierarchical", free_bits=0.1, elbo="meanfield"),
            "; use elbo trace",
            "; use --elbo trace",
        ),
        (dict(semi_supervised=True, labeled=20, elbo="meanfield"), "; use elbo trace", "; use --elbo trace"),
        (
            dict(semi_supervised=True, labeled=20, prior="vamp"),
            "; use prior normal,",
            "; use --prior normal,",
        ),
    ],
)
def test_a_suggested_value_names_the_field_in_python_and_the_flag_on_the_command_line(
    tmp_path, capsys, options, field_advice, flag_advice
):
    from pyrovae import Config, ConfigError

    with pytest.raises(ConfigError) as e:
        Config(**options).validate()
    assert field_advice in str(e.value) and "--" not in str(e.value)
    argv = ["train", "--out", str(tmp_path / "r"), "--quiet"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and flag_advice in err, err
    assert not (tmp_path / "r").exists()


def test_missing_mnist_names_files_and_ways_to_point_at_them(tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err
    assert "--data-dir" in err and "PYROVAE_DATA" in err


def test_cli_and_python_train_write_the_same_run_directory(tmp_path, capsys, tiny_data_file):
    import torch

    from pyrovae import Config, checkpoint, train

    data = tiny_data_file(tmp_path)
    opts = dict(dataset="file", data_file=str(data), epochs=2, z_dim=2, hidden=[8], batch_size=16, val_size=10,
                eval_k=5)  # fmt: skip
    flags = [f"--{k.replace('_', '-')}" if i == 0 else str(v) for k, v in opts.items() for i in range(2)]
    flags[flags.index("--hidden") + 1] = "8"  # a list option: its value as the CLI takes it
    assert main(["train", *flags, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    train(Config(**opts), tmp_path / "py", progress=False)
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "py").iterdir())
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "eval.json", "samples.png",
            "reconstructions.png"} <= set(names)  # fmt: skip
    for name in ["config.json", "eval.json", "samples.png", "reconstructions.png"]:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "py" / name).read_bytes(), name
    a, b = (checkpoint.load(tmp_path / d / "best.pt")["model"] for d in ("cli", "py"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_with_a_relative_data_file_works_from_another_folder(tmp_path, monkeypatch, tiny_data_file):
    data = tiny_data_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "file", "--data-file", data.name, "--epochs", "1", "--z-dim", "2", "--hidden", "8",
            "--batch-size", "16", "--val-size", "10", "--out", "r", "--no-eval", "--quiet"]  # fmt: skip
    assert main(args) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["reconstruct", str(tmp_path / "r"), "-o", "rec.png", "-n", "4"]) == 0
    assert (elsewhere / "rec.png").read_bytes()[:4] == b"\x89PNG"
    moved = data.rename(tmp_path / "moved.pt")  # the data moved: point the run at it
    assert main(["reconstruct", str(tmp_path / "r"), "-o", "rec2.png", "--data-file", str(moved)]) == 0


def test_a_data_file_without_dataset_file_is_refused(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path)
    assert main(["train", "--data-file", str(data), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--dataset is 'mnist'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_help_lists_each_options_choices_once_with_one_default(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, choice in [("--prior", "vamp"), ("--guide", "iaf"), ("--likelihood", "cbernoulli"),
                           ("--net", "conv"), ("--elbo", "iwae"), ("--beta-schedule", "cyclical"),
                           ("--lr-schedule", "cosine"), ("--binarize", "dynamic")]:  # fmt: skip
        after = text[text.rindex(option + " NAME") :]  # the options list, after the usage line
        assert choice in after[: after.index("(default:")], option
    import re

    assert not re.search(r"\(default:[^)]*\) \(default", text)  # each default printed once


def test_names_are_case_insensitive_quiet_is_quiet_and_plate_nesting_is_not_guessed(
    tmp_path, capsys, caplog, tiny_data_file
):
    import logging

    data = tiny_data_file(tmp_path)
    caplog.set_level(logging.INFO, logger="pyro")
    args = ["train", "--dataset", "file", "--data-file", str(data), "--epochs", "1", "--z-dim", "2", "--hidden",
            "8", "--batch-size", "16", "--val-size", "10", "--prior", "Learned", "--guide", "DIAG",
            "--num-particles", "3", "--eval-k", "5", "--out", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "log p(x)" not in err and "epoch 1/1" not in err  # no progress bars with --quiet
    assert "Guessed max_plate_nesting" not in caplog.text
    assert json.loads((tmp_path / "r" / "config.json").read_text())["prior"] == "learned"
    scores = tmp_path / "s.csv"
    assert main(["score", str(tmp_path / "r"), "--split", "TEST", "--device", "CPU", "--k", "2", "-o", str(scores),
                 "--quiet"]) == 0  # fmt: skip
    n_test = len(load_run(tmp_path / "r").data.test.x)
    assert len(scores.read_text().splitlines()) - 1 == n_test


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``pyrovae runs DIR | head``: when the reader closes the pipe, the command stops without an
    error message, with the status of a command ended by SIGPIPE."""
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "pyrovae", "runs", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.close()  # before it has written anything
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == ""


def test_train_says_which_given_options_the_run_does_not_read(tmp_path, tiny_data_file, capsys):
    """An option the configuration never reads (a schedule's length without the schedule, a
    component's option the chosen component does not take) is accepted, and said, not ignored
    silently; the same options where they are read draw no note."""
    data = tiny_data_file(tmp_path)
    common = ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "8",
              "--batch-size", "16", "--epochs", "1", "--val-size", "12", "--no-eval", "--quiet"]  # fmt: skip
    unused = ["--components", "3", "--pseudo-inputs", "4", "--flow-layers", "2", "--likelihood-scale", "0.1",
              "--warmup-epochs", "3", "--capacity-epochs", "2", "--gamma", "5", "--lr-decay", "0.5"]  # fmt: skip
    assert main([*common, *unused, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    for option in unused[::2]:
        assert f"note: {option} is not used by this run: only " in err, option
    assert "only a prior that takes it (--prior mixture) reads it" in err
    used = ["--prior", "mixture", "--components", "3", "--beta-schedule", "linear", "--warmup-epochs", "3",
            "--lr-schedule", "exponential", "--lr-decay", "0.5", "--guide", "iaf", "--flow-layers", "2",
            "--num-particles", "2", "--eval-k", "5"]  # fmt: skip
    assert main([*common, *used, "--out", str(tmp_path / "b")]) == 0
    assert "note:" not in capsys.readouterr().err
    # where a label enters, with no label; a guide's scale, for a guide without one
    assert main([*common, "--label-layers", "every", "--out", str(tmp_path / "c")]) == 0
    assert (
        "note: --label-layers is not used by this run: only a model with a label" in capsys.readouterr().err
    )
    assert main([*common, "--guide", "delta", "--guide-scale", "exp", "--conditional", "--label-layers", "input",
                 "--num-particles", "3", "--eval-k", "5", "--out", str(tmp_path / "d")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "note: --guide-scale is not used by this run: only a guide that takes it" in err
    # a point estimate: K copies of it are one particle, and an autoencoder has no log p(x) to sample
    assert "note: --num-particles is not used by this run: only a guide that samples" in err
    assert "note: --eval-k is not used by this run: only a guide that samples" in err
    assert "--label-layers" not in err
    # model structured builds its own q(z|x,c), whose scale does not follow --guide-scale
    assert main([*common, "--model", "structured", "--quadrants", "2", "--baseline-epochs", "1", "--guide-scale",
                 "exp", "--out", str(tmp_path / "e")]) == 0  # fmt: skip
    assert (
        "note: --guide-scale is not used by this run: only a model whose guide is --guide's (--model structured's"
        in capsys.readouterr().err
    )


def test_reconstruct_says_when_n_is_more_than_the_test_images(tiny_run, tmp_path, capsys):
    """-n above the test split drew all of it without a word (10000 MNIST images in one PNG)."""
    n = len(tiny_run.data.test)
    assert main(["reconstruct", str(tiny_run.path), "-o", str(tmp_path / "r.png"), "-n", str(n + 50)]) == 0
    assert f"note: -n {n + 50} is more than the {n} test images: drawing all {n}" in capsys.readouterr().err
    assert main(["reconstruct", str(tiny_run.path), "-o", str(tmp_path / "r.png"), "-n", str(n)]) == 0
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["inspect", "--k", "2", "--n", "10"], ["reconstruct", "-o", "{tmp}/r.png"]]
)
def test_inspect_and_reconstruct_take_the_seed_docs_cli_promises(tiny_run, tmp_path, monkeypatch, command):
    """docs/cli.md: "--seed ... seeds everything"; inspect and reconstruct refused it."""
    from pyrovae import plots

    seeds, real = [], plots.image_grid
    monkeypatch.setattr(
        plots, "image_grid", lambda *a, **k: seeds.append(torch.initial_seed()) or real(*a, **k)
    )
    args = [command[0], str(tiny_run.path), *(c.format(tmp=tmp_path) for c in command[1:])]
    assert main([*args, "--seed", "7"]) == 0
    assert seeds and seeds[0] == 7
