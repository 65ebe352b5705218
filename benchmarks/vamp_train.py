"""Training-step time with the VampPrior, its mixture scored by matrix products (pyrovae's
``DiagonalNormalMixture``) against Pyro's ``MixtureSameFamily`` (an (batch, K, D) tensor of
differences, what pyrovae did before), with the standard-normal prior for reference.

The three contestants are pyrovae's own SVI step (``pyrovae.step.svi_step``: the Trace_ELBO's
differentiable loss, backward, torch Adam) on the same network (``--preset``, the tutorial's
784-400-50 softplus MLPs by default) and the same batches; the two VampPrior contestants share
their initial parameters, and the script checks that their first losses agree before timing.
They take turns within each round (who goes first rotates); prints the median seconds per step
and the median ratio to the ``MixtureSameFamily`` step over rounds, with its range.

    python benchmarks/vamp_train.py --steps 100 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pyro
import pyro.distributions as dist
import torch

from pyrovae.build import build_model
from pyrovae.config import PRESETS, Config
from pyrovae.machine import describe
from pyrovae.objectives import ELBOLoss
from pyrovae.priors import VampPrior
from pyrovae.step import svi_step


class _MixtureSameFamily(VampPrior):
    """The VampPrior scored as Pyro's ``MixtureSameFamily`` of the guide at the pseudo-inputs."""

    def forward(self, y=None):
        q = self._components()
        return dist.MixtureSameFamily(dist.Categorical(logits=self.pseudo_inputs.new_zeros(q.batch_shape)), q)


def _model(preset: str, prior: str, pseudo_inputs: int):
    pyro.set_rng_seed(0)
    return build_model(Config.from_preset(preset, prior=prior, pseudo_inputs=pseudo_inputs), (1, 28, 28))


def _contestant(vae):
    loss_fn = ELBOLoss(vae, pyro.infer.Trace_ELBO())
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    return lambda x: svi_step(loss_fn, opt, params, x)[0]


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    g = torch.Generator().manual_seed(0)
    batches = [
        torch.bernoulli(torch.rand(args.batch_size, 1, 28, 28, generator=g)) for _ in range(args.steps)
    ]
    vamp = _model(args.preset, "vamp", args.pseudo_inputs)
    before = copy.deepcopy(vamp)
    before.prior.__class__ = _MixtureSameFamily  # same parameters, the mixture scored the old way
    models = {"VampPrior, matrix products": vamp, "VampPrior, MixtureSameFamily": before,
              "standard normal prior": _model(args.preset, "normal", args.pseudo_inputs)}  # fmt: skip
    steps = {name: _contestant(vae) for name, vae in models.items()}
    pyro.set_rng_seed(1)
    first = steps["VampPrior, matrix products"](batches[0])
    pyro.set_rng_seed(1)
    again = steps["VampPrior, MixtureSameFamily"](batches[0])
    if abs(first - again) > 1e-3 * abs(again):
        raise SystemExit(f"the two VampPrior steps disagree: loss {first} against {again}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for x in batches:
                steps[name](x)
            times[name].append((time.perf_counter() - t0) / args.steps)
    ref = times["VampPrior, MixtureSameFamily"]
    print(describe(batches[0].device))
    print(f"training step, batch {args.batch_size}, preset {args.preset}, {args.pseudo_inputs} pseudo-inputs; "
          f"{args.steps} steps x {args.rounds} rounds; first losses {first / args.batch_size:.4f} / "
          f"{again / args.batch_size:.4f} nats/image")  # fmt: skip
    print(f"{'contestant':32s} {'ms/step':>8s} {'speed vs MixtureSameFamily':>30s}")
    result = {"ms_per_step": {}, "ratio": {}, "first_losses": [first, again]}
    for name, ts in times.items():
        r = sorted(a / b for a, b in zip(ref, ts, strict=True))
        result["ms_per_step"][name] = 1000 * statistics.median(ts)
        result["ratio"][name] = statistics.median(r)
        print(f"{name:32s} {1000 * statistics.median(ts):8.2f} "
              f"{f'{statistics.median(r):.2f}x ({r[0]:.2f}-{r[-1]:.2f})':>30s}")  # fmt: skip
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tutorial", choices=list(PRESETS), help="network (default: tutorial)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--pseudo-inputs", type=int, default=500, help="VampPrior components (default: 500)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per round (default: 100)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
