"""Test-set -log p(x) of Burda et al.'s models at one stated budget, beside their published figures.

Every row trains on dynamically binarized MNIST with the same data, optimizer (Adam, lr 1e-3,
constant or ``--lr-schedule cosine``; batches of ``--batch-size``, 20 as in the paper by default)
and number of epochs, Burda et al.'s networks (``--preset iwae``: tanh layers of
200, z 50; two-layer rows: ``--model hierarchical``, 200-200-z1 100-100-100-z2 50), and differs
only in the objective, the number of layers, the prior or the guide. Each is scored by the
importance-sampled -log p(x) with ``--k`` samples over the first ``--n-test`` test images (K = 5000
over all 10,000 in the papers); the published figures come from thousands of epochs.
``--warmup-epochs W`` trains every row with a linear KL warm-up (β from 0 to 1 over W epochs, as
Sønderby et al. 2016 advise for models of several stochastic layers; in the IWAE rows β scales
log p(z) - log q(z|x) in each importance weight); the table says so.

    python benchmarks/nll.py --epochs 10 --k 5000 --n-test 10000 --out runs/nll

Rows are printed as they finish, then the table, in nats per image (lower is better), with each
row's training CPU time (the process's, all threads; on a GPU it counts the host's work only).

A row at a long budget takes CPU-hours, so rows can run in separate processes (``--only``) and
sessions into one ``--out``: each row keeps its result in its folder (``nll-row.json``), ``nll.json``
and the table hold every row found there at the asked budget, and ``--resume`` keeps the finished
rows, continues an interrupted row from its last checkpoint (its CPU time adds up over the
processes: a process stopped by SIGINT or SIGTERM checkpoints and counts its unfinished epoch, one
killed outright loses both) and trains the rest. A row's result is dropped as soon as its run trains
further, so a result always belongs to the parameters it was measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro

from pyrovae import Config, ConfigError, Split, evaluate, train
from pyrovae.fit import Interrupted
from pyrovae.loaded import load_data, write_json
from pyrovae.machine import describe

#: (row, options on top of the iwae preset, published -log p(x) or None)
ROWS = [
    ("VAE, 1 layer", {}, 86.76),
    ("IWAE k=5, 1 layer", {"elbo": "iwae", "num_particles": 5}, 85.54),
    ("IWAE k=50, 1 layer", {"elbo": "iwae", "num_particles": 50}, 84.78),
    ("VAE, 2 layers", {"model": "hierarchical"}, 85.33),
    ("IWAE k=5, 2 layers", {"model": "hierarchical", "elbo": "iwae", "num_particles": 5}, 83.89),
    ("IWAE k=50, 2 layers", {"model": "hierarchical", "elbo": "iwae", "num_particles": 50}, 82.90),
    ("VampPrior, 1 layer", {"prior": "vamp"}, 85.57),
    ("IAF guide, 1 layer", {"guide": "iaf"}, None),
]
SOURCES = "published: Burda et al. 2016 (VAE/IWAE rows), Tomczak & Welling 2018 (VampPrior)"


def run_dir(row: str) -> str:
    """The folder of a row's run: ``"IWAE k=5, 2 layers"`` -> ``"iwae-k5-2-layers"``."""
    return row.lower().replace("=", "").replace(",", "").replace(" ", "-")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--epochs", type=int, default=10, help="training epochs of every row (default: 10)")
    p.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    p.add_argument(
        "--batch-size", type=int, default=20, help="training batch size (default: 20, as Burda et al.)"
    )
    p.add_argument(
        "--lr-schedule",
        default="none",
        choices=["none", "cosine"],
        help="learning-rate schedule (default: none)",
    )
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image (default: 5000)")
    p.add_argument("--n-test", type=int, default=10000, help="test images scored (default: 10000)")
    p.add_argument("--pseudo-inputs", type=int, default=500, help="VampPrior pseudo-inputs (default: 500)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear KL warm-up (β from 0 to 1) over this many epochs for every row (default: none)")  # fmt: skip
    p.add_argument("--only", default=None, help="run only rows whose name contains this text")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/ (default: $PYROVAE_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of --out finished at this budget, continue interrupted ones (default: start over)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/nll"), help="folder of the runs (default: runs/nll)"
    )
    return p.parse_args(argv)


def _row_budget(budget: dict, options: dict, pseudo_inputs: int) -> dict:
    """What makes a row comparable: the table's budget, and a VampPrior's number of pseudo-inputs."""
    return {**budget, "pseudo_inputs": pseudo_inputs} if options.get("prior") == "vamp" else budget


def _saved_row(folder: Path, budget: dict) -> dict | None:
    """The row's result in ``folder`` when it was measured at ``budget``."""
    path = folder / "nll-row.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    return row if all(row.get(key) == value for key, value in budget.items()) else None


def _train_row(cfg: Config, folder: Path, resume: bool, data) -> tuple:
    """Train a row (continuing its checkpoint with ``resume``); its model and training CPU seconds,
    summed over every process that trained it."""
    cpu_file, result = folder / "cpu.json", folder / "nll-row.json"
    resume = resume and (folder / "checkpoint.pt").exists()
    if not resume:
        result.unlink(missing_ok=True)  # the run is about to be replaced
    before = json.loads(cpu_file.read_text())["cpu_seconds"] if resume and cpu_file.exists() else 0.0
    c0 = time.process_time()

    def count(metrics: dict) -> None:  # after each epoch's checkpoint, so a resumed run starts from its count
        result.unlink(missing_ok=True)  # the run changed: its old result no longer holds
        write_json(cpu_file, {"epoch": metrics["epoch"], "cpu_seconds": before + time.process_time() - c0})

    try:
        run = train(cfg, folder, resume=resume, overwrite=not resume, progress=False, evaluate=False,
                    data=data, on_epoch=count)  # fmt: skip
    except Interrupted:  # a signal: the checkpoint holds the unfinished epoch's steps, so count them too
        count({"epoch": "interrupted"})
        raise
    if not cpu_file.exists():  # trained elsewhere, without this script: its CPU time is unknown
        return run.model, float("nan")
    return run.model, json.loads(cpu_file.read_text())["cpu_seconds"]


def main(args: argparse.Namespace) -> list[dict]:
    rows = [r for r in ROWS if args.only is None or args.only in r[0]]
    if not rows:
        raise SystemExit(f"error: no row's name contains {args.only!r}")
    base = dict(epochs=args.epochs, train_size=args.train_size, eval_k=args.k, eval_n_test=args.n_test,
                batch_size=args.batch_size, lr_schedule=args.lr_schedule,
                pseudo_inputs=args.pseudo_inputs, device=args.device, data_dir=args.data_dir)  # fmt: skip
    if args.warmup_epochs is not None:
        base.update(beta_schedule="linear", warmup_epochs=args.warmup_epochs)
    data = load_data(Config.from_preset("iwae", **base))  # the same data for every row
    test = data.test
    n_test = min(args.n_test, len(test))
    budget = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr_schedule": args.lr_schedule,
        "train_images": len(data.train),
        "k": args.k,
        "n_test": n_test,
        "warmup_epochs": args.warmup_epochs,
    }  # rows measured before the option have none: None, too
    for name, options, published in rows:
        folder = args.out / run_dir(name)
        if args.resume and _saved_row(folder, _row_budget(budget, options, args.pseudo_inputs)) is not None:
            print(f"{name}: kept from {folder / 'nll-row.json'}", flush=True)
            continue
        cfg = Config.from_preset("iwae", **base, **options)
        t0 = time.perf_counter()
        model, train_cpu = _train_row(cfg, folder, args.resume, data)
        pyro.set_rng_seed(0)  # the ELBO and log p(x) over the same first n_test test images
        res = evaluate(model, Split(test.x[:n_test], None), k=args.k, ll_batch_size=20)
        row = {"row": name, "nll": -res["log_likelihood"], "neg_elbo": -res["elbo"],
               "published": published, "seconds": time.perf_counter() - t0,
               "train_cpu_minutes": train_cpu / 60, "active_units": res["active_units"], "z_dim": res["z_dim"],
               "layers": {site: f"{lay['active_units']}/{lay['z_dim']}" for site, lay in res.get("layers", {}).items()},
               **_row_budget(budget, options, args.pseudo_inputs)}  # fmt: skip
        assert (res["k"], res["n_ll_images"]) == (args.k, n_test)
        write_json(folder / "nll-row.json", row)
        print(f"{name}: -log p(x) {row['nll']:.2f}, -ELBO {row['neg_elbo']:.2f} nats/image", flush=True)
    # every row of --out at this budget, whichever process or session measured it
    results = [row for name, options, _ in ROWS
               if (row := _saved_row(args.out / run_dir(name), _row_budget(budget, options, args.pseudo_inputs)))]  # fmt: skip
    vamp = (
        f", VampPrior of {args.pseudo_inputs} pseudo-inputs"
        if any("pseudo_inputs" in r for r in results)
        else ""
    )
    warmup = (
        f", linear KL warm-up over {args.warmup_epochs:g} epoch{'s' if args.warmup_epochs != 1 else ''}"
        if args.warmup_epochs is not None
        else ""
    )
    which = f"all {n_test}" if n_test == len(test) else f"first {n_test}"
    print(f"\n-log p(x) (importance-sampled, K={args.k}, {which} test images; MNIST dynamically "
          f"binarized), every row {args.epochs} epoch{'s' if args.epochs != 1 else ''} on {len(data.train)} "
          f"images, Adam lr 1e-3 ({'cosine schedule' if args.lr_schedule == 'cosine' else 'constant'}), "
          f"batches of {args.batch_size}{vamp}{warmup}; {SOURCES}")  # fmt: skip
    print(f"measured on: {describe(test.x.device)}")
    print(
        "| model | -log p(x) | -ELBO | published | active units | training CPU-min | wall s, last process |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        pub = f"{r['published']:.2f}" if r["published"] is not None else "-"
        layers = ", ".join(f"{site} {units}" for site, units in r.get("layers", {}).items())
        units = f"{r['active_units']}/{r['z_dim']}" + (f" ({layers})" if layers else "")
        print(f"| {r['row']} | {r['nll']:.2f} | {r['neg_elbo']:.2f} | {pub} | {units} "
              f"| {r['train_cpu_minutes']:.1f} | {r['seconds']:.0f} |")  # fmt: skip
    missing = [name for name, _, _ in ROWS if not any(r["row"] == name for r in results)]
    if missing:
        print(f"not yet measured at this budget in {args.out}: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "nll.json", results)
    return results


if __name__ == "__main__":
    try:
        main(parse_args())
    except ConfigError as e:  # e.g. --resume with options its saved run contradicts
        raise SystemExit(f"error: {e}") from None
    except Interrupted as e:
        print(f"interrupted: {e} (continue with the same command and --resume)", file=sys.stderr)
        raise SystemExit(130) from None
