"""Structured-output CVAE on MNIST quadrants (Sohn et al. 2015; the task of Pyro's CVAE tutorial).

    python experiments/cvae_quadrants.py --epochs 10
    python experiments/cvae_quadrants.py --protocol pyro --epochs 50

For 1, 2 and 3 given quadrants, trains the deterministic baseline and then a CVAE whose prior
network sees the given pixels filled in by the baseline's guess, and writes ``cvae_quadrants.md``
(the 3 × 2 table next to Pyro's published figures) and one figure of completions per setting to
``experiments/results/``.

Figures are nats per test image over the hidden pixels only, on MNIST binarized once (seed 0):
the baseline's negative log-likelihood (masked binary cross-entropy), and for the CVAE both the
tutorial's number (−ELBO of log p(x_hidden | x_given), guide q(z | x, c), 10 particles) and an
importance-sampled −log p(x_hidden | x_given) with K samples from the same guide. The baseline
and CVAE train on dynamically binarized images; Pyro's tutorial trains and scores grey values,
whose Bernoulli cross-entropy equals the expected score on binarized images for the baseline.

Both networks are one run of the structured variant (``pyrovae train --model structured
--quadrants N``: :class:`pyrovae.variants.structured.StructuredCVAE`), trained by the run layer,
:func:`pyrovae.fit.fit` (checkpoints and ``metrics.csv`` of the CVAE under
``runs/cvae_quadrants/<protocol>_q<n>``): first the baseline alone, as a VAE without latent
dimensions whose ELBO is its masked log-likelihood, then the CVAE with the baseline frozen. Each
keeps the epoch with its best validation ELBO (one z per image, analytic KL for the CVAE) and
stops early after ``--patience`` epochs without a better one.

``--protocol pyro`` follows the tutorial's protocol instead (``pyro-ppl/pyro``,
``examples/cvae``): grey targets scored with the Bernoulli cross-entropy, all 60,000 training
images, early stopping with patience 3 (the tutorial trained for at most 50 epochs), and Pyro's
wiring of the networks (recognition network on the image alone, generation network on ``z``
alone, ``exp`` scales, PyTorch's default initialization). Pyro selects on the test set; here a
fixed random half of the test images selects and the other half is reported. Each protocol
writes its own section of ``cvae_quadrants.md``, leaving the other's in place.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import time
from pathlib import Path

import pyro
import torch
from torch import nn

from pyrovae.build import build_model, resolve_device
from pyrovae.config import Config
from pyrovae.data import Dataset, Split, binarize, load_dataset
from pyrovae.evaluate import log_likelihood
from pyrovae.fit import fit
from pyrovae.guides import DiagonalNormal
from pyrovae.likelihoods import Bernoulli, Masked
from pyrovae.loaded import EVAL_BINARIZE_SEED
from pyrovae.models import VAE
from pyrovae.nets import MLPDecoder, MLPEncoder
from pyrovae.objectives import make_elbo
from pyrovae.priors import ConditionalNormal
from pyrovae.structured import BaselineNet, quadrant_mask
from pyrovae.variants.structured import StructuredCVAE, completion_grid

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, run_script

#: Pyro's CVAE tutorial, negative conditional log-likelihood for 1 / 2 / 3 given quadrants.
PYRO_PUBLISHED = {"baseline": (100.4, 61.9, 25.4), "cvae": (71.8, 51.0, 24.2)}

#: Training protocols, in the order of their sections in the results file.
PROTOCOLS = ("default", "pyro")
#: Under ``--protocol pyro``: this many test images, drawn at random with TEST_SPLIT_SEED,
#: select; the others are reported. Random, not the first 5,000: MNIST's first 5,000 test digits
#: are cleaner and easier than its last 5,000 (LeCun et al.'s notes on the data set).
PYRO_VAL_SIZE = 5000
TEST_SPLIT_SEED = 0
TITLE = "# Structured-output CVAE: MNIST quadrant completion\n"


class _Unconditioned(nn.Module):
    """A network of the VAE that ignores the condition ``c``, as in Pyro's tutorial: its
    recognition network sees the image alone, its generation network ``z`` alone."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = getattr(net, "feature_dim", None)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


def pyro_cvae(x_shape, given: torch.Tensor, z_dim: int, hidden) -> VAE:
    """The tutorial's CVAE: prior network p(z | c) on the given pixels completed by the baseline's
    guess, recognition network q(z | x) on the whole image, generation network p(x | z) on ``z``
    alone; ``exp`` scales and PyTorch's default initialization throughout."""
    prior = ConditionalNormal(z_dim, math.prod(x_shape), hidden, "relu")
    for layer in (prior.loc, prior.log_scale):  # ours start at N(0, I); Pyro's are left at default
        layer.reset_parameters()
    return VAE(
        x_shape,
        z_dim,
        prior=prior,
        guide=DiagonalNormal(_Unconditioned(MLPEncoder(x_shape, hidden, "relu")), z_dim, scale="exp"),
        decoder=_Unconditioned(MLPDecoder(x_shape, z_dim, hidden, "relu")),
        likelihood=Masked(Bernoulli(x_shape), ~given.bool()),
        condition_shape=x_shape,
    )


def _options(args, n_given: int) -> Config:
    """The run's options: model structured, binarized dynamically (or grey under Pyro's protocol);
    early stopping on the CVAE's validation ELBO; the best epoch's parameters kept."""
    return Config(
        model="structured", quadrants=n_given, baseline_epochs=args.epochs, z_dim=args.z_dim, hidden=list(args.hidden), activation="relu",
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience, seed=args.seed,
        elbo="trace", binarize="none" if args.protocol == "pyro" else "dynamic", device=args.device,
        init_bias=args.protocol != "pyro",
    ).validate()  # fmt: skip


def _model(cfg: Config, data: Dataset, args) -> StructuredCVAE:
    """The variant's model; under Pyro's protocol with Pyro's wiring of the CVAE and PyTorch's
    default initialization, else as ``pyrovae train --model structured`` builds it."""
    x_shape = data.x_shape
    if args.protocol == "pyro":
        given = quadrant_mask(cfg.quadrants, *x_shape[-2:])
        cvae = pyro_cvae(x_shape, given, cfg.z_dim, cfg.hidden)
        return StructuredCVAE(x_shape, given, cvae=cvae, baseline=BaselineNet(x_shape, cfg.hidden))
    model = build_model(cfg, x_shape)
    model.init_output_bias(data.train.x.mean(0))
    return model


def run_setting(n_given: int, data: Dataset, args) -> dict:
    """Train the baseline and the CVAE of ``n_given`` quadrants (one run of the structured
    variant); score them on ``data.test``."""
    device = resolve_device(args.device)  # where fit trains: the scored images go there too
    test_x = data.test.x.to(device)
    cfg = _options(args, n_given)
    out = args.runs_dir / "cvae_quadrants" / f"{args.protocol}_q{n_given}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # a rerun of the setting replaces its run
    model = fit(_model(cfg, data, args), data, out, cfg, overwrite=True, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    epochs = len((out / "metrics.csv").read_text().splitlines()) - 1

    def cvae_nll(elbo):
        """−ELBO per image of the CVAE under ``elbo``, for :func:`_batched_mean`."""
        return lambda x: _neg_elbo(elbo, model, x)

    test_elbo = make_elbo("trace", args.particles)
    with torch.no_grad():
        b_test = torch.cat([-model.baseline_log_prob(test_x[i:j]) for i, j in _chunks(len(test_x), 500)])
    res = {
        "n_given": n_given,
        "protocol": args.protocol,
        "baseline": b_test.mean().item(),
        "baseline_se": (b_test.std() / math.sqrt(len(b_test))).item(),
        "cvae_elbo": _batched_mean(cvae_nll(test_elbo), test_x),
    }
    if args.protocol != "pyro":
        res["cvae_elbo_subset"] = _batched_mean(cvae_nll(test_elbo), test_x[: args.n_test])
        res["cvae_is"] = (
            -torch.cat([log_likelihood(model, test_x[i:j], k=args.k) for i, j in _chunks(args.n_test, 100)])
            .mean()
            .item()
        )
    res |= {"seconds": seconds, "epochs": str(epochs)}
    args.results_dir.mkdir(
        parents=True, exist_ok=True
    )  # once a run has trained: a refused option writes nothing
    completion_grid(model, test_x[:10], args.results_dir / _figure_name(args.protocol, n_given))
    return res


def _neg_elbo(elbo, model, x) -> torch.Tensor:
    """−ELBO per datum (the batch's sum divided by its size), repeated for each datum."""
    loss = elbo.loss(model.model, model.guide, x)
    return torch.full((len(x),), loss / len(x), device=x.device)


def _chunks(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def _batched_mean(fn, x: torch.Tensor, batch: int = 500) -> float:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)]).mean().item()


def _figure_name(protocol: str, n_given: int) -> str:
    return f"cvae_quadrants{'_pyro' if protocol == 'pyro' else ''}_q{n_given}.png"


def write_section(path: Path, protocol: str, body: str) -> None:
    """Put ``body`` into ``path`` as the section of ``protocol``, keeping the other protocols'
    sections as they are (sections are delimited by HTML comments and ordered as PROTOCOLS)."""
    sections = {}
    if path.exists():
        pattern = r"<!-- protocol: (\w+) -->\n(.*?)<!-- /protocol: \1 -->\n"
        sections = {m[1]: m[2] for m in re.finditer(pattern, path.read_text(), re.S)}
    sections[protocol] = body
    path.write_text(
        TITLE
        + "".join(
            f"\n<!-- protocol: {p} -->\n{sections[p]}<!-- /protocol: {p} -->\n"
            for p in PROTOCOLS
            if p in sections
        )
    )


def splits(data: Dataset, args) -> Dataset:
    """Training, validation (selection) and reported images of ``args.protocol``."""
    if args.protocol == "pyro":  # grey; all 60,000 training images; the test set split in two
        train_x = torch.cat([data.train.x, data.val.x])
        perm = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
        val_x, test_x = data.test.x[perm[:PYRO_VAL_SIZE]], data.test.x[perm[PYRO_VAL_SIZE:]]
    else:  # binarized once (seed 0) for scoring, dynamically for training
        train_x = data.train.x
        val_x = binarize(data.val.x[:2000], torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
        test_x = binarize(data.test.x, torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
    train_x = train_x[: args.train_size] if args.train_size else train_x
    return Dataset(Split(train_x), Split(val_x), Split(test_x), name=data.name)


def main(args: argparse.Namespace) -> list[dict]:
    pyro.set_rng_seed(args.seed)
    data = splits(load_dataset("mnist", args.data_dir), args)
    rows = []
    # Grey targets are outside the Bernoulli's support: Pyro's tutorial scores them anyway.
    grey = pyro.validation_enabled(False) if args.protocol == "pyro" else contextlib.nullcontext()
    with grey:
        for n_given in args.quadrants:
            pyro.clear_param_store()
            rows.append(run_setting(n_given, data, args))
            print({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()})
    body = (_pyro_section if args.protocol == "pyro" else _default_section)(rows, args, len(data.train))
    write_section(args.results_dir / "cvae_quadrants.md", args.protocol, body)
    return rows


def _published(r: dict) -> tuple[float, float]:
    i = r["n_given"] - 1
    return PYRO_PUBLISHED["baseline"][i], PYRO_PUBLISHED["cvae"][i]


def _compared(r: dict) -> list:
    """The columns both protocols share: ours beside Pyro's published figures, and both gaps."""
    pb, pc = _published(r)
    gap = r["baseline"] - r["cvae_elbo"]
    return [f"{r['n_given']} given", r["baseline"], pb, r["cvae_elbo"], pc, gap, pb - pc]


def _compared_header(args) -> list[str]:
    return ["quadrants", "baseline NLL", "baseline (Pyro)", f"CVAE −ELBO ({args.particles} particles)",
            "CVAE (Pyro)", "gap", "gap (Pyro)"]  # fmt: skip


def _default_section(rows: list[dict], args, n_train: int) -> str:
    table = [_compared(r) + [r["cvae_elbo_subset"], r["cvae_is"], r["epochs"]] for r in rows]
    header = [
        *_compared_header(args),
        f"CVAE −ELBO, first {args.n_test}",
        f"CVAE −log p (IS, K={args.k}), first {args.n_test}",
        "epochs (CVAE)",
    ]
    figures = ", ".join(f"`{_figure_name('default', r['n_given'])}`" for r in rows)
    return f"""## Our protocol: binarized targets

Command: `{command_line()}`

Budget: at most {args.epochs} epochs each for the baseline and then the CVAE, one run of
`--model structured` trained by `pyrovae.fit` (early stopping, patience {args.patience}, on each
one's validation ELBO over 2,000 held-out training images binarized once; the baseline's is its
log-likelihood; both minimize the batch's summed loss), batch {args.batch_size}, Adam {args.lr:g},
{n_train} training images, dynamically binarized. Networks as in Pyro's
tutorial: baseline MLP 784-{"-".join(map(str, args.hidden))}-784 (ReLU); CVAE with z_dim={args.z_dim},
prior, recognition and generation networks of hidden sizes {args.hidden}; the prior network sees the
given pixels with the hidden ones filled by the baseline's guess (unlike Pyro's, our recognition and
generation networks see that condition too).

Numbers are nats per test image, summed over the **hidden pixels only**, on the 10,000 MNIST test
images binarized once (seed 0): baseline negative log-likelihood and CVAE −ELBO with
{args.particles} particles (the figure Pyro's tutorial reports) on all of them; then, on the first
{args.n_test} images, the same −ELBO beside the importance-sampled −log p(x_hidden | x_given)
(K={args.k}, proposal q(z | x, c)), an upper bound that is tighter than the −ELBO. Lower is better.
Pyro's columns are the published figures of its tutorial (grey-valued targets, at most 50 epochs
with early stopping on the test set: see Pyro's protocol below); "gap" is baseline − CVAE −ELBO.

{markdown_table(header, table)}

Figures: {figures} (input with hidden
pixels grey, truth, baseline mean, three CVAE samples with z drawn from the prior network).
"""


def _pyro_section(rows: list[dict], args, n_train: int) -> str:
    table = [_compared(r) + [r["baseline_se"], r["epochs"], f"{r['seconds'] / 60:.0f}"] for r in rows]
    header = [
        *_compared_header(args),
        "s.e. of baseline NLL",
        "epochs (CVAE)",
        "minutes",
    ]
    n_val, n_test = PYRO_VAL_SIZE, 10000 - PYRO_VAL_SIZE
    figures = ", ".join(f"`{_figure_name('pyro', r['n_given'])}`" for r in rows)
    capped = ""
    if any(r["epochs"] == str(args.epochs) for r in rows):
        capped = f"A run whose epochs read {args.epochs} stopped at the budget, not by early stopping.\n\n"
    return f"""## Pyro's protocol: grey targets, all training images

Command: `{command_line()}`

The protocol of Pyro's tutorial (`examples/cvae` in pyro-ppl/pyro): **grey-valued targets** scored
with the Bernoulli cross-entropy (not a normalized likelihood on [0, 1]: it includes the targets' own
entropy, so these numbers are not comparable with the binarized ones above), {n_train} training
images, at most {args.epochs} epochs each for the baseline and then the CVAE, one run of
`--model structured` trained by `pyrovae.fit` with early stopping (patience {args.patience}) on
each one's validation ELBO (one z per image, analytic KL), batch {args.batch_size},
Adam {args.lr:g}, and Pyro's networks: baseline MLP 784-{"-".join(map(str, args.hidden))}-784 (ReLU,
sigmoid output); CVAE with z_dim={args.z_dim}, three MLPs of hidden sizes {args.hidden}: the prior
network on the given pixels completed by the baseline's guess, the recognition network on the whole
image alone, the generation network on z alone; scales through `exp`; PyTorch's default
initialization (no output bias set from the mean image). Numbers are nats per image over the hidden
pixels: baseline cross-entropy and CVAE −ELBO with {args.particles} particles, as Pyro reports.

**Selection.** Pyro early-stops (keeping the best epoch) on the 10,000 MNIST test images and
then reports on the same images, so its figures are selected on the test set. Here {n_val:,}
test images drawn at random (seed {TEST_SPLIT_SEED}) select and the other {n_test:,} are reported
(random rather than the first {n_val:,}: MNIST's two halves come from different NIST sets, its
notes call the first cleaner and easier, and they do not score alike); the s.e. column is the
standard error of the baseline's mean over the reported images.

Remaining differences from Pyro's figures:

- Pyro reports on 10,000 images (the selection set), these on a disjoint {n_test:,}.
- Pyro averages per-batch means over batches of 32 (the last batch, of 16 images, weighs as much
  as the others); here every image weighs the same.
- Pyro's networks output probabilities: its CVAE's `Bernoulli(probs)` clamps them to
  [ε, 1 − ε] (ε = float32 machine epsilon, so at most 15.9 nats per pixel) and its baseline's
  `binary_cross_entropy` caps each log at −100; here logits are scored unclamped.
- Budget: the tutorial says it trained for at most 50 epochs with patience 3 (the example script's
  default is 101 epochs).
- One run per setting, seed {args.seed}; Pyro publishes one run without a seed. Pyro selects on
  its single-particle Trace_ELBO loss; here the validation ELBO uses the analytic KL (the same
  quantity, estimated with less noise).
- The −ELBO uses Pyro's `Trace_ELBO` in both (Monte Carlo KL); here its {args.particles} particles
  are vectorized, Pyro loops over them: the same estimator.

{markdown_table(header, table)}

{capped}Figures: {figures}
(input with hidden pixels grey, truth, baseline mean, three CVAE samples with z drawn from the prior
network), on reported test images.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=10, k=100)
    p.set_defaults(k=None, n_test=None)  # unset, to tell a given one that --protocol pyro would ignore
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="default",
        help="default: binarized targets, 50,000 training images, selection on 2,000 held-out "
        "training images; pyro: the tutorial's grey targets, 60,000 training images, Pyro's "
        f"network wiring, selection on {PYRO_VAL_SIZE} random test images (default: default)",
    )
    p.add_argument(
        "--quadrants", type=int, nargs="+", default=[1, 2, 3], help="given quadrants (default: 1 2 3)"
    )
    p.add_argument("--z-dim", type=int, default=200, help="latent dimensions (default: 200, as Pyro)")
    p.add_argument(
        "--hidden", type=int, nargs="+", default=[500, 500], help="hidden sizes (default: 500 500)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs (default: 3)")
    p.add_argument("--particles", type=int, default=10, help="particles of the reported −ELBO (default: 10)")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)"
    )
    args = p.parse_args(argv)
    if args.protocol == "pyro" and (args.k, args.n_test) != (None, None):
        p.error("--k and --n-test size the default protocol's importance-sampled log p, which --protocol pyro "
                "does not report: leave them out")  # fmt: skip
    args.k = 100 if args.k is None else args.k
    args.n_test = 1000 if args.n_test is None else args.n_test
    return args


if __name__ == "__main__":
    run_script(main, parse_args)
