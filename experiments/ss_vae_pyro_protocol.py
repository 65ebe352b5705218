"""The anchor's protocol, run on our MNIST: Pyro's semi-supervised VAE example
(``examples/vae/ss_vae_M2.py`` with ``--aux-loss -alm 46 -enum parallel -zd 50 -hl 500 -lr 0.00042
-b1 0.95``) written from its description in plain Pyro and torch, without pyrovae, so that
pyrovae's accuracy (``experiments/ss_vae.py``) can be set beside the tutorial's protocol at an equal
number of epochs on the same data and machine.

    OMP_NUM_THREADS=1 python experiments/ss_vae_pyro_protocol.py --labels 100 --epochs 50

What it follows: grey pixels in [0, 1] with a Bernoulli likelihood; the first 50,000 training
images for training and the last 10,000 for validation; N/10 labels per class; 784-500-output
softplus MLPs with N(0, 1e-3) initial weights, an exp scale for q(z|x,y), clipped softmax and sigmoid
(eps 1e-7); one ``pyro.optim.Adam`` (lr 4.2e-4, betas (0.95, 0.999)) shared by two SVI objects that
step on every batch: ``TraceEnum_ELBO`` (parallel enumeration of y) and the auxiliary loss
alpha * -log q(y|x) on labelled batches (``Trace_ELBO`` of a model with an observed ``"y_aux"``);
one whole labelled batch every int(50000 / N) batches. Batch 100 by default: the example's
``-bs 200`` fails its own check ``sup_num % batch_size == 0`` at 100 labels. Test accuracy is
reported at the epoch of best validation accuracy, as the example does.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn
from torchvision.datasets import MNIST

try:
    from _common import budget_options, command_line, markdown_table, run_script
except ImportError:
    from experiments._common import budget_options, command_line, markdown_table, run_script


def _clipped(f, eps=1e-7):
    return lambda v: f(v).clamp(eps, 1 - eps)


def _cat(*ts):
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in ts))  # y may carry an enumeration dim
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in ts], -1)


class MLP(nn.Module):
    """Linear-softplus layers, then one head per output with its own activation."""

    def __init__(self, sizes, outs, acts):
        super().__init__()
        layers, last = [], sizes[0]
        for h in sizes[1:]:
            lin = nn.Linear(last, h)
            nn.init.normal_(lin.weight, 0, 1e-3)
            nn.init.normal_(lin.bias, 0, 1e-3)
            layers += [lin, nn.Softplus()]
            last = h
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(last, o) for o in outs)
        self.acts = acts

    def forward(self, *xs):
        h = self.body(_cat(*xs))
        out = [act(head(h)) for head, act in zip(self.heads, self.acts, strict=True)]
        return out if len(out) > 1 else out[0]


class SSVAE(nn.Module):
    def __init__(self, z_dim=50, hidden=500, alpha=46.0):
        super().__init__()
        self.z_dim, self.alpha = z_dim, alpha
        self.encoder_y = MLP([784, hidden], [10], [_clipped(lambda v: v.softmax(-1))])
        self.encoder_z = MLP([794, hidden], [z_dim, z_dim], [nn.Identity(), torch.exp])
        self.decoder = MLP([z_dim + 10, hidden], [784], [_clipped(torch.sigmoid)])

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        b = xs.shape[0]
        with pyro.plate("data", b):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(b, self.z_dim), 1.0).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(b, 10) / 10), obs=ys)
            # grey targets: the Bernoulli's support check is off, as in the example
            pyro.sample("x", dist.Bernoulli(self.decoder(zs, ys), validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            loc, scale = self.encoder_z(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is not None:
                with pyro.poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.OneHotCategorical(self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


@torch.no_grad()
def accuracy(m: SSVAE, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    hits = sum(
        int((m.encoder_y(x[i : i + bs]).argmax(-1) == y[i : i + bs]).sum()) for i in range(0, len(x), bs)
    )
    return hits / len(x)


def _data(args):
    tr = MNIST(args.data_dir or _default_root(), train=True, download=False)
    te = MNIST(args.data_dir or _default_root(), train=False, download=False)

    def flat(x):
        return (x.float() / 255).reshape(len(x), -1)

    xtr, ytr = flat(tr.data), tr.targets
    xva, yva, xtr, ytr = xtr[-10000:], ytr[-10000:], xtr[:50000], ytr[:50000]
    if args.train_size:
        xtr, ytr = xtr[: args.train_size], ytr[: args.train_size]
    return xtr, ytr, xva, yva, flat(te.data), te.targets


def _default_root():
    import os

    return os.environ.get("PYROVAE_DATA", "data")


def run(args, n_labels: int) -> tuple[list[dict], list[int]]:
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    xtr, ytr, xva, yva, xte, yte = _data(args)
    labelled = []
    for c in range(10):  # N/10 per class
        idx = (ytr == c).nonzero().squeeze(1).numpy()
        np.random.shuffle(idx)
        labelled += list(idx[: n_labels // 10])
    mask = torch.zeros(len(xtr), dtype=torch.bool)
    mask[torch.tensor(labelled)] = True
    dev = torch.device(args.device)
    xs, ys, xu = xtr[mask].to(dev), F.one_hot(ytr[mask], 10).float().to(dev), xtr[~mask].to(dev)
    xva, yva, xte, yte = xva.to(dev), yva.to(dev), xte.to(dev), yte.to(dev)

    def pixels(x):  # grey, as the example; or a fresh binarization per batch
        return torch.bernoulli(x) if args.binarize else x

    m = SSVAE(alpha=args.aux_weight).to(dev)
    opt = Adam({"lr": args.lr, "betas": (args.beta1, 0.999)})
    svi = SVI(m.model, config_enumerate(m.guide, "parallel"), opt, loss=TraceEnum_ELBO(max_plate_nesting=1))
    aux = SVI(m.model_classify, m.guide_classify, opt, loss=Trace_ELBO())
    period = int(50000 / n_labels)
    rows, cpu0 = [], time.process_time()
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        sb = torch.randperm(len(xs), device=dev).split(args.batch_size)
        ub = torch.randperm(len(xu), device=dev).split(args.batch_size)
        n_sup = 0
        for i in range(len(sb) + len(ub)):  # the example's schedule
            if i % period == 1 and n_sup < len(sb):
                x, y = pixels(xs[sb[n_sup]]), ys[sb[n_sup]]
                n_sup += 1
                svi.step(x, y)
                aux.step(x, y)
            else:
                x = pixels(xu[ub[i - n_sup]])
                svi.step(x)
                aux.step(x)  # no aux term without labels; Adam still moves by its momentum, as in the example
        rows.append(dict(epoch=epoch, val=100 * accuracy(m, xva, yva), test=100 * accuracy(m, xte, yte),
                         seconds=time.time() - t0, cpu_min=(time.process_time() - cpu0) / 60))  # fmt: skip
        if not args.quiet:
            r = rows[-1]
            print(
                f"{n_labels} labels, epoch {epoch}: validation {r['val']:.2f} %, test {r['test']:.2f} %",
                flush=True,
            )
    return rows, torch.bincount(ytr[mask], minlength=10).tolist()


def main(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.labels:
        rows, per_class = run(args, n)
        best = max(rows, key=lambda r: r["val"])
        results.append(dict(labels=n, per_class=per_class, rows=rows, best_epoch=best["epoch"], test=best["test"],
                            val=best["val"]))  # fmt: skip
    table = markdown_table(
        ["labels", "epochs", "test accuracy % at best validation (epoch)", "test accuracy % per epoch", "CPU-min"],
        [[r["labels"], len(r["rows"]), f"{r['test']:.2f} (epoch {r['best_epoch']})",
          " ".join(f"{x['test']:.1f}" for x in r["rows"]), f"{r['rows'][-1]['cpu_min']:.1f}"] for r in results],
    )  # fmt: skip
    (
        args.results_dir / "ss_vae_pyro_protocol.md"
    ).write_text(f"""# Pyro's SS-VAE example's protocol on our MNIST

Command: `{command_line()}`

Hardware: {platform.processor() or platform.machine()}, {args.threads} torch thread(s), device {args.device};
seed {args.seed}; {"binarized" if args.binarize else "grey"} pixels;
batch {args.batch_size}, alpha {args.aux_weight}, Adam lr {args.lr}, beta1 {args.beta1}. Plain Pyro and
torch, no pyrovae (protocol in the script's docstring). Test accuracy of argmax q(y|x) on the 10,000
test images (grey), at the epoch of best accuracy on the 10,000 validation images.

{table}
""")
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_options(p, epochs=6, omit=("--k", "--n-test", "--runs-dir"))  # trains in-process, no log p(x)
    p.add_argument("--labels", type=int, nargs="+", default=[100], help="labelled images (default: 100)")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch (default: 100)")
    p.add_argument("--aux-weight", type=float, default=46.0, help="alpha per labelled image (default: 46)")
    p.add_argument("--lr", type=float, default=4.2e-4, help="Adam learning rate (default: 4.2e-4)")
    p.add_argument("--beta1", type=float, default=0.95, help="Adam beta1 (default: 0.95)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    p.add_argument(
        "--binarize", action="store_true", help="binarize each batch afresh (default: grey pixels)"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    run_script(main, parse_args)
