"""The GPU paths end to end: train, resume, evaluate, sample, reconstruct, inspect, score and embed
on CUDA; the conditional, semi-supervised, IWAE, convolutional and float64 variants; torchrun with
more processes than GPUs. Skipped without CUDA; ``benchmarks/device_check.sh`` runs them on a GPU
machine. "cuda" below is the device ``--device auto`` picks there; comparisons with the CPU say so.
"""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from pyrovae import VAE, checkpoint, load_run, plots
from pyrovae.cli import main
from pyrovae.elbos import IWAE
from pyrovae.evaluate import kl_per_dim, posterior_mean
from pyrovae.posterior import sample_prior

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _data(tmp_path: Path, n: int = 120, shape=(1, 8, 8)) -> Path:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    proto = torch.rand(3, *shape, generator=g)
    x = torch.bernoulli((proto[y] * 0.8 + 0.1 * torch.rand(n, *shape, generator=g)).clamp(0, 1), generator=g)
    torch.save({"x": x, "y": y}, tmp_path / "tiny.pt")
    return tmp_path / "tiny.pt"


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "16",
            "--batch-size", "16", "--val-size", "12", "--eval-k", "20", "--seed", "3", "--quiet",
            "--out", str(out), *extra]  # fmt: skip


def test_default_device_is_cuda_and_every_command_repeats_its_figures(tmp_path):
    data, run = _data(tmp_path), tmp_path / "run"
    assert main(_train(data, run, "--epochs", "3")) == 0  # --device auto
    trained = json.loads((run / "eval.json").read_text())
    loaded = load_run(run)
    assert loaded.device.type == "cuda" and loaded.data.test.x.device.type == "cuda"
    assert trained["elbo"] <= trained["log_likelihood"] + 1.0  # the IS estimate is the tighter bound

    # evaluate with the default device gives train's figures, twice
    for _ in range(2):
        assert main(["evaluate", str(run), "--quiet"]) == 0
        assert json.loads((run / "eval.json").read_text()) == trained
    # on the CPU (asked for) the Monte Carlo figures differ, the analytic KL per dimension does not
    x = loaded.data.test.x
    kl_gpu = kl_per_dim(loaded.model, x).mean(0)
    cpu = load_run(run, device="cpu")
    kl_cpu = kl_per_dim(cpu.model, cpu.data.test.x).mean(0)
    assert kl_cpu.device.type == "cpu" and torch.allclose(kl_gpu.cpu(), kl_cpu, rtol=1e-4, atol=1e-5)

    assert main(["sample", str(run), "-n", "16", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["reconstruct", str(run), "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", str(run), "--k", "5", "--n", "12"]) == 0
    assert (run / "figures" / "index.md").exists()

    scored = []
    for name in ("s1.csv", "s2.csv"):  # scores repeat for the same seed
        assert (
            main(["score", str(run), "--split", "test", "--k", "50", "-o", str(tmp_path / name), "--quiet"])
            == 0
        )
        scored.append(list(csv.DictReader(open(tmp_path / name))))
    rows = scored[0]
    assert rows == scored[1] and len(rows) == len(x)
    nll = np.array([float(r["neg_log_likelihood"]) for r in rows])
    nelbo = np.array([float(r["neg_elbo"]) for r in rows])
    assert nll.mean() <= nelbo.mean() + 1.0

    assert main(["embed", str(run), "--split", "test", "-o", str(tmp_path / "z.npy"), "--quiet"]) == 0
    z = torch.from_numpy(np.load(tmp_path / "z.npy"))
    assert torch.allclose(z, posterior_mean(loaded.model, x).cpu(), atol=1e-5)


@pytest.mark.parametrize("deterministic", [True, False])
def test_resume_on_cuda(tmp_path, deterministic):
    """Two epochs, against one epoch resumed for a second: bit for bit with --deterministic; without
    it this checks agreement to float32 rounding and reports whether it was exact too."""
    data = _data(tmp_path)
    flag = ["--deterministic"] if deterministic else []
    assert main(_train(data, tmp_path / "a", "--epochs", "2", "--no-eval", *flag)) == 0
    assert main(_train(data, tmp_path / "b", "--epochs", "1", "--no-eval", *flag)) == 0
    assert (
        main(["train", "--out", str(tmp_path / "b"), "--resume", "--epochs", "2", "--quiet", "--no-eval"])
        == 0
    )
    a = checkpoint.load(tmp_path / "a" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert a["state"]["step"] == b["state"]["step"]
    worst = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])
    print(f"deterministic={deterministic}: largest parameter difference after resume {worst:.3g}")
    if deterministic:
        assert worst == 0.0
    else:
        assert worst < 1e-4


def test_conditional_samples_their_label_on_cuda(tmp_path, monkeypatch):
    data, run = _data(tmp_path), tmp_path / "run"
    assert main(_train(data, run, "--epochs", "2", "--conditional", "--pseudo-inputs", "9")) == 0
    drawn = []
    monkeypatch.setattr(plots, "image_grid", lambda images, *a, **kw: drawn.append(images))
    assert (
        main(["sample", str(run), "--label", "1", "-n", "8", "--seed", "5", "-o", str(tmp_path / "s.png")])
        == 0
    )
    vae = load_run(run).model
    pyro.set_rng_seed(5)
    expected = sample_prior(vae, y=torch.full((8,), 1, device=CUDA))
    assert drawn[0].device.type == "cuda" and torch.equal(drawn[0], expected)


def test_semi_supervised_on_cuda(tmp_path):
    data, run = _data(tmp_path), tmp_path / "run"
    assert (
        main(_train(data, run, "--epochs", "3", "--semi-supervised", "--labeled", "12", "--lr", "0.01")) == 0
    )
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
    res = json.loads((run / "eval.json").read_text())
    assert 0.0 <= res["test_accuracy"] <= 1.0 and res["elbo"] <= res["log_likelihood"] + 1.0


def test_iwae_on_cuda_is_a_tighter_bound_than_the_elbo(tmp_path):
    data, run = _data(tmp_path), tmp_path / "run"
    assert main(_train(data, run, "--epochs", "3", "--elbo", "iwae", "--num-particles", "5")) == 0
    loaded = load_run(run)
    x = loaded.data.test.x
    pyro.set_rng_seed(0)
    iwae = np.mean([IWAE(num_particles=50).loss(loaded.model.model, loaded.model.guide, x) for _ in range(5)])
    elbo = np.mean(
        [pyro.infer.Trace_ELBO().loss(loaded.model.model, loaded.model.guide, x) for _ in range(5)]
    )
    assert iwae <= elbo  # losses: -bound


def test_conv_on_real_mnist_on_cuda(tmp_path, mnist_dir):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tutorial", "--net", "conv", "--epochs", "1", "--train-size", "2000",
                 "--val-size", "500", "--eval-k", "20", "--eval-n-test", "200", "--data-dir", str(mnist_dir),
                 "--out", str(run), "--quiet"]) == 0  # fmt: skip
    res = json.loads((run / "eval.json").read_text())
    assert -300 < res["elbo"] <= res["log_likelihood"] + 1.0 < 0


def test_float64_on_cuda_matches_the_cpu():
    """A float64 VAE on the GPU: the ELBO at a fixed z equals the CPU's to float64 rounding, and
    SVI keeps every parameter in float64 on the GPU."""
    vae = VAE((1, 8, 8), z_dim=2, hidden=(16,)).to(CUDA, torch.float64)
    x = torch.bernoulli(
        torch.rand(10, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    )
    z = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def loss(v, x, z):
        guide = poutine.condition(v.guide, {"z": z})
        return pyro.infer.Trace_ELBO().loss(v.model, guide, x)

    cpu = VAE((1, 8, 8), z_dim=2, hidden=(16,)).double()
    cpu.load_state_dict({k: t.cpu() for k, t in vae.state_dict().items()})
    assert loss(vae, x.to(CUDA), z.to(CUDA)) == pytest.approx(loss(cpu, x, z), rel=1e-12)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    xs = x.to(CUDA)
    first = svi.step(xs)
    for _ in range(100):
        last = svi.step(xs)
    assert last < first
    assert all(p.dtype == torch.float64 and p.device.type == "cuda" for p in vae.parameters())


def test_torchrun_with_more_processes_than_gpus(tmp_path):
    data = _data(tmp_path)
    n = torch.cuda.device_count() + 1
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "pyrovae",
         *_train(data, tmp_path / "ddp", "--device", "cuda", "--epochs", "1", "--no-eval")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count(f"torchrun started {n} processes") == 1, proc.stderr[-3000:]
    assert not (tmp_path / "ddp").exists()  # refused before the run directory was made


def test_a_replayed_graph_step_equals_the_eager_step_for_the_same_noise():
    """pyrovae.graphs.GraphedStep captured as a CUDA graph, against the same step run eagerly, on
    the tutorial network at batch 128: the same losses, gradients and parameters over five steps."""
    from pyrovae.graphs import GraphedStep, fused_adam
    from pyrovae.objectives import ELBOLoss

    pyro.set_rng_seed(0)
    a = VAE((1, 28, 28), z_dim=50, hidden=(400,)).to(CUDA)
    b = copy.deepcopy(a)
    xs = [torch.rand(128, 1, 28, 28, device=CUDA) for _ in range(5)]
    pa, pb = list(a.parameters()), list(b.parameters())
    eager = GraphedStep(ELBOLoss(a, pyro.infer.Trace_ELBO()), pa, fused_adam(pa, 1e-3), xs[0], binarize=True,
                        graph=False)  # fmt: skip
    graphed = GraphedStep(
        ELBOLoss(b, pyro.infer.Trace_ELBO()), pb, fused_adam(pb, 1e-3), xs[0], binarize=True
    )
    assert graphed.graphed and not eager.graphed
    for x in xs:
        torch.manual_seed(11)
        le = eager(x).item()
        torch.manual_seed(11)
        lg = graphed(x).item()
        assert lg == pytest.approx(le, rel=1e-5)
    for p, q in zip(pa, pb, strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5)
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)
    assert graphed.read()[1] == 0


def test_train_with_the_graphed_step_gives_the_eager_steps_figures(tmp_path, capsys):
    """`--step auto` is the graphed step on one GPU: a β warm-up and a cosine learning rate fed as
    device tensors, the epoch's last batch eager; its figures match `--step eager`'s."""
    data = _data(tmp_path)
    extra = ["--epochs", "3", "--beta-schedule", "linear", "--warmup-epochs", "2", "--lr-schedule", "cosine",
             "--no-eval"]  # fmt: skip
    assert main(_train(data, tmp_path / "eager", "--step", "eager", *extra)) == 0
    run = _train(data, tmp_path / "graphed", *extra)
    run.remove("--quiet")
    assert main(run) == 0
    assert "training step: graphed (a CUDA graph" in capsys.readouterr().out
    rows = [list(csv.DictReader(open(tmp_path / k / "metrics.csv"))) for k in ("eager", "graphed")]
    for a, b in zip(*rows, strict=True):
        for key in ("train_loss", "val_elbo", "beta", "lr"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3), key


def test_pyrovae_svi_on_cuda_captures_a_cuda_graph_and_trains_as_pyro_infer_svi():
    """A user's script with pyrovae.SVI in place of pyro.infer.SVI on the GPU: its graphed step is a
    CUDA graph, and the losses and parameters follow Pyro's SVI on the same batches and noise."""
    import pyrovae

    xs = [torch.bernoulli(torch.rand(64, 1, 28, 28, device=CUDA)) for _ in range(20)]
    out = {}
    for name, make in [("pyro", pyro.infer.SVI), ("ours", lambda *a: pyrovae.SVI(*a, step="graphed"))]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE((1, 28, 28), z_dim=10, hidden=(200,)).to(CUDA)
        svi = make(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
        losses = []
        for x in xs:
            torch.manual_seed(7)
            losses.append(svi.step(x))
        out[name] = losses, [p.detach().clone() for p in vae.parameters()], svi
    assert out["ours"][2].graphed and not out["ours"][2].failed
    assert out["ours"][0] == pytest.approx(out["pyro"][0], rel=1e-4)
    for p, q in zip(out["ours"][1], out["pyro"][1], strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)
