"""The ``pyrovae`` command line's options: one sub-parser per command, and every
:class:`~pyrovae.config.Config` field as a ``train``/``sweep`` flag (its help, choices and default
from the field), parsed so a mistake is one ``error:`` line with exit status 2.
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

from .config import PRESETS, SEED, Config
from .distributed import rank


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
            f"unknown --{flag(name)} {value!r}; choose from {', '.join(choices)}.{hint}"
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


def _seed(value: str) -> int:
    """A seed: an integer from 0 to 2**32 - 1 (see :data:`~pyrovae.config.SEED`)."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not SEED[0](n):
        raise argparse.ArgumentTypeError(f"expected {SEED[1]}, got {value!r}")
    return n


def flag(name: str) -> str:
    """The command-line flag of a config field, without its dashes: ``z_dim`` -> ``z-dim``."""
    return name.replace("_", "-")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in dataclasses.fields(Config):
        option, t, choices = "--" + flag(f.name), _field_type(f), f.metadata.get("choices")
        default = getattr(defaults, f.name)
        help = f.metadata["help"]
        if choices is not None:
            help += f"; one of {{{', '.join(choices)}}}"
        help += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help)
        if t is bool:
            p.add_argument(option, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(t) is list:
            p.add_argument(option, type=_ints, nargs="+", action=_Concatenate, metavar="N", **kw)
        elif choices is not None:
            p.add_argument(option, type=_choice_type(f.name, choices), metavar="NAME", **kw)
        else:
            p.add_argument(option, type=_seed if f.metadata.get("domain") is SEED else t, **kw)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line (exit status 2), like the rest, that
    names the closest command or option to a mistyped one and takes no abbreviated options (a
    recorded command must mean the same after an option is added)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        # kept for error(): a missing required option may be a mistyped one among them
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self._subparsers and self._subparsers._group_actions[0].choices.get(namespace.command)
            (sub or self).error(f"unrecognized arguments: {' '.join(extras)}{(sub or self)._closest(extras)}")
        return namespace

    def _unknown(self, tokens: list[str]) -> list[str]:
        """The options among ``tokens`` that this parser does not have."""
        return [
            t for t in tokens if t.startswith("--") and t.split("=")[0] not in self._option_string_actions
        ]

    def _closest(self, tokens: list[str]) -> str:
        """A "did you mean" for each option among ``tokens`` that this parser lacks but nearly has."""
        names = {o.lstrip("-"): o for o in self._option_string_actions}
        wrong = [t.split("=")[0].lstrip("-") for t in self._unknown(tokens)]
        close = [c for w in wrong for c in difflib.get_close_matches(w, list(names), n=1)]
        return "".join(f"; did you mean {names[c]}?" for c in close)

    def error(self, message: str):
        # "argument --prior: unknown --prior 'x'": the option is already named
        message = re.sub(r"^argument (--[\w-]+)(/[\w-]+)?: (?=.*\1)", "", message)
        if m := re.match(r"argument command: invalid choice: '([^']*)' \(choose from (.*)\)$", message):
            close = difflib.get_close_matches(m[1], re.findall(r"'([^']*)'", m[2]), n=1)
            message += f"; did you mean {close[0]!r}?" if close else ""
        elif "required" in message and (hint := self._closest(getattr(self, "_given", []))):
            message += f"; unrecognized arguments: {' '.join(self._unknown(self._given))}{hint}"
        self.exit(2, f"error: {message} (see {self.prog} --help)\n" if rank() == 0 else None)


def parser() -> argparse.ArgumentParser:
    """The ``pyrovae`` parser: its commands and their options."""
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
    e.add_argument("--seed", type=_seed, default=0, help="seed of the estimates' samples (default: 0)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="a grid of images generated from the prior")
    _run_argument(s)
    s.add_argument(
        "-o", "--output", type=Path, required=True, help="picture to write (.png, .jpg, .pdf, .svg)"
    )
    s.add_argument("-n", type=_positive, default=None,
                   help="number of images (default: 64; for a conditional run one row per class, about 64 or n rounded up to whole rows; 8 completions for a structured one)")  # fmt: skip
    s.add_argument("--label", type=int, default=None,
                   help="class to generate, for a conditional run (default: one row per class)")  # fmt: skip
    s.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")

    r = sub.add_parser("reconstruct", help="test images next to their reconstructions")
    _run_argument(r)
    r.add_argument(
        "-o", "--output", type=Path, required=True, help="picture to write (.png, .jpg, .pdf, .svg)"
    )
    r.add_argument(
        "-n",
        type=_positive,
        default=32,
        help="number of test images (default: 32; all of them where there are fewer)",
    )
    r.add_argument("--seed", type=_seed, default=0, help="seed of a Monte Carlo posterior mean (default: 0)")

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
    w.add_argument("--sampler-seed", type=_seed, default=None,
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
    i.add_argument("--seed", type=_seed, default=0, help="seed of the samples and estimates (default: 0)")

    dg = sub.add_parser("disentanglement", help="BetaVAE, FactorVAE, MIG and DCI scores of a dsprites run, "
                        "and a labelled traversal -> RUN/disentanglement.json, RUN/traversal.png")  # fmt: skip
    _run_argument(dg)
    dg.add_argument("--seed", type=_seed, default=0, help="seed of the metrics' samples (default: 0)")
    dg.add_argument("--scale", type=float, default=1.0,
                    help="fraction of disentanglement_lib's sample sizes, at least 0.005 (default: 1, its protocol)")  # fmt: skip

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
    sc.add_argument("--fpr", type=float, default=None,
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
    which.add_argument("--split", type=_choice_type("split", ["train", "val", "test"]), metavar="NAME",
                       help="one of the run's own splits: train, val or test (of a conditional run trained "
                            "on some classes, their images only)")  # fmt: skip
    p.add_argument(
        "--labels-file",
        default=None,
        help="labels of --data-file, one class index per row (.npy or .pt); a conditional run "
        "takes those of the classes it was trained on",
    )
    p.add_argument(
        "--checkpoint", default="best", help="'best', 'last' or a file name in RUN (default: best)"
    )
    p.add_argument("--device", default=None, help=RUN_DEVICE_HELP)
    p.add_argument("--data-dir", default=None, help="MNIST folder, if it moved since training")
    p.add_argument("--run-data-file", default=None,
                   help="the run's own data file, if it moved since training (for --split and --threshold-from val)")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help="seed of the Monte Carlo estimates (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_argument(p: argparse.ArgumentParser) -> None:
    """The options of a command that reads one run: which run, its checkpoint, and where its data
    and device are now."""
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--device", default=None, help=RUN_DEVICE_HELP)
    p.add_argument(
        "--data-dir", default=None, help="MNIST folder, if it moved since training (default: the run's)"
    )
    p.add_argument("--data-file", default=None,
                   help="the run's data file, if it moved since training (default: the run's)")  # fmt: skip
    p.add_argument(
        "--checkpoint", default="best", help="'best', 'last' or a file name in RUN (default: best)"
    )
