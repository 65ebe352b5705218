"""Structured-output CVAE on MNIST quadrants (Sohn et al. 2015; the task of Pyro's CVAE tutorial).

    python experiments/cvae_quadrants.py --epochs 10

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
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyrovae.data import binarize, load_dataset
from pyrovae.evaluate import log_likelihood
from pyrovae.objectives import ELBOLoss, make_elbo
from pyrovae.posterior import sample_prior
from pyrovae.runs import EVAL_BINARIZE_SEED
from pyrovae.step import make_optimizer, svi_step
from pyrovae.structured import BaselineNet, condition, hide, quadrant_mask, structured_cvae

try:
    from _common import budget_options, command_line, markdown_table
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table

#: Pyro's CVAE tutorial, negative conditional log-likelihood for 1 / 2 / 3 given quadrants.
PYRO_PUBLISHED = {"baseline": (100.4, 61.9, 25.4), "cvae": (71.8, 51.0, 24.2)}


def _progress(it, desc: str, quiet: bool):
    if quiet:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def _fit(step, evaluate, params, train_x, args, desc: str) -> int:
    """Minimize ``step(x)`` over dynamically binarized batches, keeping the parameters with the
    best validation score (early stopping with ``args.patience``); returns the epochs run."""
    gen = torch.Generator().manual_seed(args.seed)
    best, best_state, bad = float("inf"), None, 0
    for epoch in range(args.epochs):
        xb = binarize(train_x, gen)
        bar = _progress(
            torch.randperm(len(xb), generator=gen).split(args.batch_size), f"{desc} {epoch}", args.quiet
        )
        for idx in bar:
            loss = step(xb[idx])
            if not args.quiet:
                bar.set_postfix(loss=f"{loss:.2f}")
        score = evaluate()
        if score < best:
            best, best_state, bad = score, [p.detach().clone() for p in params], 0
        else:
            bad += 1
            if bad >= args.patience:
                break
    with torch.no_grad():
        for p, b in zip(params, best_state, strict=True):
            p.copy_(b)
    return epoch + 1


def run_setting(n_given: int, data, test_x, args) -> dict:
    given = quadrant_mask(n_given)
    train_x = data.train.x[: args.train_size] if args.train_size else data.train.x
    val_x = binarize(data.val.x[:2000], torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
    mean_image = train_x.mean(0)

    baseline = BaselineNet(data.x_shape, args.hidden)
    vae = structured_cvae(data.x_shape, given, args.z_dim, args.hidden)
    with torch.no_grad():
        baseline.out.bias.copy_(vae.likelihood.bias_from_mean(mean_image).reshape(-1))
    lik = vae.likelihood  # masked Bernoulli: the baseline is scored exactly like the CVAE

    def baseline_nll(x):
        return -lik(baseline(hide(x, given))).log_prob(x)  # (batch,)

    b_params = list(baseline.parameters())
    b_opt = make_optimizer(b_params, args.lr)

    def b_step(x):
        loss = baseline_nll(x).mean()
        b_opt.zero_grad(set_to_none=True)
        loss.backward()
        b_opt.step()
        return loss.item()

    t0 = time.perf_counter()
    b_epochs = _fit(
        b_step, lambda: _batched_mean(baseline_nll, val_x), b_params, train_x, args, f"baseline q{n_given}"
    )
    baseline.requires_grad_(False)
    t_base = time.perf_counter() - t0

    vae.init_output_bias(mean_image)
    elbo = make_elbo("trace")
    loss_fn = ELBOLoss(vae, elbo)
    c_params = list(vae.parameters())
    c_opt = make_optimizer(c_params, args.lr)

    def c_step(x):
        loss, _ = svi_step(loss_fn, c_opt, c_params, x, condition(baseline, x, given))
        return loss / len(x)

    def cvae_nll(elbo):
        """−ELBO per image of the CVAE under ``elbo``, for :func:`_batched_mean`."""
        return lambda x: _neg_elbo(elbo, vae, x, condition(baseline, x, given))

    t0 = time.perf_counter()
    c_epochs = _fit(
        c_step, lambda: _batched_mean(cvae_nll(elbo), val_x), c_params, train_x, args, f"CVAE q{n_given}"
    )
    t_cvae = time.perf_counter() - t0

    c_test = condition(baseline, test_x, given)
    test_elbo = make_elbo("trace", args.particles)
    res = {
        "n_given": n_given,
        "baseline": _batched_mean(baseline_nll, test_x),
        "cvae_elbo": _batched_mean(cvae_nll(test_elbo), test_x),
        "cvae_elbo_subset": _batched_mean(cvae_nll(test_elbo), test_x[: args.n_test]),
        "cvae_is": -torch.cat(
            [log_likelihood(vae, test_x[i:j], c_test[i:j], args.k) for i, j in _chunks(args.n_test, 100)]
        )
        .mean()
        .item(),
        "seconds": t_base + t_cvae,
        "epochs": f"{b_epochs}/{c_epochs}",
    }
    _figure(n_given, vae, baseline, given, test_x[:10], args)
    return res


def _neg_elbo(elbo, vae, x, c) -> torch.Tensor:
    """−ELBO per datum (the batch's sum divided by its size), repeated for each datum."""
    loss = elbo.loss(vae.model, vae.guide, x, c)
    return torch.full((len(x),), loss / len(x))


def _chunks(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def _batched_mean(fn, x: torch.Tensor, batch: int = 500) -> float:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)]).mean().item()


@torch.no_grad()
def _figure(n_given: int, vae, baseline, given, x, args) -> None:
    from pyrovae import plots

    c = condition(baseline, x, given)
    shown_input = torch.where(given, x, torch.full_like(x, 0.5))  # hidden pixels grey
    guess = torch.where(given, x, torch.sigmoid(baseline(hide(x, given))))
    samples = [torch.where(given, x, sample_prior(vae, len(x), y=c)) for _ in range(3)]
    rows = torch.cat([shown_input, x, guess, *samples])
    plots.image_grid(
        rows,
        args.results_dir / f"cvae_quadrants_q{n_given}.png",
        f"{n_given} given quadrant{'s' if n_given > 1 else ''}: completions of test digits",
        nrow=len(x),
        ylabel="CVAE samples ×3 | baseline | truth | input",
    )


def main(args: argparse.Namespace) -> list[dict]:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    data = load_dataset("mnist", args.data_dir)
    test_x = binarize(data.test.x, torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
    rows = []
    for n_given in args.quadrants:
        pyro.clear_param_store()
        rows.append(run_setting(n_given, data, test_x, args))
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()})
    table = []
    for r in rows:
        i = r["n_given"] - 1
        table.append([
            f"{r['n_given']} given",
            r["baseline"], PYRO_PUBLISHED["baseline"][i],
            r["cvae_elbo"], PYRO_PUBLISHED["cvae"][i],
            r["baseline"] - r["cvae_elbo"], PYRO_PUBLISHED["baseline"][i] - PYRO_PUBLISHED["cvae"][i],
            r["cvae_elbo_subset"], r["cvae_is"], r["epochs"],
        ])  # fmt: skip
    header = [
        "quadrants",
        "baseline NLL",
        "baseline (Pyro)",
        f"CVAE −ELBO ({args.particles} particles)",
        "CVAE (Pyro)",
        "gap",
        "gap (Pyro)",
        f"CVAE −ELBO, first {args.n_test}",
        f"CVAE −log p (IS, K={args.k}), first {args.n_test}",
        "epochs (baseline/CVAE)",
    ]
    (
        args.results_dir / "cvae_quadrants.md"
    ).write_text(f"""# Structured-output CVAE: MNIST quadrant completion

Command: `{command_line()}`

Budget: at most {args.epochs} epochs each for the baseline and the CVAE (early stopping, patience
{args.patience}, on 2,000 validation images), batch {args.batch_size}, Adam {args.lr:g},
{args.train_size or len(data.train)} training images, dynamically binarized. Networks as in Pyro's
tutorial: baseline MLP 784-{"-".join(map(str, args.hidden))}-784 (ReLU); CVAE with z_dim={args.z_dim},
prior, recognition and generation networks of hidden sizes {args.hidden}; the prior network sees the
given pixels with the hidden ones filled by the baseline's guess.

Numbers are nats per test image, summed over the **hidden pixels only**, on the 10,000 MNIST test
images binarized once (seed 0): baseline negative log-likelihood and CVAE −ELBO with
{args.particles} particles (the figure Pyro's tutorial reports) on all of them; then, on the first
{args.n_test} images, the same −ELBO beside the importance-sampled −log p(x_hidden | x_given)
(K={args.k}, proposal q(z | x, c)), an upper bound that is tighter than the −ELBO. Lower is better.
Pyro's columns are the published figures of its tutorial (grey-valued targets, up to 101 epochs
with early stopping); "gap" is baseline − CVAE −ELBO.

{markdown_table(header, table)}

Figures: `cvae_quadrants_q1.png`, `cvae_quadrants_q2.png`, `cvae_quadrants_q3.png` (input with hidden
pixels grey, truth, baseline mean, three CVAE samples with z drawn from the prior network).
""")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=10, k=100)
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
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
