"""The ``pyrovae`` command line: ``train``, ``evaluate``, ``sample``, ``reconstruct``, ``inspect``.

User errors (bad options, data or checkpoints) print one ``error:`` line saying what to do and
exit with status 2; an interrupted training exits with 130 after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from .checkpoint import CheckpointError
from .config import PRESETS, Config, ConfigError
from .data import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def _field_type(f: dataclasses.Field):
    t = typing.get_type_hints(Config)[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        t = args[0]
    return t


def _add_config_options(p: argparse.ArgumentParser) -> None:
    defaults = Config()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help = f"{f.metadata['help']} (default: {getattr(defaults, f.name)})"
        t = _field_type(f)
        if t is bool:
            p.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help
            )
        elif typing.get_origin(t) is list:
            p.add_argument(flag, dest=f.name, type=int, nargs="+", default=argparse.SUPPRESS, help=help)
        else:
            p.add_argument(flag, dest=f.name, type=t, default=argparse.SUPPRESS, help=help)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyrovae", description="Variational autoencoders as Pyro programs, trained by SVI."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE and evaluate it on the test set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    t.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a published network and optimizer (default: none)",
    )
    t.add_argument("--out", default=None, help="run directory (default: runs/<preset or vae>-seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    t.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_options(t)

    e = sub.add_parser(
        "evaluate", help="test ELBO, importance-sampled log p(x), active units -> RUN/eval.json"
    )
    e.add_argument("run", type=Path, help="run directory")
    e.add_argument(
        "--k", type=int, default=None, help="importance samples per image (default: the run's eval_k)"
    )
    e.add_argument(
        "--n-test", type=int, default=None, help="test images for log p(x) (default: the run's eval_n_test)"
    )
    e.add_argument(
        "--checkpoint", default="best", help="'best', 'last' or a file name in RUN (default: best)"
    )
    e.add_argument(
        "--seed", type=int, default=0, help="seed of the estimates' samples, so figures repeat (default: 0)"
    )
    _common(e)

    s = sub.add_parser("sample", help="a grid of images generated from the prior")
    s.add_argument("run", type=Path, help="run directory")
    s.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    s.add_argument("-n", type=int, default=64, help="number of images (default: 64)")
    s.add_argument(
        "--label",
        type=int,
        default=None,
        help="class to generate, for a conditional run (default: one row per class)",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _common(s)

    r = sub.add_parser("reconstruct", help="test images next to their reconstructions")
    r.add_argument("run", type=Path, help="run directory")
    r.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    r.add_argument("-n", type=int, default=32, help="number of test images (default: 32)")
    _common(r)

    i = sub.add_parser("inspect", help="write every inspection figure to RUN/figures/ with an index.md")
    i.add_argument("run", type=Path, help="run directory")
    i.add_argument("--k", type=int, default=100, help="importance samples for anomaly scores (default: 100)")
    i.add_argument(
        "--n", type=int, default=2000, help="test images for the latent map and anomalies (default: 2000)"
    )
    _common(i)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="device to run on (default: cpu)")
    p.add_argument(
        "--data-dir", default=None, help="data folder, if it moved since training (default: the run's)"
    )


def _train(args: argparse.Namespace) -> int:
    from .train import train

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    name = args.preset or "vae"
    out = Path(args.out or f"runs/{name}-seed{given.get('seed', 0)}")
    if args.resume:
        if not (out / "config.json").exists():
            raise ConfigError(f"--resume: {out} holds no run (no config.json); drop --resume to start one")
        saved = dataclasses.asdict(Config.load(out / "config.json"))
        from .train import RESUMABLE

        clash = {k: (saved[k], v) for k, v in given.items() if k not in RESUMABLE and saved[k] != v}
        if clash:
            detail = ", ".join(
                f"--{k.replace('_', '-')}: saved {a!r}, given {b!r}" for k, (a, b) in clash.items()
            )
            raise ConfigError(
                f"--resume with options that contradict the saved run ({detail}); drop them or start a new run"
            )
        cfg = Config.from_dict({**saved, **given})
    else:
        cfg = Config.from_dict({**PRESETS.get(args.preset, {}), **given})
    train(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    print(f"run written to {out}")
    if not args.no_eval:
        _evaluate_run(out, k=None, n_test=None, which="best", device=cfg.device, data_dir=None, figures=True)
    return 0


def _evaluate_run(
    run_dir: Path, k, n_test, which: str, device: str, data_dir, figures: bool = False, seed: int = 0
) -> dict:
    import pyro

    from .evaluate import evaluate
    from .runs import load_run, write_json

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    run = load_run(run_dir, which, device, data_dir)
    cfg = run.config
    k = k or cfg.eval_k
    n_test = n_test if n_test is not None else cfg.eval_n_test
    if k < 1 or (n_test is not None and n_test < 1):
        raise ConfigError("--k and --n-test must be positive")
    test = run.data.test.to(run.device)
    if not run.model.num_classes:
        test.y = None
    pyro.set_rng_seed(seed)
    res = evaluate(run.model, test, k=k, n_ll=n_test, progress=True)
    res["seed"] = seed
    res["binarized"] = (
        "dynamic (test set binarized once, seed 0)" if cfg.resolve_binarize() else "no (grey values)"
    )
    res["checkpoint"] = which
    write_json(run_dir / "eval.json", res)
    print(
        f"test ELBO {res['elbo']:.2f} nats/image over {res['n_images']} images; "
        f"importance-sampled log p(x) {res['log_likelihood']:.2f} nats/image (K={k}, first {res['n_ll_images']} images, "
        f"whose ELBO is {res['elbo_ll_images']:.2f}); "
        f"active units {res['active_units']}/{run.model.z_dim}; binarized: {res['binarized']}"
    )
    if figures:
        _sample(run, run_dir / "samples.png", 64, None, 0)
        _reconstruct(run, run_dir / "reconstructions.png", 32)
        print(f"figures: {run_dir / 'samples.png'}, {run_dir / 'reconstructions.png'}")
    return res


def _sample(run, path: Path, n: int, label, seed: int) -> None:
    import pyro
    import torch

    from .plots import image_grid
    from .posterior import sample_prior

    pyro.set_rng_seed(seed)
    vae = run.model
    if vae.num_classes:
        if label is None:
            per = max(1, n // vae.num_classes)
            y = torch.arange(vae.num_classes, device=run.device).repeat_interleave(per)
            title, nrow = "Samples, one row per class", per
        else:
            if not 0 <= label < vae.num_classes:
                raise ConfigError(f"--label {label} is not a class of this run (0..{vae.num_classes - 1})")
            y, title, nrow = torch.full((n,), label, device=run.device), f"Samples of class {label}", 8
        images = sample_prior(vae, len(y), y)
    else:
        if label is not None:
            raise ConfigError("--label needs a conditional run (trained with --conditional)")
        images, title, nrow = sample_prior(vae, n), "Samples from the model (mean of p(x|z), z ~ p(z))", 8
    image_grid(images, path, title, nrow=nrow)


def _reconstruct(run, path: Path, n: int) -> None:
    import torch

    from .plots import image_grid
    from .posterior import reconstruct

    test = run.data.test.subset(slice(0, n)).to(run.device)
    y = test.y if run.model.num_classes else None
    rec = reconstruct(run.model, test.x, y)
    pairs = torch.stack([test.x, rec], 1).flatten(0, 1)  # alternate data, reconstruction
    image_grid(pairs, path, "Test images (odd columns) and reconstructions (even)", nrow=16)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovae`` console script."""
    from .train import Interrupted, TrainingError

    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            _evaluate_run(
                args.run, args.k, args.n_test, args.checkpoint, args.device, args.data_dir, seed=args.seed
            )
            return 0
        from .runs import load_run

        run = load_run(args.run, "best", args.device, args.data_dir)
        if args.command == "sample":
            _sample(run, args.output, args.n, args.label, args.seed)
        elif args.command == "reconstruct":
            _reconstruct(run, args.output, args.n)
        elif args.command == "inspect":
            from .inspect_run import inspect_run

            index = inspect_run(run, k=args.k, n=args.n)
            print(f"figures and {index} written")
            return 0
        print(f"wrote {args.output}")
        return 0
    except USER_ERRORS + (TrainingError,) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
