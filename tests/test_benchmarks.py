"""The scripts in ``benchmarks/`` run as docs/experiments.md and RESULTS.md say, and race like against like."""

import importlib.util
import json
from pathlib import Path

import pyro
import pytest
import torch
from torch.distributions import kl_divergence

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A benchmark script loaded as a module (``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lean_loop_is_pyrovaes_network_and_objective():
    """At z = the guide's mean, the lean loop's reconstruction and analytic KL equal pyrovae's."""
    T = _script("throughput")
    vae = T._fresh(T.Config(**T.PRESETS["tutorial"]))
    x = torch.bernoulli(torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    for softplus in (torch.nn.functional.softplus, T.fast_softplus):
        lean = T.LeanVAE(softplus=softplus).copy_from(vae)
        h = softplus(lean.enc(x.flatten(1)))
        loc, log_scale = lean.loc(h), lean.log_scale(h)
        logits = lean.dec2(softplus(lean.dec1(loc)))
        recon = (x.flatten(1) * logits - torch.nn.functional.softplus(logits)).sum()
        kl = 0.5 * (loc.pow(2) + (2 * log_scale).exp() - 1).sum() - log_scale.sum()
        q = vae.encode(x)
        torch.testing.assert_close(q.mean, loc)
        torch.testing.assert_close(q.base_dist.scale, log_scale.exp())
        torch.testing.assert_close(vae.decode(q.mean).log_prob(x).sum(), recon, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(kl_divergence(q, vae.prior_dist(like=x)).sum(), kl, rtol=1e-5, atol=1e-4)


def test_throughput_script_runs_every_contestant(capsys):
    T = _script("throughput")
    T.main(
        T.parse_args(["--threads", "1", "--steps", "2", "--rounds", "2", "--batch-size", "8", "--decompose"])
    )
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "x (" in line]
    assert len(rows) == 22, out
    # the figures name what they were measured on: processor, threads, versions
    from pyrovae.machine import processor

    assert f"{processor()}, " in out and "; 1 torch thread;" in out and f"pyro-ppl {pyro.__version__}" in out
    baseline = next(r for r in rows if r.startswith("lean hand loop (torch Adam)"))
    assert "1.000x (1.00-1.00)" in baseline  # the baseline against itself
    for row in rows:
        ratio = float(row.split()[-4].rstrip("x"))
        assert 0 < ratio < 100, row
    assert "note: these ratios are noise, not figures" in out  # 2 steps x 2 rounds of 8 images


def test_throughput_script_says_nothing_of_noise_for_a_long_enough_race(capsys, monkeypatch):
    T = _script("throughput")
    monkeypatch.setattr(T, "MIN_ROUND_SECONDS", 0.0)  # rounds of any length count here
    T.main(
        T.parse_args(
            [
                "--threads",
                "1",
                "--steps",
                "2",
                "--rounds",
                "3",
                "--batch-size",
                "8",
                "--only",
                "lean",
                "--block",
                "1",
            ]
        )
    )
    out = capsys.readouterr().out
    assert "lean hand loop (torch Adam)" in out and "noise" not in out


def test_plain_pyro_vae_is_pyrovaes_program():
    """The plain Pyro contestant scores the same ELBO as pyrovae's model and guide: same weights,
    same noise, same Trace_ELBO loss (on torch's kernels and on pyrovae's)."""
    import pyro

    T = _script("throughput")
    vae = T._fresh(T.Config(**T.PRESETS["tutorial"]))
    x = torch.bernoulli(torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2)))
    elbo = pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(3)
    expected = elbo.loss(vae.model, vae.guide, x)
    for fast in (False, True):
        lean = T.LeanVAE(softplus=T.fast_softplus if fast else torch.nn.functional.softplus).copy_from(vae)
        plain = T.PlainPyroVAE(lean, fast)
        pyro.set_rng_seed(3)
        got = elbo.loss(plain.model, plain.guide, x)
        assert abs(got - expected) < 1e-3 * abs(expected), (fast, got, expected)
    pyro.set_rng_seed(4)  # other noise, another loss: the comparison above is not vacuous
    assert abs(elbo.loss(plain.model, plain.guide, x) - expected) > 1e-3


def test_only_races_the_named_rows_against_the_lean_loops(capsys):
    T = _script("throughput")
    argv = ["--threads", "1", "--steps", "2", "--rounds", "2", "--batch-size", "8", "--decompose"]
    T.main(T.parse_args([*argv, "--only", "user's SVI script (Trace_ELBO),plain Pyro"]))
    rows = [line.split("  ")[0] for line in capsys.readouterr().out.splitlines() if "x (" in line]
    assert rows == ["lean hand loop (torch Adam)", "lean hand loop, fused Adam", "user's SVI script (Trace_ELBO)",
                    "plain Pyro VAE, no pyrovae (Trace_ELBO)", "plain Pyro VAE on pyrovae's kernels"]  # fmt: skip
    with pytest.raises(SystemExit, match="--only plain pyro: no contestant's name contains it"):
        T.main(
            T.parse_args([*argv, "--only", "plain pyro"])
        )  # a part no name contains (here: wrong case) is refused


def test_users_svi_step_issues_no_more_tensor_ops_than_plain_pyro():
    """A user's ``SVI.step`` on pyrovae's VAE runs no more tensor operations than the same VAE
    written directly in Pyro on the same kernels: pyrovae's model and guide add Python, not work."""
    import collections

    import pyro
    from torch.profiler import ProfilerActivity, profile

    T = _script("throughput")
    x = torch.bernoulli(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))

    def aten_ops(model, guide):
        step = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO()).step
        step(x)  # the first step creates the optimizers
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(x)
        return collections.Counter(
            {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
        )

    vae = T._fresh(T.Config(**T.PRESETS["tutorial"]))
    plain = T.PlainPyroVAE(T.LeanVAE(softplus=T.fast_softplus).copy_from(vae), fast=True)
    ours, theirs = aten_ops(vae.model, vae.guide), aten_ops(plain.model, plain.guide)
    for op in ("aten::mm", "aten::addmm", "aten::exp_", "aten::log_", "aten::sigmoid"):
        assert ours[op] == theirs[op] > 0, op
    assert sum(ours.values()) <= sum(theirs.values()), (ours - theirs, theirs - ours)


def test_kernel_races_compare_equal_functions(capsys):
    """Each race in ``benchmarks/kernels.py`` times two versions of the same function."""
    K = _script("kernels")
    eta = torch.cat([torch.linspace(-40, 40, 801), torch.tensor([0.0, 0.4999, -0.5001, 0.05])])[:, None]
    x = torch.tensor([0.0, 0.2, 0.5, 1.0])
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        before = K._CBBefore(logits=eta.to(dtype)).log_prob(x.to(dtype))
        now = K.pvdist.ContinuousBernoulli(logits=eta.to(dtype)).log_prob(x.to(dtype))
        torch.testing.assert_close(now, before, rtol=tol, atol=tol)
    K.main(K.parse_args(["--batch", "4", "--steps", "2", "--repeats", "2", "--threads", "1"]))
    rows = [line for line in capsys.readouterr().out.splitlines() if "x (" in line]
    assert len(rows) == 4 and all(float(r.split()[-2].rstrip("x")) > 0 for r in rows), rows


def test_epoch_time_trains_both_loops_and_agrees_on_log_likelihood(mnist_dir, capsys):
    """``benchmarks/epoch_time.py`` on a small budget: pyrovae's ``log_likelihood`` and the bare
    estimator give the same log p(x) (same draws), and pyrovae's ELBO is no more than 5 nats
    below the Pyro-example loop's after the same training."""
    E = _script("epoch_time")
    res = E.main(E.parse_args(["--epochs", "1", "--train-size", "1000", "--k", "10", "--n-test", "50",
                               "--data-dir", str(mnist_dir), "--threads", "1", "--eval-repeats", "2"]))  # fmt: skip
    ll_ours, ll_bare = res["eval"]["pyrovae log_likelihood"][1], res["eval"]["bare forward pass"][1]
    assert abs(ll_ours - ll_bare) < 1e-3 and -400 < ll_ours < -100, res
    (_, ex_elbo), (_, pv_elbo) = res["example"], res["pyrovae"]
    assert -400 < ex_elbo < -100 and pv_elbo > ex_elbo - 5, res
    assert "1000 images/epoch" in capsys.readouterr().out


def test_vamp_eval_times_both_priors():
    """``benchmarks/vamp_eval.py`` on a small budget: both models' log p(x) of binary images is a
    log-probability (below 0), and the two priors give different values."""
    V = _script("vamp_eval")
    res = V.main(
        V.parse_args(["--k", "5", "--n", "20", "--repeats", "1", "--pseudo-inputs", "10", "--threads", "1"])
    )
    normal, vamp = res["log_px"]["normal"], res["log_px"]["vamp"]
    assert -2000 < normal < 0 and -2000 < vamp < 0 and normal != vamp, res
    assert res["ratio"] > 0 and set(res["seconds"]) == {"normal", "vamp"}


def test_vamp_train_races_the_two_mixtures_on_the_same_loss(capsys):
    """``benchmarks/vamp_train.py`` on a small budget: the two VampPrior steps start from the same
    parameters and give the same first loss; every contestant is timed against the old mixture."""
    V = _script("vamp_train")
    res = V.main(V.parse_args(["--steps", "2", "--rounds", "1", "--batch-size", "8", "--pseudo-inputs", "20",
                               "--threads", "1"]))  # fmt: skip
    first, again = res["first_losses"]
    assert first == pytest.approx(again, rel=1e-4) and first > 0
    assert res["ratio"]["VampPrior, MixtureSameFamily"] == 1.0 and all(
        v > 0 for v in res["ms_per_step"].values()
    )
    assert f"first losses {first / 8:.4f}" in capsys.readouterr().out


def test_gpu_benchmark_races_every_contestant_and_its_estimators_agree():
    """``benchmarks/gpu.py`` on the CPU with a tiny budget (graphs need CUDA: the lean graphed loop
    is left out there and pyrovae's graphed step runs eagerly): every other contestant is timed
    and both estimators give the same log p(x) from the same draws."""
    G = _script("gpu")
    res = G.main(G.parse_args(["--device", "cpu", "--synthetic", "--steps", "2", "--rounds", "1",
                               "--batch-sizes", "16", "--k", "5", "--n-eval", "20", "--batch-eval", "10",
                               "--eval-repeats", "1"]))  # fmt: skip
    assert set(res["train"][16]) == {"lean eager", "pyrovae eager", "pyrovae graphed", "user's SVI script"}
    assert all(v > 0 for v in res["train"][16].values())
    (_, ours), (_, bare) = res["eval"]["pyrovae log_likelihood"], res["eval"]["bare forward pass"]
    assert abs(ours - bare) < 1e-3 and ours < 0


def test_nll_table_trains_every_row_at_one_budget(mnist_dir, tmp_path, capsys):
    import pyro

    from pyrovae import Split, evaluate, load_run

    N = _script("nll")
    out = tmp_path / "nll"
    res = N.main(N.parse_args(["--epochs", "2", "--train-size", "60", "--k", "5", "--n-test", "10",
                               "--batch-size", "30", "--lr-schedule", "cosine",
                               "--pseudo-inputs", "6", "--device", "cpu", "--data-dir", str(mnist_dir),
                               "--out", str(out)]))  # fmt: skip
    assert json.loads((out / "nll.json").read_text()) == res
    assert [r["row"] for r in res] == [name for name, _, _ in N.ROWS]
    table = capsys.readouterr().out
    assert "| IWAE k=50, 2 layers |" in table and "K=5, first 10 test images" in table
    assert "(cosine schedule), batches of 30, VampPrior of 6 pseudo-inputs;" in table
    assert [r.get("pseudo_inputs") for r in res] == [None] * 6 + [6, None]  # only the VampPrior's budget
    for r, (name, options, published) in zip(res, N.ROWS, strict=True):
        assert r["published"] == published and r["k"] == 5 and r["n_test"] == 10
        run = out / N.run_dir(name)
        trained = load_run(run)  # its best parameters, evaluated as the script says: seed 0, first 10 images
        pyro.set_rng_seed(0)
        again = evaluate(trained.model, Split(trained.data.test.x[:10], None), k=5, ll_batch_size=20)
        assert r["nll"] == pytest.approx(-again["log_likelihood"]) and r["neg_elbo"] == pytest.approx(
            -again["elbo"]
        )
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["epochs"] == 2 and cfg["train_size"] == 60 and all(cfg[k] == v for k, v in options.items())
        assert (
            (cfg["batch_size"], cfg["lr_schedule"]) == (30, "cosine") == (r["batch_size"], r["lr_schedule"])
        )
        lrs = [float(row.split(",")[8]) for row in (run / "metrics.csv").read_text().splitlines()[1:]]
        assert lrs == pytest.approx([1e-3, 0.5e-3])  # cosine over 2 epochs: the full lr, then half
        assert 0 < r["train_cpu_minutes"] <= r["seconds"] * 2 / 60  # at most two threads' CPU time
        assert r["nll"] <= r["neg_elbo"] + 1.0  # K = 5 bounds log p(x) at least as tightly as the ELBO
    assert (res[3]["z_dim"], res[0]["z_dim"]) == (150, 50)  # two layers: z1 100 + z2 50


def test_nll_rows_from_separate_processes_make_one_table_and_resume(mnist_dir, tmp_path, capsys, monkeypatch):
    """Rows run apart (``--only``) land in one nll.json; ``--resume`` keeps a finished row, continues
    a row from its checkpoint with its CPU time added up, and counts an interrupted epoch."""
    from pyrovae import ConfigError
    from pyrovae.fit import Interrupted

    N = _script("nll")
    out = tmp_path / "nll"
    common = ["--train-size", "60", "--k", "5", "--n-test", "10", "--batch-size", "30", "--device", "cpu",
              "--data-dir", str(mnist_dir), "--out", str(out)]  # fmt: skip
    vae = out / N.run_dir("VAE, 1 layer")
    [one] = N.main(N.parse_args(["--epochs", "1", "--only", "VAE, 1 layer", *common]))
    cpu_one = json.loads((vae / "cpu.json").read_text())["cpu_seconds"]
    assert one["epochs"] == 1 and one["train_cpu_minutes"] == pytest.approx(cpu_one / 60)
    first_epoch = (vae / "metrics.csv").read_text().splitlines()[1]  # its wall seconds differ in a new run

    # a longer budget: the row continues from its one-epoch checkpoint instead of starting over
    [two] = N.main(N.parse_args(["--epochs", "2", "--only", "VAE, 1 layer", "--resume", *common]))
    metrics = (vae / "metrics.csv").read_text().splitlines()
    assert [m.split(",")[0] for m in metrics[1:]] == ["1", "2"] and metrics[1] == first_epoch
    assert two["epochs"] == 2 and two["train_cpu_minutes"] > one["train_cpu_minutes"]
    assert json.loads((vae / "cpu.json").read_text())["epoch"] == 2

    # another row, another process: the finished one is kept as it was, and the table holds both
    stamp = (vae / "metrics.csv").stat().st_mtime_ns
    capsys.readouterr()
    both = N.main(N.parse_args(["--epochs", "2", "--only", "IAF", "--resume", *common]))
    assert [r["row"] for r in both] == ["VAE, 1 layer", "IAF guide, 1 layer"] and both[0] == two
    printed = capsys.readouterr().out
    assert "| VAE, 1 layer |" in printed and "| IAF guide, 1 layer |" in printed
    assert (
        "not yet measured at this budget in" in printed and json.loads((out / "nll.json").read_text()) == both
    )
    assert N.main(N.parse_args(["--epochs", "2", "--only", "VAE, 1 layer", "--resume", *common])) == both
    assert (vae / "metrics.csv").stat().st_mtime_ns == stamp  # neither retrained nor rescored
    assert "VAE, 1 layer: kept from" in capsys.readouterr().out

    # fewer epochs than the row has trained: refused, and its result stays
    with pytest.raises(ConfigError, match="epochs 1 is fewer than the 2"):
        N.main(N.parse_args(["--epochs", "1", "--only", "VAE, 1 layer", "--resume", *common]))
    assert json.loads((vae / "nll-row.json").read_text()) == two

    # a signal during training: the checkpoint holds part of an epoch, so its CPU time is counted too
    def interrupted(cfg, folder, **kw):
        raise Interrupted("stopped by signal 15")

    monkeypatch.setattr(N, "train", interrupted)
    with pytest.raises(Interrupted):
        N.main(N.parse_args(["--epochs", "3", "--only", "VAE, 1 layer", "--resume", *common]))
    counted = json.loads((vae / "cpu.json").read_text())
    assert counted["epoch"] == "interrupted" and counted["cpu_seconds"] >= two["train_cpu_minutes"] * 60
    assert not (vae / "nll-row.json").exists()  # trained since: the row is measured again


def test_nll_rows_with_kl_warmup_are_their_own_budget(mnist_dir, tmp_path, capsys):
    """``--warmup-epochs`` trains every row with a linear β ramp, says so in the table, keeps it in the
    row's budget (a row without warm-up is another measurement) and prints each layer's active units."""
    N = _script("nll")
    out = tmp_path / "nll"
    common = ["--epochs", "2", "--train-size", "60", "--k", "5", "--n-test", "10", "--batch-size", "30",
              "--device", "cpu", "--data-dir", str(mnist_dir), "--out", str(out), "--only", "VAE, 2 layers"]  # fmt: skip
    rows = N.main(N.parse_args([*common[:-1], "2 layers", "--warmup-epochs", "4"]))  # the IWAE rows too
    assert [r["row"] for r in rows] == ["VAE, 2 layers", "IWAE k=5, 2 layers", "IWAE k=50, 2 layers"]
    for r in rows:
        run = out / N.run_dir(r["row"])
        cfg = json.loads((run / "config.json").read_text())
        assert (cfg["beta_schedule"], cfg["warmup_epochs"], r["warmup_epochs"]) == ("linear", 4.0, 4.0)
        betas = [float(m.split(",")[6]) for m in (run / "metrics.csv").read_text().splitlines()[1:]]
        assert 0 < betas[0] < betas[1] < 0.5  # half of a 4-epoch ramp after 2 epochs
    row = rows[0]
    assert set(row["layers"]) == {"z1", "z2"} and row["layers"]["z2"].endswith("/50")
    assert sum(int(u.split("/")[0]) for u in row["layers"].values()) == row["active_units"]
    printed = capsys.readouterr().out
    assert "linear KL warm-up over 4 epochs" in printed
    assert f"| {row['active_units']}/150 (z1 {row['layers']['z1']}, z2 {row['layers']['z2']}) |" in printed
    # the same row without warm-up is another measurement: --resume neither keeps nor continues it
    from pyrovae import ConfigError

    with pytest.raises(ConfigError, match="beta_schedule"):
        N.main(N.parse_args([*common, "--resume"]))
    assert "VAE, 2 layers: kept from" not in capsys.readouterr().out
