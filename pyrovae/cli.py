"""The ``pyrovae`` command line: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``inspect``,
``sweep``, ``score``, ``embed``, ``disentanglement`` and ``runs``.

It only parses options and calls the run layer (:mod:`pyrovae.runs`). User errors (bad options,
data or checkpoints) print one ``error:`` line saying what to do and exit with status 2; an
interrupted training exits with 130 after writing a checkpoint. Under ``torchrun`` only rank 0
prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path

from .checkpoint import CheckpointError
from .config import PRESETS, Config, ConfigError
from .data import DataError
from .outputs import IMAGE_FORMATS, output_file, writable_folder

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _field_type(f: dataclasses.Field):
    t = typing.get_type_hints(Config)[f.name]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def _choice_type(name: str, choices):
    """An argparse type that accepts any case of a choice and suggests the closest on a typo."""

    def parse(value: str) -> str:
        by_lower = {str(c).lower(): c for c in choices}
        if value.lower() in by_lower:
            return by_lower[value.lower()]
        close = difflib.get_close_matches(value.lower(), list(by_lower), n=1)
        hint = f" Did you mean {by_lower[close[0]]!r}?" if close else ""
        raise argparse.ArgumentTypeError(
            f"unknown --{_flag(name)} {value!r}; choose from {', '.join(choices)}.{hint}"
        )

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _ints(value: str) -> list[int]:
    """One command-line word of a list option: ``"8"`` or ``"0,1,2"``."""
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 3 or 0,1,2, got {value!r}") from None


class _Concatenate(argparse.Action):
    """Joins the words of a list option, so ``--classes 0 1 2`` and ``--classes 0,1,2`` agree."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for word in values for v in word])


def _positive(value: str) -> int:
    """A count that must be at least 1 (images, samples, trials)."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in dataclasses.fields(Config):
        flag, t, choices = "--" + _flag(f.name), _field_type(f), f.metadata.get("choices")
        default = getattr(defaults, f.name)
        help = f.metadata["help"]
        if choices is not None:
            help += f"; one of {{{', '.join(choices)}}}"
        help += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help)
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(t) is list:
            p.add_argument(flag, type=_ints, nargs="+", action=_Concatenate, metavar="N", **kw)
        elif choices is not None:
            p.add_argument(flag, type=_choice_type(f.name, choices), metavar="NAME", **kw)
        else:
            p.add_argument(flag, type=t, **kw)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line (exit status 2), like the rest."""

    def error(self, message: str):
        # "argument --prior: unknown --prior 'x'": the option is already named
        message = re.sub(r"^argument (--[\w-]+)(/[\w-]+)?: (?=.*\1)", "", message)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n" if _speaks() else None)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyrovae", description="Variational autoencoders as Pyro programs, trained by SVI.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE and evaluate it on the test set")
    t.add_argument("--preset", type=_choice_type("preset", list(PRESETS)), metavar="NAME",
                   help=f"start from a published network and optimizer; one of {{{', '.join(PRESETS)}}}")  # fmt: skip
    t.add_argument("--out", default=None, help="run directory (default: runs/<preset or vae>-seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--eval", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate on the test set at the end (default: yes; a resumed run as it was started)")  # fmt: skip
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_options(t)

    e = sub.add_parser(
        "evaluate", help="test ELBO, importance-sampled log p(x), active units -> RUN/eval.json"
    )
    _run_argument(e)
    e.add_argument(
        "--k", type=_positive, default=None, help="importance samples per image (default: the run's eval_k)"
    )
    e.add_argument("--n-test", type=_positive, default=None,
                   help="test images for log p(x) (default: the run's eval_n_test)")  # fmt: skip
    e.add_argument(
        "--checkpoint", default="best", help="'best', 'last' or a file name in RUN (default: best)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the estimates' samples (default: 0)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="a grid of images generated from the prior")
    _run_argument(s)
    s.add_argument(
        "-o", "--output", type=Path, required=True, help="picture to write (.png, .jpg, .pdf, .svg)"
    )
    s.add_argument("-n", type=_positive, default=None,
                   help="number of images (default: 64, or about 64 in rows of one class for a conditional run)")  # fmt: skip
    s.add_argument("--label", type=int, default=None,
                   help="class to generate, for a conditional run (default: one row per class)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    r = sub.add_parser("reconstruct", help="test images next to their reconstructions")
    _run_argument(r)
    r.add_argument(
        "-o", "--output", type=Path, required=True, help="picture to write (.png, .jpg, .pdf, .svg)"
    )
    r.add_argument("-n", type=_positive, default=32, help="number of test images (default: 32)")

    w = sub.add_parser("sweep", help="search options with Optuna; each trial a run, the best tested")
    w.add_argument("--space", required=True, type=Path, help="TOML file: one table per option to search")
    w.add_argument(
        "--trials", type=_positive, required=True, help="trials the study runs in all (all workers)"
    )
    w.add_argument("--out", required=True, type=Path, help="sweep folder (trials/, study.db, results)")
    w.add_argument("--objective", type=_choice_type("objective", ["elbo", "ll"]), default="elbo", metavar="NAME",
                   help="'elbo': best validation ELBO; 'll': validation log p(x) with --eval-k samples on "
                        "--eval-n-test images (default: elbo)")  # fmt: skip
    w.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    w.add_argument("--storage", default=None,
                   help="Optuna storage URL shared by several worker processes (default: OUT/study.db)")  # fmt: skip
    w.add_argument("--study-name", default=None, help="study name in the storage (default: OUT's name)")
    w.add_argument("--sampler-seed", type=int, default=None,
                   help="seed of the TPE sampler, for a reproducible one-process sweep (default: random)")  # fmt: skip
    w.add_argument("--no-prune", action="store_true", help="train every trial to the end")
    w.add_argument("--preset", type=_choice_type("preset", list(PRESETS)), metavar="NAME",
                   help="base options from a preset; the flags below go on top")  # fmt: skip
    w.add_argument("--quiet", action="store_true", help="print only the result")
    _add_config_options(w)

    i = sub.add_parser("inspect", help="write every inspection figure to RUN/figures/ with an index.md")
    _run_argument(i)
    i.add_argument(
        "--k", type=_positive, default=100, help="importance samples for anomaly scores (default: 100)"
    )
    i.add_argument("--n", type=_positive, default=2000,
                   help="test images for the latent map and anomalies (default: 2000)")  # fmt: skip

    dg = sub.add_parser("disentanglement", help="BetaVAE, FactorVAE, MIG and DCI scores of a dsprites run, "
                        "and a labelled traversal -> RUN/disentanglement.json, RUN/traversal.png")  # fmt: skip
    _run_argument(dg)
    dg.add_argument("--seed", type=int, default=0, help="seed of the metrics' samples (default: 0)")
    dg.add_argument("--scale", type=float, default=1.0,
                    help="fraction of disentanglement_lib's sample sizes (default: 1, its protocol)")  # fmt: skip

    sc = sub.add_parser("score", help="anomaly scores of every datum of a file or split -> CSV")
    _data_arguments(sc)
    sc.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write, one row per datum")
    sc.add_argument(
        "--k", type=_positive, default=100, help="importance samples per datum for log p(x) (default: 100)"
    )
    sc.add_argument("--batch-size", type=_positive, default=100, help="data scored at once (default: 100)")
    sc.add_argument("--threshold-from", default=None, metavar="val|FILE",
                    help="add an 'anomalous' column, thresholded on the run's validation split (val) or "
                         "on a file of normal data")  # fmt: skip
    sc.add_argument("--fpr", type=float, default=0.05,
                    help="fraction of the --threshold-from data to flag (default: 0.05)")  # fmt: skip
    sc.add_argument("--threshold-score", default=None,
                    help="score column to threshold (default: neg_log_likelihood, or neg_recon for an autoencoder)")  # fmt: skip

    em = sub.add_parser("embed", help="posterior means (or draws) of every datum of a file or split")
    _data_arguments(em)
    em.add_argument("-o", "--output", type=Path, required=True, help=".npy or .csv file to write")
    em.add_argument(
        "--samples", type=_positive, default=None, help="draws z ~ q(z|x) per datum instead of the mean"
    )
    em.add_argument("--batch-size", type=_positive, default=1000, help="data encoded at once (default: 1000)")

    ls = sub.add_parser("runs", help="list the runs in a folder (and below) with their key figures")
    ls.add_argument(
        "folder", type=Path, nargs="?", default=Path("runs"), help="folder to search (default: runs)"
    )
    ls.add_argument("--sort", type=_choice_type("sort", ["path", "elbo", "ll", "val"]), default="path", metavar="KEY",
                    help="order by path, test ELBO (elbo), log p(x) (ll) or best validation ELBO (val), "
                         "best first (default: path)")  # fmt: skip
    return p


RUN_DEVICE_HELP = (
    "device to run on (default: the one `train` would use for this run here: its --device, "
    "auto meaning CUDA when available; the CPU where the run's GPU is absent)"
)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``score`` and ``embed``: which run, and which data to put through it."""
    p.add_argument("run", type=Path, help="run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--data-file", default=None,
                       help="a .npy (read through a memory map) or .pt array shaped like the training data")  # fmt: skip
    which.add_argument("--split", choices=["train", "val", "test"], help="one of the run's own splits")
    p.add_argument("--labels-file", default=None, help="labels of --data-file, one per row (.npy or .pt)")
    p.add_argument(
        "--checkpoint", default="best", help="'best', 'last' or a file name in RUN (default: best)"
    )
    p.add_argument("--device", default=None, help=RUN_DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="MNIST folder, if it moved since training")
    p.add_argument("--run-data-file", default=None,
                   help="the run's own data file, if it moved since training (for --split and --threshold-from val)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo estimates (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--device", default=None, help=RUN_DEVICE_HELP)
    p.add_argument(
        "--data-dir", default=None, help="MNIST folder, if it moved since training (default: the run's)"
    )
    p.add_argument("--data-file", default=None,
                   help="the run's data file, if it moved since training (default: the run's)")  # fmt: skip


def _train(args: argparse.Namespace) -> int:
    from .evaluate import summary
    from .runs import resumed_config, train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    out = _train_out(args)
    if args.resume and args.preset:  # a preset's options are checked against the saved run like any
        given = {**PRESETS[args.preset], **given}
    cfg = resumed_config(out, given) if args.resume else Config.from_preset(args.preset, **given)
    writable_folder(out, "the run")
    run = train(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                evaluate=args.eval)  # fmt: skip
    if not _speaks():
        return 0
    if run.complete:
        then = "; results kept from its eval.json" if run.results_kept else ""
        then = then or ("; best.pt evaluated afresh" if run.results is not None else "")
        print(f"run in {out} was already complete: nothing trained{then}")
    else:
        print(f"run written to {out}")
    if run.results is not None:
        if args.quiet:  # otherwise train printed it
            print(summary(run.results))
        print(f"figures: {out / 'samples.png'}, {out / 'reconstructions.png'}")
    return 0


def _train_out(args: argparse.Namespace) -> Path:
    return Path(args.out or f"runs/{args.preset or 'vae'}-seed{getattr(args, 'seed', 0)}")


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    writable_folder(args.out, "the sweep")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    res = sweep(args.space, args.trials, args.out, Config.from_preset(args.preset, **given),
                objective=args.objective, resume=args.resume, storage=args.storage,
                study_name=args.study_name, sampler_seed=args.sampler_seed, prune=not args.no_prune,
                progress=not args.quiet)  # fmt: skip
    print(f"best trial {res['trial']} of {args.out}: {res['meaning']} {res['value']:.2f} nats/image with "
          f"{res['params']}; results in {args.out / 'best.json'}, {args.out / 'trials.csv'}")  # fmt: skip
    return 0


def _speaks() -> bool:
    """Whether this process prints: under torchrun only rank 0 does, so messages appear once."""
    from .distributed import rank

    return rank() == 0


def _score_or_embed(args: argparse.Namespace) -> int:
    from . import score as S
    from .runs import load_run

    output_file(args.output, (".npy", ".csv") if args.command == "embed" else (".csv",))
    run = load_run(args.run, args.checkpoint, args.device, args.data_dir, args.run_data_file)
    rows = S.open_rows(run, args.data_file, args.labels_file, args.split)
    if args.command == "embed":
        shape = S.embed_rows(run, rows, args.output, args.samples, args.batch_size, args.seed, not args.quiet)
        print(
            f"wrote {args.output}: {'posterior draws' if args.samples else 'posterior means'} of shape {shape}"
        )
        return 0
    threshold, note = None, ""
    if args.threshold_from is not None:
        column = args.threshold_score or S.default_threshold_score(run)
        normal = (S.open_rows(run, split="val") if args.threshold_from == "val"
                  else S.open_rows(run, args.threshold_from))  # fmt: skip
        value = S.threshold_from(
            run, normal, column, args.fpr, args.k, args.batch_size, args.seed, not args.quiet
        )
        threshold = (column, value)
        note = f"; threshold {column} > {value:.2f}, flagging {args.fpr:.1%} of {normal.name}"
    res = S.score(run, rows, args.output, args.k, args.batch_size, args.seed, threshold, not args.quiet)
    means = ", ".join(f"{name} {res['mean_' + name]:.2f}" for name in S.score_names(run))
    flagged = f"; flagged {res['flagged']:.1%} as anomalous" if threshold else ""
    print(
        f"scored {res['n']} rows of {rows.name} (K={args.k}); means: {means}{note}{flagged}; wrote {args.output}"
    )
    return 0


def _command(args: argparse.Namespace) -> int:
    from . import plots
    from .runs import evaluate_run, load_run

    if args.command in ("score", "embed"):
        return _score_or_embed(args)
    if args.command == "runs":
        from .listing import list_runs, table

        print(table(list_runs(args.folder), args.folder, args.sort))
        return 0

    if hasattr(args, "output"):
        output_file(args.output, IMAGE_FORMATS)
    else:  # evaluate, inspect and disentanglement write into the run
        writable_folder(args.run, "results")
    which = getattr(args, "checkpoint", "best")
    run = load_run(args.run, which, args.device, args.data_dir, args.data_file)
    if args.command == "evaluate":
        from .evaluate import summary

        print(summary(evaluate_run(run, args.k, args.n_test, args.seed, not args.quiet, which)))
        return 0
    if args.command == "sample":
        from .variants import variant_of

        variant_of(run.model).samples(run, args.output, args.n, args.label, args.seed)
    elif args.command == "reconstruct":
        test = run.data.test.subset(slice(0, args.n))
        plots.reconstruction_grid(run.model, test.x, test.y, args.output)
    elif args.command == "disentanglement":
        from .disentanglement import disentangle_run, summary

        if not args.scale > 0:
            raise ConfigError(f"--scale must be positive, got {args.scale}")
        print(summary(disentangle_run(run, args.seed, args.scale)))
        print(f"wrote {run.path / 'disentanglement.json'} and {run.path / 'traversal.png'}")
        return 0
    elif args.command == "inspect":
        from .inspect_run import inspect_run

        print(f"figures and {inspect_run(run, k=args.k, n=args.n)} written")
        return 0
    print(f"wrote {args.output}")
    return 0


def _message(e: Exception) -> str:
    """A library error in the command line's terms: the option it names becomes its flag, and so
    does every other option written with an underscore (``semi_supervised``), except in errors
    about a search space, whose TOML keys are the field names; one-word options (``prior``) are
    left where they are, since the same words name things."""
    text, option = str(e), getattr(e, "option", None)
    if option and not text.startswith("--"):
        text = re.sub(rf"(?<![\w-]){re.escape(option)}\b", "--" + _flag(option), text, count=1)
    if option == "space":
        return text  # a search space names options as its TOML keys do: z_dim
    for name in getattr(e, "options", []):  # a list of options, each named (resume's contradictions)
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?=: )", "--" + _flag(name), text)
    fields = {f.name for f in dataclasses.fields(Config) if "_" in f.name}
    return re.sub(
        r"(?<![\w-])([a-z]+(?:_[a-z]+)+)\b", lambda m: "--" + _flag(m[1]) if m[1] in fields else m[1], text
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovae`` console script."""
    from .fit import Interrupted, TrainingError

    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # a usage error (status 2) or --help (0): returned, as every other outcome
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.command == "sweep":
            return _sweep(args)
        return _train(args) if args.command == "train" else _command(args)
    except USER_ERRORS + (TrainingError,) as e:
        if _speaks():
            print(f"error: {' '.join(_message(e).splitlines())}", file=sys.stderr)  # one line, always
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        if _speaks():
            print(f"interrupted: {str(e) or 'stopped by Ctrl-C'}{_resume_hint(args)}", file=sys.stderr)
        return 130
    except OSError as e:  # a file system refusing a write the checks before could not foresee
        if _speaks():
            print(f"error: cannot use {e.filename or 'a file'}: {e.strerror or e}; free space, fix the "
                  "permissions or choose another path", file=sys.stderr)  # fmt: skip
        return 2


def _resume_hint(args: argparse.Namespace) -> str:
    """The command that continues what was interrupted, to follow literally."""
    if args.command == "train":
        return f" (continue with: pyrovae train --resume --out {_train_out(args)})"
    if args.command == "sweep":
        return (f" (continue with: pyrovae sweep --resume --out {args.out} --space {args.space} "
                f"--trials {args.trials} and the options given before)")  # fmt: skip
    return ""


if __name__ == "__main__":
    sys.exit(main())
