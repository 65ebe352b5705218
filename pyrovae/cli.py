"""The ``pyrovae`` command line: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``inspect``,
``sweep``, ``score``, ``embed``, ``disentanglement`` and ``runs``.

It parses options (:mod:`pyrovae.arguments`) and calls the run layer (:mod:`pyrovae.runs`). User errors (bad options,
data or checkpoints) print one ``error:`` line saying what to do and exit with status 2; an
interrupted training exits with 130 after writing a checkpoint. Under ``torchrun`` only rank 0
prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .arguments import flag, parser
from .checkpoint import CheckpointError
from .config import PRESETS, Config, ConfigError
from .data import DataError
from .outputs import IMAGE_FORMATS, output_file, writable_folder

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _train(args: argparse.Namespace) -> int:
    from .build import unused_options
    from .evaluate import summary
    from .runs import refuse_resume_and_overwrite, resumed_config, train

    refuse_resume_and_overwrite(args.resume, args.overwrite)  # before looking for the run to resume
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    out = _train_out(args)
    if args.resume and args.preset:  # a preset's options are checked against the saved run like any
        given = {**PRESETS[args.preset], **given}
    cfg = resumed_config(out, given) if args.resume else Config.from_preset(args.preset, **given)
    writable_folder(out, "the run")
    for name, what in unused_options(cfg, given) if _speaks() else []:  # accepted, but said
        print(f"note: --{flag(name)} is not used by this run: only {what} reads it", file=sys.stderr)
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
    test, out = res["test"], args.out
    print(f"best trial {res['trial']} of {out}: {res['meaning']} {res['value']:.2f} nats/image with "
          f"{res['params']}; test: {test.get('elbo', float('nan')):.2f} ELBO, "
          f"{test.get('log_likelihood', float('nan')):.2f} log p(x) (K={test.get('k')}); results in "
          f"{out / 'best.json'}, {out / 'trials.csv'}, figures {out / 'trials.png'}")  # fmt: skip
    return 0


def _speaks() -> bool:
    """Whether this process prints: under torchrun only rank 0 does, so messages appear once."""
    from .distributed import rank

    return rank() == 0


def _score_or_embed(args: argparse.Namespace) -> int:
    from . import score as S
    from .evaluate import is_point_estimate
    from .loaded import load_run

    if args.command == "score":
        _check_threshold_options(args)
    output_file(args.output, (".npy", ".csv") if args.command == "embed" else (".csv",))
    run = load_run(args.run, args.checkpoint, args.device, args.data_dir, args.run_data_file)
    rows = S.open_rows(run, args.data_file, args.labels_file, args.split)
    if args.command == "embed":
        shape = S.embed_rows(run, rows, args.output, args.samples, args.batch_size, args.seed, not args.quiet)
        print(
            f"wrote {args.output}: {'posterior draws' if args.samples else 'posterior means'} of {rows.name}, "
            f"shape {shape}"
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
    k = "" if is_point_estimate(run.model) else f" (K={args.k})"  # an autoencoder samples nothing
    print(f"scored {res['n']} rows of {rows.name}{k}; means: {means}{note}{flagged}; wrote {args.output}")
    return 0


def _check_threshold_options(args: argparse.Namespace) -> None:
    """``--fpr`` and ``--threshold-score`` shape the threshold of ``--threshold-from``; alone they
    would be ignored."""
    given = [o for o in ("fpr", "threshold_score") if getattr(args, o) is not None]
    if args.threshold_from is None and given:
        raise ConfigError(f"--{flag(given[0])} sets the threshold that --threshold-from computes, and no "
                          "--threshold-from was given: add --threshold-from val (or a file of normal "
                          "data), or drop it")  # fmt: skip
    args.fpr = 0.05 if args.fpr is None else args.fpr


def _command(args: argparse.Namespace) -> int:
    from . import plots
    from .loaded import evaluate_run, load_run

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
    which = args.checkpoint
    run = load_run(args.run, which, args.device, args.data_dir, args.data_file)
    if args.command == "evaluate":
        from .evaluate import summary

        print(summary(evaluate_run(run, args.k, args.n_test, args.seed, not args.quiet, which)))
        return 0
    if args.command == "sample":
        from .variants import variant_of

        variant_of(run.model).samples(run, args.output, args.n, args.label, args.seed)
    elif args.command == "reconstruct":
        from .loaded import trained_test

        test = trained_test(run).subset(slice(0, args.n))
        if args.n > len(test):  # the picture shows fewer than asked: say so, not silently
            print(f"note: -n {args.n} is more than the {len(test)} test images: drawing all {len(test)}",
                  file=sys.stderr)  # fmt: skip
        import pyro

        pyro.set_rng_seed(args.seed)  # a guide without an analytic mean averages its samples
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

        print(f"figures and {inspect_run(run, k=args.k, n=args.n, seed=args.seed)} written")
        return 0
    print(f"wrote {args.output}")
    return 0


def _message(e: Exception) -> str:
    """A library error in the command line's terms: the option it names becomes its flag, and so
    does every other option written with an underscore (``semi_supervised``), except in errors
    about a search space, whose TOML keys are the field names; one-word options (``prior``) are
    left where they are, since the same words name things, except in a suggestion of a value
    ("use elbo trace" becomes "use --elbo trace")."""
    text, option = str(e), getattr(e, "option", None)
    if option and not text.startswith("--"):
        text = re.sub(rf"(?<![\w-]){re.escape(option)}\b", "--" + flag(option), text, count=1)
    if option == "space":
        return text  # a search space names options as its TOML keys do: z_dim
    for name in getattr(e, "options", []):  # a list of options, each named (resume's contradictions)
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?=: )", "--" + flag(name), text)
    words = {f.name for f in dataclasses.fields(Config) if "_" not in f.name}
    text = re.sub(
        r"(?<![\w-])(use|set) ([a-z]+)(?= \w)", lambda m: f"{m[1]} --{m[2]}" if m[2] in words else m[0], text
    )
    fields = {f.name for f in dataclasses.fields(Config) if "_" in f.name}
    return re.sub(
        r"(?<![\w-])([a-z]+(?:_[a-z]+)+)\b", lambda m: "--" + flag(m[1]) if m[1] in fields else m[1], text
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovae`` console script."""
    from .fit import Interrupted, TrainingError

    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # a usage error (status 2) or --help (0): returned, as every other outcome
        return e.code if isinstance(e.code, int) else 2
    restore, started = _sigterm_as_ctrl_c(), time.time()
    try:
        if args.command == "sweep":
            code = _sweep(args)
        else:
            code = _train(args) if args.command == "train" else _command(args)
        sys.stdout.flush()  # a reader gone away (`pyrovae runs | head`) shows here, not at exit
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nobody reads the rest
        return 141  # as a command ended by SIGPIPE, quietly
    except USER_ERRORS + (TrainingError,) as e:
        if _speaks():
            print(f"error: {' '.join(_message(e).splitlines())}", file=sys.stderr)  # one line, always
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        if _speaks():
            print(f"interrupted: {str(e) or 'stopped by Ctrl-C'}{_resume_hint(args, e, started)}",
                  file=sys.stderr)  # fmt: skip
        return 130
    except OSError as e:  # a file system refusing a write the checks before could not foresee
        if _speaks():
            print(f"error: cannot use {e.filename or 'a file'}: {e.strerror or e}; free space, fix the "
                  "permissions or choose another path", file=sys.stderr)  # fmt: skip
        return 2
    finally:
        restore()


def _sigterm_as_ctrl_c() -> Callable[[], None]:
    """Make SIGTERM raise :class:`KeyboardInterrupt` as SIGINT does, so that outside training (data
    loading, evaluation) it too ends in one ``interrupted:`` line and status 130, not a silent
    kill; returns what puts the handler before back (nothing to do outside the main thread,
    which cannot set one)."""

    def stop(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    try:
        before = signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return lambda: None
    # None: a handler not set from Python, which cannot be put back; the default is the nearest
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)


def _resume_hint(args: argparse.Namespace, e: BaseException, started: float) -> str:
    """The command that continues what was interrupted, to follow literally; ``started``: when
    the command began (a checkpoint written since is this run's, not one it was to overwrite)."""
    from .fit import Interrupted

    if args.command == "train":
        out = _train_out(args)
        ckpt = out / "checkpoint.pt"
        # a second of slack: a file's time stamp may lag the clock by a tick
        ours = ckpt.exists() and ckpt.stat().st_mtime >= started - 1
        if isinstance(e, Interrupted) or args.resume or ours:
            return f" (continue with: pyrovae train --resume --out {out})"
        return " (nothing was trained: run the same command again)"
    if args.command == "sweep":
        return (f" (continue with: pyrovae sweep --resume --out {args.out} --space {args.space} "
                f"--trials {args.trials} and the options given before)")  # fmt: skip
    return ""


if __name__ == "__main__":
    sys.exit(main())
