"""Shared pieces of the experiment scripts: budget options and result tables."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def budget_options(p: argparse.ArgumentParser, epochs: int, k: int = 1000, n_test: int = 1000) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs per run (default: {epochs})")
    p.add_argument(
        "--train-size", type=int, default=None, help="use only the first N training images (default: all)"
    )
    p.add_argument("--k", type=int, default=k, help=f"importance samples for log p(x) (default: {k})")
    p.add_argument("--n-test", type=int, default=n_test, help=f"test images for log p(x) (default: {n_test})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PYROVAE_DATA)")
    p.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where run directories go (default: runs/)"
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="where tables and figures go (default: experiments/results)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
