"""The two-stochastic-layer VAE (``--model hierarchical``): its ELBO against a hand computation
over both layers, ancestral sampling through p(z1 | z2), and every command on a trained run."""

import csv
import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyrovae.cli import main
from pyrovae.evaluate import elbo_terms, evaluate, log_likelihood
from pyrovae.loaded import load_run
from pyrovae.posterior import reconstruct, sample_prior
from pyrovae.sites import kl_terms
from pyrovae.variants.hierarchical import HierarchicalVAE, LayerwiseMeanField_ELBO


def _model():
    m = HierarchicalVAE((1, 4, 4), z_dim=2, hidden=(8,))
    with torch.no_grad():  # a p(z1 | z2) that is far from N(0, I), so mistakes show
        m.middle.loc.weight.fill_(1.0)  # mu(z2) = 4 + sum of the body's features of z2
        m.middle.loc.bias.fill_(4.0)
        m.middle.log_scale.bias.fill_(math.log(0.05))
    return m


def _by_hand(m, x):
    """log p(x|z1), log q(z1|x) - log p(z1|z2) at the draws, and KL(q(z2|z1) || N(0, I)) in closed form."""
    q1 = m.q_z1(x)
    z1 = q1.rsample()
    q2 = m.q_z2(z1)
    z2 = q2.rsample()
    recon = m.likelihood(m.decoder(z1)).log_prob(x)
    kl1 = q1.log_prob(z1) - m.middle(z2).log_prob(z1)
    mu, s = q2.base_dist.loc, q2.base_dist.scale
    kl2 = 0.5 * (s**2 + mu**2 - 1 - 2 * s.log()).sum(-1)
    log_p2 = -0.5 * (z2**2 + math.log(2 * math.pi)).sum(-1)
    return recon, kl1, kl2, q2.log_prob(z2) - log_p2


def test_elbo_of_both_layers_matches_a_hand_computation():
    m, x = _model(), torch.bernoulli(torch.full((5, 1, 4, 4), 0.3))
    pyro.set_rng_seed(1)
    recon, kl = elbo_terms(m, x)
    pyro.set_rng_seed(1)
    kls = kl_terms(m, x)
    pyro.set_rng_seed(1)
    r, kl1, kl2, kl2_sampled = _by_hand(m, x)
    assert torch.allclose(recon, r, atol=1e-4)
    # z1: log q - log p at the draw (its prior depends on z2, drawn after it); z2: analytic
    assert torch.allclose(kls["z1"], kl1, atol=1e-4) and torch.allclose(kls["z2"], kl2, atol=1e-4)
    assert torch.allclose(kl, kl1 + kl2, atol=1e-4)
    # the training losses: the mean-field one is the same estimate, Trace_ELBO all sampled
    pyro.set_rng_seed(1)
    mf = LayerwiseMeanField_ELBO().loss(m.model, m.guide, x)
    assert mf == pytest.approx(-(r - kl1 - kl2).sum().item(), rel=1e-5)
    pyro.set_rng_seed(1)
    tr = Trace_ELBO().loss(m.model, m.guide, x)
    assert tr == pytest.approx(-(r - kl1 - kl2_sampled).sum().item(), rel=1e-5)
    # beta scales both layers' KL: recon - beta * KL exactly
    pyro.set_rng_seed(1)
    scaled = LayerwiseMeanField_ELBO().loss(m.model, m.guide, x, beta=0.25)
    assert scaled == pytest.approx(-(r - 0.25 * (kl1 + kl2)).sum().item(), rel=1e-5)


def test_log_likelihood_weighs_both_layers_and_bounds_the_elbo():
    m, x = _model(), torch.bernoulli(torch.full((6, 1, 4, 4), 0.3))
    # K = 1: one importance weight p(x|z1) p(z1|z2) p(z2) / q(z1|x) q(z2|z1), by hand
    pyro.set_rng_seed(2)
    one = log_likelihood(m, x, k=1)
    pyro.set_rng_seed(2)
    r, kl1, _, kl2_sampled = _by_hand(m, x)
    assert torch.allclose(one, r - kl1 - kl2_sampled, atol=1e-3)
    # more samples: a tighter bound than the ELBO (here, with a guide far from the posterior)
    m = HierarchicalVAE((1, 4, 4), z_dim=2, hidden=(8,))
    pyro.set_rng_seed(0)
    elbo = torch.stack([(lambda t: t[0] - t[1])(elbo_terms(m, x)) for _ in range(100)]).mean()
    assert log_likelihood(m, x, k=1000).mean() > elbo


def test_samples_are_drawn_ancestrally_through_p_z1_given_z2():
    m = _model()
    tr = poutine.trace(lambda: sample_prior(m, 7)).get_trace()
    z2, z1 = tr.nodes["z2"]["value"], tr.nodes["z1"]["value"]
    assert z2.shape == (7, 2) and z1.shape == (7, 4)
    # z1 ~ p(z1 | z2) = N(mu(z2), 0.05^2): mu here is 4 + the sum of the body's features
    loc = m.middle(z2).base_dist.loc
    assert (z1 - loc).abs().max() < 0.3 and loc.std(0).min() > 0.1  # and mu depends on z2
    assert z1.mean() > 2  # not N(0, I)
    x = sample_prior(m, 7)
    assert x.shape == (7, 1, 4, 4)
    pyro.set_rng_seed(0)
    x = sample_prior(m, 7)
    pyro.set_rng_seed(0)
    z1 = m.middle(m.top().rsample((7,))).rsample()
    assert torch.allclose(x, m.likelihood.mean(m.decoder(z1)), atol=1e-6)
    # a reconstruction decodes the posterior mean of z1
    data = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    assert torch.allclose(reconstruct(m, data), m.likelihood.mean(m.decoder(m.q_z1(data).mean)), atol=1e-6)


def test_float64_data_stays_float64():
    m = HierarchicalVAE((1, 4, 4), z_dim=2, hidden=(8,)).double()
    x = torch.bernoulli(torch.full((4, 1, 4, 4), 0.5, dtype=torch.float64))
    res = evaluate(m, _split(x), k=5)
    assert math.isfinite(res["log_likelihood"]) and res["layers"]["z2"]["z_dim"] == 2
    assert sample_prior(m, 3).dtype == torch.float64


def _split(x):
    from pyrovae.data import Split

    return Split(x, None)


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_trains_through_the_cli_with_each_objective(tmp_path, tiny_data_file, elbo):
    data = tiny_data_file(tmp_path, n=96, shape=(1, 8, 8))
    out = tmp_path / elbo
    more = ["--num-particles", "3"] if elbo == "iwae" else []
    assert main(["train", "--model", "hierarchical", "--dataset", "file", "--data-file", str(data),
                 "--z-dim", "2", "--hidden", "16", "--batch-size", "16", "--epochs", "3", "--val-size", "16",
                 "--lr", "1e-2", "--elbo", elbo, *more, "--eval-k", "50", "--eval-n-test", "16",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    res = json.loads((out / "eval.json").read_text())
    assert set(res["layers"]) == {"z1", "z2"}
    assert (res["layers"]["z1"]["z_dim"], res["layers"]["z2"]["z_dim"], res["z_dim"]) == (4, 2, 6)
    assert res["kl"] == pytest.approx(res["layers"]["z1"]["kl"] + res["layers"]["z2"]["kl"], abs=1e-4)
    assert res["elbo"] == pytest.approx(res["recon"] - res["kl"], abs=1e-4)
    assert res["log_likelihood"] >= res["elbo_ll_images"]  # K = 50 bounds log p(x) more tightly
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 3
    # the trained model beats a fresh one with the same start (output bias at the data mean) on
    # what it was trained for: the ELBO, or for iwae the importance-weighted bound
    run = load_run(out)
    fresh = HierarchicalVAE((1, 8, 8), z_dim=2, hidden=(16,), activation="softplus", guide_scale="softplus")
    fresh.init_output_bias(run.data.train.x.mean(0))
    pyro.set_rng_seed(0)
    before = evaluate(fresh, run.data.test.subset(slice(0, 16)), k=50)
    key = ("log_likelihood", "log_likelihood") if elbo == "iwae" else ("elbo", "elbo_ll_images")
    assert before[key[0]] < res[key[1]] - 1.0


def test_every_command_works_on_a_two_layer_run(tmp_path, tiny_data_file):
    data = tiny_data_file(tmp_path, n=96, shape=(1, 8, 8))
    out = tmp_path / "run"
    base = ["--dataset", "file", "--data-file", str(data), "--z-dim", "2", "--hidden", "16",
            "--batch-size", "16", "--val-size", "16", "--eval-k", "20", "--quiet"]  # fmt: skip
    assert main(["train", "--model", "hierarchical", "--epochs", "2", *base, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--k", "10", "--n-test", "8", "--quiet"]) == 0
    assert json.loads((out / "eval.json").read_text())["k"] == 10
    assert main(["sample", str(out), "-o", str(tmp_path / "s.png"), "-n", "8"]) == 0
    assert main(["reconstruct", str(out), "-o", str(tmp_path / "r.png"), "-n", "4"]) == 0
    assert main(["inspect", str(out), "--k", "5", "--n", "20"]) == 0
    index = (out / "figures" / "index.md").read_text()
    assert "Prior samples" in index and "(traversal.png)" in index
    assert (
        main(["score", str(out), "--split", "test", "--k", "20", "-o", str(tmp_path / "s.csv"), "--quiet"])
        == 0
    )
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    nll = np.array([float(r["neg_log_likelihood"]) for r in rows])
    nelbo = np.array([float(r["neg_elbo"]) for r in rows])
    assert len(rows) == len(load_run(out).data.test) and nll.mean() <= nelbo.mean()
    assert main(["embed", str(out), "--split", "test", "-o", str(tmp_path / "z.npy"), "--quiet"]) == 0
    z = np.load(tmp_path / "z.npy")
    run = load_run(out)
    assert z.shape == (len(rows), 4)  # the code is z1: the posterior mean of q(z1 | x)
    assert np.allclose(z[:5], run.model.q_z1(run.data.test.x[:5]).mean.detach().numpy(), atol=1e-5)
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 0.001\nhigh = 0.01\nlog = true\n")
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--space", str(space), "--trials", "2", "--out", str(sweep), "--model", "hierarchical",
                 "--epochs", "1", "--no-prune", *base]) == 0  # fmt: skip
    best = json.loads((sweep / "best.json").read_text())
    assert load_run(best["run"]).model.variant == "hierarchical" and math.isfinite(best["value"])


def test_options_it_cannot_use_are_refused(tmp_path, capsys, tiny_data_file):
    data = tiny_data_file(tmp_path)
    for extra, message in [(["--conditional"], "--conditional belongs to model conditional"), (["--guide", "iaf"], "drop --guide iaf"),
                           (["--prior", "vamp"], "drop --prior vamp"),
                           (["--tc-beta", "6"], "model hierarchical cannot use --tc-beta: β-TCVAE")]:  # fmt: skip
        code = main(["train", "--model", "hierarchical", "--dataset", "file", "--data-file", str(data),
                     "--out", str(tmp_path / "r"), "--quiet", *extra])  # fmt: skip
        assert code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "r").exists()
