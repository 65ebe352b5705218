"""The inspection API on a tiny trained model, and `pyrovae inspect`."""

import pytest
import torch
from conftest import tiny_data_file

from pyrovae import posterior as P
from pyrovae import train
from pyrovae.cli import main
from pyrovae.config import Config
from pyrovae.runs import load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("post")
    data = tiny_data_file(tmp, n=240, classes=3)
    cfg = Config(
        dataset="file",
        data_file=str(data),
        z_dim=3,
        hidden=[32],
        batch_size=16,
        val_size=24,
        epochs=15,
        lr=3e-3,
    )
    train(cfg, tmp / "run", progress=False)
    return load_run(tmp / "run")


def test_encode_and_samples_shapes_and_determinism(run):
    x = run.data.test.x[:5]
    q = P.encode(run.model, x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    torch.manual_seed(1)
    a = P.posterior_samples(run.model, x, num_samples=4)
    torch.manual_seed(1)
    b = P.posterior_samples(run.model, x, num_samples=4)
    assert a.shape == (4, 5, 3) and torch.equal(a, b)
    assert P.reconstruct(run.model, x).shape == x.shape
    assert set(P.reconstruct(run.model, x, sample=True).unique().tolist()) <= {0.0, 1.0}
    assert P.sample_prior(run.model, 7).shape == (7, 1, 8, 8)


def test_dtype_follows_the_input(run):
    vae = run.model.double()
    try:
        x = run.data.test.x[:4].double()
        assert P.reconstruct(vae, x).dtype == torch.float64
        assert P.posterior_predictive(vae, x, num_samples=2)["x"].dtype == torch.float64
        assert P.interpolate(vae, x[0], x[1], 5)[0].dtype == torch.float64
        assert P.traverse(vae, x[0], [0, 2])[1].dtype == torch.float64
        assert P.anomaly_scores(vae, x, k=3)["neg_log_likelihood"].dtype == torch.float64
        assert P.sample_prior(vae, 3).dtype == torch.float64
    finally:
        vae.float()


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_endpoints_are_the_encodings(run, method):
    x = run.data.test.x[:2]
    path, images = P.interpolate(run.model, x[0], x[1], steps=6, method=method)
    means = run.model.encode(x).mean
    assert torch.allclose(path[0], means[0], atol=1e-5) and torch.allclose(path[-1], means[1], atol=1e-5)
    assert images.shape == (6, 1, 8, 8)
    if method == "linear":
        assert torch.allclose(path[2] - path[1], path[4] - path[3], atol=1e-5)


def test_traversal_changes_only_the_chosen_dimension(run):
    x = run.data.test.x[0]
    values = torch.linspace(-2, 2, 5)
    z, images = P.traverse(run.model, x, dims=[1, 2], values=values)
    mean = run.model.encode(x[None]).mean[0]
    assert z.shape == (2, 5, 3) and images.shape == (2, 5, 1, 8, 8)
    for i, d in enumerate([1, 2]):
        assert torch.allclose(z[i, :, d], values)
        others = [j for j in range(3) if j != d]
        assert torch.allclose(z[i][:, others], mean[others].expand(5, -1))


def test_embed_and_posterior_predictive(run):
    x, y = run.data.test.x, run.data.test.y
    z = P.embed(run.model, x, y, batch_size=7)
    assert z.shape == (len(x), 3)
    assert torch.allclose(z[:7], run.model.encode(x[:7]).mean, atol=1e-6)
    pp = P.posterior_predictive(run.model, x[:3], num_samples=5)
    assert pp["x"].shape == (5, 3, 1, 8, 8) and pp["z"].shape == (5, 3, 3)


def test_anomaly_scores_rank_corrupted_images_above_clean(run):
    clean = run.data.test.x[:20]
    g = torch.Generator().manual_seed(0)
    corrupted = torch.where(
        torch.rand(clean.shape, generator=g) < 0.3, 1 - clean, clean
    )  # flip 30% of pixels
    scores = P.anomaly_scores(run.model, torch.cat([clean, corrupted]), k=20)
    for s in scores.values():
        assert s[20:].mean() > s[:20].mean() + 5
        assert (s[20:] > s[:20].median()).float().mean() > 0.9
    assert (scores["neg_log_likelihood"] <= scores["neg_elbo"] + 1.0).float().mean() > 0.9  # a tighter bound


def test_inspect_writes_every_figure_and_an_index(run, capsys):
    assert main(["inspect", str(run.path), "--k", "5", "--n", "40"]) == 0
    figs = run.path / "figures"
    names = ["samples.png", "reconstructions.png", "posterior_predictive.png", "interpolation.png", "traversal.png",
             "latent_map.png", "kl_per_dim.png", "training.png", "anomalies.png"]  # fmt: skip
    index = (figs / "index.md").read_text()
    for n in names:
        assert (figs / n).read_bytes()[:4] == b"\x89PNG", n
        assert f"]({n})" in index


@pytest.mark.parametrize("prior", ["normal", "conditional"])
def test_class_conditional_samples_each_get_their_own_z(prior):
    from pyrovae.build import build_model
    from pyrovae.posterior import sample_prior

    vae = build_model(Config(z_dim=3, hidden=[8], conditional=True, prior=prior), (1, 4, 4), num_classes=3)
    images = sample_prior(vae, 16, torch.full((16,), 2))
    assert images.shape == (16, 1, 4, 4)
    assert (images - images[0]).abs().flatten(1).amax(1)[1:].min() > 0  # no two draws alike


def _drawn(monkeypatch):
    """Every figure plots.save writes, drawn as saved (after its layout)."""
    from pyrovae import plots

    figs, real = [], plots.save

    def save(fig, path):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        out = real(fig, path)
        FigureCanvasAgg(fig).draw()
        figs.append(fig)
        return out

    monkeypatch.setattr(plots, "save", save)
    return figs


def _title_inside(fig) -> bool:
    ax = fig.axes[0]
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= fig.bbox.x0 - 1 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1


def test_figure_titles_are_not_clipped_and_the_latent_map_names_each_class(tmp_path, monkeypatch):
    from pyrovae import plots

    figs = _drawn(monkeypatch)
    x = torch.rand(32, 1, 28, 28)
    plots.image_grid(x, tmp_path / "a.png", "Most anomalous (top 2 rows) and most typical (bottom 2 rows) "
                     "of 2000 test images", nrow=8)  # fmt: skip
    labels = torch.arange(300) % 3
    z = torch.randn(300, 5) + labels[:, None]
    plots.latent_map(z, labels, tmp_path / "m.png", method="pca")  # the longest title: PCA's variances
    assert all(_title_inside(f) for f in figs)
    latent = figs[-1]
    assert len(latent.axes) == 1  # no colour bar, whose ticks fall between the classes
    legend = latent.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2"]
    assert len({tuple(h.get_facecolor()[0]) for h in legend.legend_handles}) == 3  # one colour each


def test_inspect_says_over_which_images_it_counts_active_units(run):
    import json

    assert main(["inspect", str(run.path), "--k", "5", "--n", "10"]) == 0
    index = (run.path / "figures" / "index.md").read_text()
    res = json.loads((run.path / "eval.json").read_text())
    assert "active over these 10 images" in index
    assert f"eval.json counts {res['active_units']} over all {res['n_images']} test images" in index
