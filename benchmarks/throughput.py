"""Images per second of pyrovae's SVI step, and of a user's plain-SVI script, against a lean
hand-written PyTorch VAE loop.

The baseline is the loop a user writes without pyrovae or Pyro: plain ``nn.Linear`` layers
(784-400-50 softplus, Pyro's tutorial network), ``binary_cross_entropy_with_logits``, the
analytic KL, and torch's default ``torch.optim.Adam`` (a loop over parameters on a CPU). The
same loop with ``fused=True`` Adam is shown as the limit. The contestants:

- pyrovae's training step (``pyrovae.step.svi_step`` on ``ELBOLoss``: the loss, a NaN/inf check
  of loss and gradients, fused Adam; Pyro's validation off, as ``fit`` runs after its first
  step), on ``TraceMeanField_ELBO`` (analytic KL, the baseline's objective) and ``Trace_ELBO``;
- the step ``fit`` takes with ``--step graphed`` (and ``auto``, the default, for a run of 1,000 steps
  or more): on a CPU the step's loss, gradients and NaN/inf flag traced once
  (:mod:`pyrovae.compiled`) and the graph replayed, fused Adam eager, the loss read every 50 steps;
  on CUDA a CUDA graph;
- the step ``fit`` takes with ``--step compiled``: that graph compiled by ``torch.compile``
  (compiled during the warm-up, its compile time not counted);
- a user's script: ``pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
  Trace_ELBO())`` (and with ``TraceMeanField_ELBO``), ``svi.step(x)``, Pyro's defaults otherwise;
- the same script with ``pyrovae.SVI`` in place of ``pyro.infer.SVI`` (one name changed), after the
  400 steps (``pyrovae.svi.TRACE_AFTER``) its default takes before it traces the step;
- the same script on the lean loop's network written directly in Pyro, without pyrovae (after Pyro's
  VAE tutorial: ``pyro.module``, ``dist.Normal``, ``dist.Bernoulli`` on logits): what a Pyro user's
  script costs without pyrovae.

With ``--decompose``, variants of the user's script that each remove one cost say where its
time goes beyond the lean loop: Pyro's validation off; ``Trace_ELBO.loss_and_grads`` stepped by
one ``torch.optim.Adam`` instead of ``pyro.optim.Adam`` (one torch optimizer per parameter, and
Pyro zeroing gradients by allocating new ones); Pyro's ``ELBOModule`` recipe with
``pyro.settings.set(module_local_params=True)`` and torch's Adam; and the same prior, guide,
decoder and likelihood distributions with the Monte Carlo KL and torch's Adam, written without
Pyro (no traces, no parameter store).

``--decompose`` also shows what pyrovae's own softplus (:mod:`pyrovae.functional`, used by the
networks' activation and the Bernoulli log-density) is worth: pyrovae's step and the user's script
on torch's softplus kernel (pyrovae before it; its Bernoulli term on ``F.softplus`` costs what
torch's cross-entropy kernel does); the lean loop on pyrovae's softplus (what remains of Pyro's
cost when both sides use the same kernels); and the plain Pyro program on pyrovae's kernels (what
Pyro itself costs on this network, so that the user's script differs from it only by what
pyrovae's model and guide add).

``--decompose`` also races pyrovae's step with its networks compiled by ``torch.compile``
(compiled during the warm-up; Pyro's program itself cannot be compiled, as Dynamo breaks its
graph at every Pyro message).

``--only`` races a few contestants (with the two lean loops, the ratios' references) over more
rounds in the same time.

All train the same initial weights on the same binarized batches. In each round every contestant
takes ``--steps`` timed steps, in turns of ``--block`` steps that alternate between the
contestants, so drift in machine load within a round hits all alike; each turn starts with one
untimed step (the first after another contestant's runs on cold caches, which costs pyrovae's
step about 1 ms more than the lean loop's). A ratio is taken between the times of one round.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --threads 1 --steps 300 --rounds 7 --decompose
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

import pyrovae
from pyrovae import distributions as pvdist
from pyrovae import functional
from pyrovae.build import build_model
from pyrovae.config import PRESETS, Config
from pyrovae.functional import softplus as fast_softplus
from pyrovae.graphs import fused_adam, make_steps
from pyrovae.machine import describe
from pyrovae.objectives import ELBOLoss, make_elbo
from pyrovae.step import make_optimizer, svi_step
from pyrovae.svi import TRACE_AFTER


class LeanVAE(nn.Module):
    """The tutorial VAE as a user writes it in plain PyTorch: no pyrovae, no Pyro."""

    def __init__(self, x_dim: int = 784, hidden: int = 400, z_dim: int = 50, softplus=F.softplus) -> None:
        super().__init__()
        self.softplus = softplus
        self.enc = nn.Linear(x_dim, hidden)
        self.loc, self.log_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.dec1, self.dec2 = nn.Linear(z_dim, hidden), nn.Linear(hidden, x_dim)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        h = self.softplus(self.enc(x))
        loc, log_scale = self.loc(h), self.log_scale(h)
        z = loc + log_scale.exp() * torch.randn_like(loc)
        logits = self.dec2(self.softplus(self.dec1(z)))
        if self.softplus is F.softplus:
            recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        else:  # the Bernoulli log-density by the same softplus
            recon = (x * logits - self.softplus(logits)).sum()
        kl = 0.5 * (loc.pow(2) + (2 * log_scale).exp() - 1).sum() - log_scale.sum()
        return kl - recon

    @torch.no_grad()
    def copy_from(self, vae) -> LeanVAE:
        """Take the weights of a pyrovae tutorial VAE, so both start from the same point."""
        g = vae.guide_net
        pairs = [(self.enc, g.encoder.body[0]), (self.loc, g.loc), (self.log_scale, g.raw_scale),
                 (self.dec1, vae.decoder.body[0]), (self.dec2, vae.decoder.out)]  # fmt: skip
        for mine, theirs in pairs:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        return self


class PlainPyroVAE(nn.Module):
    """The lean loop's network as the Pyro program a user writes without pyrovae, after Pyro's VAE
    tutorial: ``pyro.module`` for the encoder and decoder, ``dist.Normal`` prior and guide,
    ``dist.Bernoulli`` on the decoder's logits. With pyrovae's kernels (``fast=True``: its softplus
    and :class:`pyrovae.distributions.Bernoulli`) it is what Pyro itself costs on this network."""

    _count = 0

    def __init__(self, lean: LeanVAE, fast: bool = False) -> None:
        super().__init__()
        self.lean, self.bernoulli = lean, pvdist.Bernoulli if fast else dist.Bernoulli
        self.encoder = nn.ModuleList([lean.enc, lean.loc, lean.log_scale])
        self.decoder = nn.ModuleList([lean.dec1, lean.dec2])
        PlainPyroVAE._count += 1
        self.name = f"plain{PlainPyroVAE._count}"  # its own entries in Pyro's parameter store

    def model(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.name}_decoder", self.decoder)
        x, lean = x.flatten(1), self.lean
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(x.shape[0], lean.loc.out_features)
            z = pyro.sample("z", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            logits = lean.dec2(lean.softplus(lean.dec1(z)))
            pyro.sample("x", self.bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.name}_encoder", self.encoder)
        x, lean = x.flatten(1), self.lean
        with pyro.plate("data", x.shape[0]):
            h = lean.softplus(lean.enc(x))
            pyro.sample("z", dist.Normal(lean.loc(h), lean.log_scale(h).exp()).to_event(1))


def _torch_softplus(step):
    """``step`` run on torch's own softplus kernel: pyrovae as it was before
    :mod:`pyrovae.functional`."""

    def wrapped(x):
        functional._Softplus.apply = F.softplus
        try:
            return step(x)
        finally:
            del functional._Softplus.apply  # back to torch.autograd.Function.apply

    return wrapped


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


def _fresh(cfg: Config):
    torch.manual_seed(0)
    return build_model(cfg, (1, 28, 28))


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    cfg = Config(**PRESETS["tutorial"])
    x_all = torch.bernoulli(
        torch.rand(args.steps * args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    )
    x_all = x_all.to(device)
    batches = x_all.split(args.batch_size)

    def hand_loop(fused: bool, softplus=F.softplus):
        hand = LeanVAE(softplus=softplus).copy_from(_fresh(cfg)).to(device)
        opt = torch.optim.Adam(hand.parameters(), lr=1e-3, fused=fused)

        def step(x):
            loss = hand.loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    def pyrovae_step(kind: str, vae=None):
        vae = vae if vae is not None else _fresh(cfg).to(device)
        params = list(vae.parameters())
        opt, loss_fn = make_optimizer(params, 1e-3), ELBOLoss(vae, make_elbo(kind))

        def step(x):
            with pyro.validation_enabled(False):  # as in the training loop after its first step
                return svi_step(loss_fn, opt, params, x)[0]

        return step

    def pyrovae_graphed(kind: str, step: str = "graphed"):
        """The step ``fit`` takes with ``--step graphed``: a CUDA graph on CUDA, a traced graph on a
        CPU (traced at the first step); with ``step="compiled"`` that graph compiled. The loss is
        read every 50 steps."""
        vae = _fresh(cfg).to(device)
        params = list(vae.parameters())
        steps = make_steps(step, ELBOLoss(vae, make_elbo(kind)), fused_adam(params, 1e-3), params)

        def step(x):
            steps(x, None, 1.0)
            if steps.count >= steps.every:
                return steps.read()[0]

        return step

    def pyrovae_compiled(kind: str):
        """pyrovae's step with its networks compiled by ``torch.compile`` (Pyro's program itself
        cannot be: Dynamo breaks its graph at every Pyro message); compiled at the first step."""
        vae = _fresh(cfg).to(device)
        vae.decoder = torch.compile(vae.decoder)
        vae.guide_net.encoder = torch.compile(vae.guide_net.encoder)
        return pyrovae_step(kind, vae)

    def user_script(elbo, validate=True):
        pyro.clear_param_store()
        vae = _fresh(cfg).to(device)
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)

        def step(x):
            with pyro.validation_enabled(validate):
                return svi.step(x)

        return step

    def pyrovae_svi(elbo):
        """The user's script with ``pyrovae.SVI`` in place of ``pyro.infer.SVI``, after the steps its
        default (``step="auto"``) takes before it traces the step."""
        vae = _fresh(cfg).to(device)
        svi = pyrovae.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        for i in range(TRACE_AFTER):
            svi.step(batches[i % len(batches)])
        assert svi.graphed, svi.failed
        return svi.step

    def plain_pyro(fast: bool = False):
        plain = PlainPyroVAE(
            LeanVAE(softplus=fast_softplus if fast else F.softplus).copy_from(_fresh(cfg)), fast
        )
        svi = pyro.infer.SVI(plain.model, plain.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
        return svi.step

    def torch_adam_script():
        # The user's script without pyro.optim: Pyro's loss_and_grads, one torch Adam.
        pyro.clear_param_store()
        vae = _fresh(cfg).to(device)
        elbo, opt = pyro.infer.Trace_ELBO(), torch.optim.Adam(vae.parameters(), lr=1e-3)

        def step(x):
            loss = elbo.loss_and_grads(vae.model, vae.guide, x)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        return step

    def without_pyro():
        # The same distribution objects and Monte Carlo KL as Trace_ELBO, without Pyro's traces:
        # the user's script minus poutine, pyro.optim and the parameter store.
        vae = _fresh(cfg).to(device)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

        def step(x):
            with pyro.validation_enabled(True):
                q = vae.guide_net(x)  # (batch,) x (z_dim,)
                z = q.rsample()
                log_w = vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)
            loss = -log_w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    def local_params_module():
        # Pyro's ELBOModule recipe with module-local parameters (no global parameter store).
        with pyro.settings.context(module_local_params=True):
            vae = _fresh(cfg).to(device)
            loss_fn = pyro.infer.Trace_ELBO()(vae.model, vae.guide)
        # model and guide are methods, not modules, so the ELBOModule holds no parameters itself
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

        def step(x):
            with pyro.settings.context(module_local_params=True):
                loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    contestants = {
        "lean hand loop (torch Adam)": hand_loop(fused=False),
        "lean hand loop, fused Adam": hand_loop(fused=True),
        "pyrovae step (meanfield)": pyrovae_step("meanfield"),
        "pyrovae step (trace)": pyrovae_step("trace"),
        "pyrovae step (meanfield), --step graphed": pyrovae_graphed("meanfield"),
        "pyrovae step (trace), --step graphed": pyrovae_graphed("trace"),
        "user's SVI script (Trace_ELBO)": user_script(pyro.infer.Trace_ELBO()),
        "user's SVI script (TraceMeanField)": user_script(pyro.infer.TraceMeanField_ELBO()),
        "user's script on pyrovae.SVI (Trace_ELBO)": pyrovae_svi(pyro.infer.Trace_ELBO()),
        "user's script on pyrovae.SVI (TraceMeanField)": pyrovae_svi(pyro.infer.TraceMeanField_ELBO()),
        "plain Pyro VAE, no pyrovae (Trace_ELBO)": plain_pyro(),
    }
    if device.type != "cuda":  # step compiled is the CPU's
        contestants |= {
            "pyrovae step (meanfield), --step compiled": pyrovae_graphed("meanfield", "compiled"),
            "pyrovae step (trace), --step compiled": pyrovae_graphed("trace", "compiled"),
        }
    if args.decompose:
        contestants |= {
            "lean hand loop, pyrovae's softplus": hand_loop(fused=False, softplus=fast_softplus),
            "plain Pyro VAE on pyrovae's kernels": plain_pyro(fast=True),
            "pyrovae step (meanfield), torch softplus": _torch_softplus(pyrovae_step("meanfield")),
            "pyrovae step (meanfield), networks compiled": pyrovae_compiled("meanfield"),
            "user's script (Trace_ELBO), torch softplus": _torch_softplus(
                user_script(pyro.infer.Trace_ELBO())
            ),
            "  Pyro validation off": user_script(pyro.infer.Trace_ELBO(), validate=False),
            "  torch Adam, not pyro.optim": torch_adam_script(),
            "  ELBOModule, local params": local_params_module(),
            "  same distributions, no Pyro": without_pyro(),
        }

    if args.only:  # a closer race between a few rows: more rounds in the same time
        wanted = [w.strip() for w in args.only.split(",")]
        unknown = [w for w in wanted if not any(w in n for n in contestants)]
        if unknown:
            sys.exit(f"--only {', '.join(unknown)}: no contestant's name contains it; the names are:\n  "
                     + "\n  ".join(contestants) + "\n(add --decompose for the variants)")  # fmt: skip
        baselines = ("lean hand loop (torch Adam)", "lean hand loop, fused Adam")  # the ratios' references
        contestants = {n: s for n, s in contestants.items() if n in baselines or any(w in n for w in wanted)}
    times = {name: [] for name in contestants}
    names = list(contestants)
    for step in contestants.values():
        for x in batches[:10]:  # warm-up (and compilation, for the compiled steps)
            step(x)
    turns = [batches[i : i + args.block] for i in range(0, len(batches), args.block)]
    for r in range(args.rounds):
        spent = dict.fromkeys(names, 0.0)
        for t, chunk in enumerate(turns):
            k = (r * len(turns) + t) % len(names)
            for name in names[k:] + names[:k]:  # rotate who goes first
                step = contestants[name]
                step(chunk[0])  # untimed: the first step after another contestant's finds cold caches
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for x in chunk:
                    step(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                spent[name] += time.perf_counter() - t0
        for name in names:
            times[name].append(spent[name])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)  # the whole run takes minutes

    n = args.steps * args.batch_size
    hand, fused = times["lean hand loop (torch Adam)"], times["lean hand loop, fused Adam"]
    print(f"{describe(device)}; batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds")
    print(
        "speed ratios: median over rounds of (reference time / contestant time) in the same round, with their range"
    )
    print(f"{'contestant':44s} {'images/s':>9s} {'vs lean hand loop':>24s} {'vs lean, fused Adam':>24s}")
    for name, ts in times.items():
        cols = []
        for ref in (hand, fused):
            r = sorted(a / b for a, b in zip(ref, ts, strict=True))
            cols.append(f"{statistics.median(r):.3f}x ({r[0]:.2f}-{r[-1]:.2f})")
        print(f"{name:44s} {n / statistics.median(ts):9.0f} {cols[0]:>24s} {cols[1]:>24s}")
    shortest = min(min(ts) for ts in times.values())
    if shortest < MIN_ROUND_SECONDS or args.rounds < MIN_ROUNDS:
        print(f"note: these ratios are noise, not figures: the shortest round took {shortest:.3g} s over "
              f"{args.rounds} round(s); a ratio needs rounds of {MIN_ROUND_SECONDS:g} s or more, {MIN_ROUNDS} "
              "rounds or more (e.g. --steps 300 --rounds 7)")  # fmt: skip


#: below these, a shared machine's jitter (one timer tick, another process waking) is a large
#: part of a round's time, so its ratios say nothing
MIN_ROUND_SECONDS, MIN_ROUNDS = 0.5, 3


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--steps", type=int, default=200, help="timed steps per round (default: 200)")
    p.add_argument(
        "--rounds", type=int, default=9, help="alternating rounds; the median is reported (default: 9)"
    )
    p.add_argument(
        "--block",
        type=int,
        default=50,
        help="steps a contestant takes before the next one's turn, within a round (default: 50)",
    )
    p.add_argument("--device", default="cpu", help="device (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--decompose", action="store_true", help="add variants of the user's script that each remove one cost"
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated parts of contestant names to race (with the two lean loops); default: all",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
