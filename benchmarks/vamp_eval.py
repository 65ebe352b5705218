"""Importance-sampled evaluation time with the VampPrior against the standard-normal prior.

``pyrovae.evaluate.log_likelihood`` at the same K, on the same images (100 per call, as
``pyrovae.evaluate.evaluate`` batches them) and the same network (the tutorial's 784-400-50
softplus MLPs; the VampPrior with its default 500 pseudo-inputs), the two models timed in turn
within each repeat. Prints each repeat, the median seconds of each and the median ratio
(VampPrior / standard normal). Timing does not depend on training, so the models are freshly
initialized; the images are the first MNIST test images (from ``$PYROVAE_DATA``) binarized once,
or random binary images where MNIST is not found.

    python benchmarks/vamp_eval.py --k 1000 --n 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

from pyrovae.build import build_model
from pyrovae.config import Config
from pyrovae.evaluate import log_likelihood
from pyrovae.machine import describe


def images(n: int) -> tuple[torch.Tensor, str]:
    try:
        from pyrovae.data import load_mnist

        _, test, _ = load_mnist()
        x, what = test.x[:n], "MNIST test images"
    except Exception:
        x, what = torch.rand(n, 1, 28, 28), "random images (MNIST not found)"
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0)), what


def time_eval(vae, x: torch.Tensor, k: int, batch: int) -> tuple[float, float]:
    """Seconds for log p(x) over all of ``x``, and its mean (nats)."""
    pyro.set_rng_seed(0)
    t0 = time.perf_counter()
    ll = torch.cat([log_likelihood(vae, x[i : i + batch], None, k) for i in range(0, len(x), batch)])
    return time.perf_counter() - t0, ll.mean().item()


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    x, what = images(args.n)
    models = {}
    for prior in ("normal", "vamp"):
        pyro.set_rng_seed(0)
        cfg = Config.from_preset("tutorial", prior=prior, pseudo_inputs=args.pseudo_inputs)
        models[prior] = build_model(cfg, (1, 28, 28)).eval()
    print(describe(next(models["normal"].parameters()).device))
    print(f"log p(x), K={args.k}, {len(x)} {what}, {args.batch} per call; tutorial network; "
          f"VampPrior with {args.pseudo_inputs} pseudo-inputs")  # fmt: skip
    times: dict[str, list[float]] = {"normal": [], "vamp": []}
    ratios = []
    for r in range(args.repeats):
        order = ("normal", "vamp") if r % 2 == 0 else ("vamp", "normal")
        got = {p: time_eval(models[p], x, args.k, args.batch) for p in order}
        for p in times:
            times[p].append(got[p][0])
        ratios.append(got["vamp"][0] / got["normal"][0])
        print(f"repeat {r + 1}: normal {got['normal'][0]:.2f} s (log p(x) {got['normal'][1]:.2f}), "
              f"vamp {got['vamp'][0]:.2f} s (log p(x) {got['vamp'][1]:.2f}), ratio {ratios[-1]:.2f}x")  # fmt: skip
    med = {p: statistics.median(t) for p, t in times.items()}
    print(f"median of {args.repeats}: normal {med['normal']:.2f} s, vamp {med['vamp']:.2f} s, "
          f"ratio vamp/normal {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    return {"seconds": med, "ratio": statistics.median(ratios), "log_px": {p: got[p][1] for p in got}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=1000, help="importance samples per image (default: 1000)")
    p.add_argument("--n", type=int, default=1000, help="test images (default: 1000)")
    p.add_argument("--batch", type=int, default=100, help="images per log_likelihood call (default: 100)")
    p.add_argument("--pseudo-inputs", type=int, default=500, help="VampPrior pseudo-inputs (default: 500)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
