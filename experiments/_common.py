"""Shared pieces of the experiment scripts: budget options, result tables and the entry point."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def resumable(out: Path, cfg) -> bool:
    """Whether ``out`` holds a run of ``cfg``, finished or not, up to the options a resume may change
    (:data:`pyrovae.runs.RESUMABLE`): a script continues such a run and replaces any other, so a
    rerun with other options trains afresh instead of refusing to resume.

    :param out: the run directory
    :param cfg: the :class:`pyrovae.config.Config` the script would train
    """
    from pyrovae.config import Config
    from pyrovae.runs import RESUMABLE

    if not (out / "checkpoint.pt").exists() or not (out / "config.json").exists():
        return False
    saved = dataclasses.asdict(Config.load(out / "config.json"))
    return all(saved.get(k) == v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE)


def budget_options(
    p: argparse.ArgumentParser, epochs: int, k: int = 1000, n_test: int = 1000, omit: tuple[str, ...] = (),
    train_size: int | None = None,
) -> None:  # fmt: skip
    """Add the options every experiment shares to ``p``.

    :param train_size: the default of ``--train-size`` (None: all the training images)
    :param omit: options the script never reads (``"--k"``, ``"--runs-dir"``...), left out so that
        none is accepted and then ignored
    """
    options = {
        "--epochs": dict(type=int, default=epochs, help=f"training epochs per run (default: {epochs})"),
        "--train-size": dict(
            type=int,
            default=train_size,
            help=f"use only the first N training images (default: {train_size or 'all'})",
        ),
        "--k": dict(type=int, default=k, help=f"importance samples for log p(x) (default: {k})"),
        "--n-test": dict(type=int, default=n_test, help=f"test images for log p(x) (default: {n_test})"),
        "--seed": dict(type=int, default=0, help="random seed (default: 0)"),
        "--data-dir": dict(default=None, help="folder holding MNIST/raw (default: $PYROVAE_DATA)"),
        "--runs-dir": dict(type=Path, default=Path("runs"), help="where run directories go (default: runs/)"),
        "--results-dir": dict(
            type=Path, default=RESULTS, help="where tables and figures go (default: experiments/results)"
        ),
        "--quiet": dict(action="store_true", help="no progress bars"),
    }
    unknown = set(omit) - set(options)
    assert not unknown, f"budget_options has no {unknown}"
    for flag, spec in options.items():
        if flag not in omit:
            p.add_argument(flag, **spec)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def run_script(
    main: Callable[[argparse.Namespace], object], parse_args: Callable[[], argparse.Namespace]
) -> None:
    """Run a script's ``main`` as ``pyrovae`` runs a command: a user error (a refused option, a missing
    data set, an unreadable checkpoint) is one ``error:`` line on stderr and exit status 2, no traceback.

    :param main: the script's ``main(args)``
    :param parse_args: the script's argument parser, called with ``sys.argv``
    """
    from pyrovae.cli import USER_ERRORS, _message
    from pyrovae.fit import TrainingError

    args = parse_args()
    try:
        main(args)
    except USER_ERRORS + (TrainingError,) as e:
        print(f"error: {' '.join(_message(e).splitlines())}", file=sys.stderr)
        sys.exit(2)
