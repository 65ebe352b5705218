"""The inspection API on a tiny trained model, and `pyrovae inspect`."""

import pytest
import torch

from pyrovae import posterior as P
from pyrovae.config import Config


def test_encode_and_samples_shapes_and_determinism(tiny_run):
    x = tiny_run.data.test.x[:5]
    q = P.encode(tiny_run.model, x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    torch.manual_seed(1)
    a = P.posterior_samples(tiny_run.model, x, num_samples=4)
    torch.manual_seed(1)
    b = P.posterior_samples(tiny_run.model, x, num_samples=4)
    assert a.shape == (4, 5, 3) and torch.equal(a, b)
    assert P.reconstruct(tiny_run.model, x).shape == x.shape
    assert set(P.reconstruct(tiny_run.model, x, sample=True).unique().tolist()) <= {0.0, 1.0}
    assert P.sample_prior(tiny_run.model, 7).shape == (7, 1, 8, 8)


def test_dtype_follows_the_input(tiny_run):
    vae = tiny_run.model.double()
    try:
        x = tiny_run.data.test.x[:4].double()
        assert P.reconstruct(vae, x).dtype == torch.float64
        assert P.posterior_predictive(vae, x, num_samples=2)["x"].dtype == torch.float64
        assert P.interpolate(vae, x[0], x[1], 5)[0].dtype == torch.float64
        assert P.traverse(vae, x[0], [0, 2])[1].dtype == torch.float64
        assert P.anomaly_scores(vae, x, k=3)["neg_log_likelihood"].dtype == torch.float64
        assert P.sample_prior(vae, 3).dtype == torch.float64
    finally:
        vae.float()


def test_float64_data_is_taken_in_a_float32_models_dtype(tiny_run):
    from pyrovae.evaluate import elbo_terms, kl_per_dim, log_likelihood, posterior_mean

    vae, x = tiny_run.model, tiny_run.data.test.x[:8]
    calls = {
        "encode": lambda x: P.encode(vae, x).mean,
        "posterior_samples": lambda x: P.posterior_samples(vae, x, num_samples=2),
        "reconstruct": lambda x: P.reconstruct(vae, x),
        "interpolate": lambda x: P.interpolate(vae, x[0], x[1], 3)[1],
        "traverse": lambda x: P.traverse(vae, x[0], [0, 1])[1],
        "posterior_predictive": lambda x: P.posterior_predictive(vae, x, num_samples=2)["x"],
        "embed": lambda x: P.embed(vae, x),
        "anomaly_scores": lambda x: P.anomaly_scores(vae, x, k=2)["neg_log_likelihood"],
        "elbo_terms": lambda x: elbo_terms(vae, x)[0],
        "log_likelihood": lambda x: log_likelihood(vae, x, k=2),
        "posterior_mean": lambda x: posterior_mean(vae, x),
        "kl_per_dim": lambda x: kl_per_dim(vae, x),
    }
    for name, call in calls.items():
        torch.manual_seed(0)
        got = call(x.double())
        torch.manual_seed(0)
        assert got.dtype == torch.float32 and torch.allclose(got, call(x), atol=1e-5), name
        torch.manual_seed(0)
        from_numpy = call(x.double().numpy())  # as docs/inspection.md promises
        assert from_numpy.dtype == torch.float32 and torch.allclose(from_numpy, got, atol=1e-5), name


def test_a_conditional_models_labels_may_come_from_numpy_or_a_list(tiny_conditional_run):
    """Every helper takes labels as the data may come, as docs/inspection.md says of x: encode and
    reconstruct failed on a NumPy array of labels ('no attribute is_floating_point')."""
    vae, test = tiny_conditional_run.model, tiny_conditional_run.data.test
    x, y = test.x[:6], test.y[:6]
    calls = {
        "encode": lambda y: P.encode(vae, x, y).mean,
        "posterior_samples": lambda y: P.posterior_samples(vae, x, y, num_samples=2),
        "reconstruct": lambda y: P.reconstruct(vae, x, y),
        "posterior_predictive": lambda y: P.posterior_predictive(vae, x, y, num_samples=2)["x"],
        "sample_prior": lambda y: P.sample_prior(vae, y=y),
        "embed": lambda y: P.embed(vae, x, y),
        "anomaly_scores": lambda y: P.anomaly_scores(vae, x, y, k=2)["neg_elbo"],
    }
    for name, call in calls.items():
        torch.manual_seed(0)
        want = call(y)
        for given in (y.numpy(), y.tolist()):
            torch.manual_seed(0)
            assert torch.equal(call(given), want), name


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_endpoints_are_the_encodings(tiny_run, method):
    x = tiny_run.data.test.x[:2]
    path, images = P.interpolate(tiny_run.model, x[0], x[1], steps=6, method=method)
    means = tiny_run.model.encode(x).mean
    assert torch.allclose(path[0], means[0], atol=1e-5) and torch.allclose(path[-1], means[1], atol=1e-5)
    assert images.shape == (6, 1, 8, 8)
    if method == "linear":
        assert torch.allclose(path[2] - path[1], path[4] - path[3], atol=1e-5)


def test_the_interpolation_methods_the_docs_name_are_accepted(tiny_run):
    """docs/inspection.md said ``interpolate`` (with ``slerp``); ``method="slerp"`` is refused."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "inspection.md").read_text()
    methods = re.findall(r'`method="(\w+)"`', doc)
    assert methods == ["linear", "spherical"]
    x = tiny_run.data.test.x[:2]
    for method in methods:
        assert P.interpolate(tiny_run.model, x[0], x[1], steps=3, method=method)[1].shape == (3, 1, 8, 8)


def test_traversal_changes_only_the_chosen_dimension(tiny_run):
    x = tiny_run.data.test.x[0]
    values = torch.linspace(-2, 2, 5)
    z, images = P.traverse(tiny_run.model, x, dims=[1, 2], values=values)
    mean = tiny_run.model.encode(x[None]).mean[0]
    assert z.shape == (2, 5, 3) and images.shape == (2, 5, 1, 8, 8)
    for i, d in enumerate([1, 2]):
        assert torch.allclose(z[i, :, d], values)
        others = [j for j in range(3) if j != d]
        assert torch.allclose(z[i][:, others], mean[others].expand(5, -1))


def test_embed_and_posterior_predictive(tiny_run):
    x, y = tiny_run.data.test.x, tiny_run.data.test.y
    z = P.embed(tiny_run.model, x, y, batch_size=7)
    assert z.shape == (len(x), 3)
    assert torch.allclose(z[:7], tiny_run.model.encode(x[:7]).mean, atol=1e-6)
    pp = P.posterior_predictive(tiny_run.model, x[:3], num_samples=5)
    assert pp["x"].shape == (5, 3, 1, 8, 8) and pp["z"].shape == (5, 3, 3)


def test_anomaly_scores_rank_corrupted_images_above_clean(tiny_run):
    clean = tiny_run.data.test.x[:20]
    g = torch.Generator().manual_seed(0)
    corrupted = torch.where(
        torch.rand(clean.shape, generator=g) < 0.3, 1 - clean, clean
    )  # flip 30% of pixels
    scores = P.anomaly_scores(tiny_run.model, torch.cat([clean, corrupted]), k=20)
    for s in scores.values():
        assert s[20:].mean() > s[:20].mean() + 5
        assert (s[20:] > s[:20].median()).float().mean() > 0.9
    assert (scores["neg_log_likelihood"] <= scores["neg_elbo"] + 1.0).float().mean() > 0.9  # a tighter bound


@pytest.mark.parametrize("prior", ["normal", "conditional"])
def test_class_conditional_samples_each_get_their_own_z(prior):
    from pyrovae.build import build_model
    from pyrovae.posterior import sample_prior

    vae = build_model(Config(z_dim=3, hidden=[8], conditional=True, prior=prior), (1, 4, 4), num_classes=3)
    images = sample_prior(vae, 16, torch.full((16,), 2))
    assert images.shape == (16, 1, 4, 4)
    assert (images - images[0]).abs().flatten(1).amax(1)[1:].min() > 0  # no two draws alike
