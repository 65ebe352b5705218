"""`pyrovae inspect` and its figures on a tiny trained model."""

import torch

from pyrovae.cli import main


def test_inspect_writes_every_figure_and_an_index(tiny_run, capsys):
    assert main(["inspect", str(tiny_run.path), "--k", "5", "--n", "40"]) == 0
    figs = tiny_run.path / "figures"
    names = ["samples.png", "reconstructions.png", "posterior_predictive.png", "interpolation.png", "traversal.png",
             "latent_map.png", "kl_per_dim.png", "training.png", "anomalies.png"]  # fmt: skip
    index = (figs / "index.md").read_text()
    for n in names:
        assert (figs / n).read_bytes()[:4] == b"\x89PNG", n
        assert f"]({n})" in index


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


def test_inspect_says_over_which_images_it_counts_active_units(tiny_run):
    import json

    assert main(["inspect", str(tiny_run.path), "--k", "5", "--n", "10"]) == 0
    index = (tiny_run.path / "figures" / "index.md").read_text()
    res = json.loads((tiny_run.path / "eval.json").read_text())
    assert "active over these 10 images" in index
    assert f"eval.json counts {res['active_units']} over all {res['n_images']} test images" in index


def test_a_traversal_without_a_kl_per_dimension_ranks_the_dimensions_by_activity(tmp_path, tiny_data_file,
                                                                                 tiny_config, monkeypatch):  # fmt: skip
    """A VampPrior has no closed-form KL per dimension: the traversal then shows the dimensions whose
    posterior means vary most over the test images (it showed dimensions 0-7, said to be by KL)."""
    from pyrovae import inspect_run, train
    from pyrovae.loaded import load_run
    from pyrovae.posterior import embed

    cfg = tiny_config(tiny_data_file(tmp_path), prior="vamp", pseudo_inputs=4, z_dim=12, epochs=2)
    train(cfg, tmp_path / "run", progress=False, evaluate=False)
    shown, real = [], inspect_run.traverse
    monkeypatch.setattr(
        inspect_run, "traverse", lambda vae, x, dims, **k: shown.append(dims) or real(vae, x, dims, **k)
    )
    assert main(["inspect", str(tmp_path / "run"), "--k", "5", "--n", "30"]) == 0
    run = load_run(tmp_path / "run")
    spread = embed(run.model, run.data.test.x[:30]).var(0)
    assert shown == [spread.argsort(descending=True)[:8].tolist()]
    assert shown[0] != list(range(8))
    assert "most active" in (tmp_path / "run" / "figures" / "index.md").read_text()


def test_a_conditional_run_interpolates_between_two_images_of_one_class(tiny_conditional_run, monkeypatch):
    """The path is decoded with one label: its second end was an image of another class, so the
    figure showed the first class throughout, said to be a path between the two images."""
    from pyrovae import inspect_run

    ends, real = [], inspect_run.interpolate
    monkeypatch.setattr(
        inspect_run,
        "interpolate",
        lambda vae, x1, x2, **k: ends.append((x2, k["y"])) or real(vae, x1, x2, **k),
    )
    assert main(["inspect", str(tiny_conditional_run.path), "--k", "2", "--n", "12"]) == 0
    test = tiny_conditional_run.data.test
    b = next(i for i in range(1, 12) if test.y[i] == test.y[0])
    assert len(ends) == 2 and all(torch.equal(x2, test.x[b]) and y == test.y[0] for x2, y in ends)
    index = (tiny_conditional_run.path / "figures" / "index.md").read_text()
    assert f"two test images of class {test.y[0].item()}, decoded with that label" in index


def test_inspect_says_why_a_vamp_prior_run_has_no_kl_per_dimension(tiny_conditional_run):
    """A conditional run's VampPrior has no KL per dimension: kl_per_dim.png was left out silently,
    though docs/inspection.md lists it."""
    assert main(["inspect", str(tiny_conditional_run.path), "--k", "2", "--n", "12"]) == 0
    figs = tiny_conditional_run.path / "figures"
    index = (figs / "index.md").read_text()
    assert not (figs / "kl_per_dim.png").exists()
    section = index.split("## KL per dimension\n\n")[1]
    assert section.startswith("Not drawn: KL(q||p) of this run (prior `vamp`")
    assert "dimensions are active over these" in section and "![" not in section.split("##")[0]


def test_the_latent_map_numbers_dimensions_from_zero_as_the_traversal_does(tiny_conditional_run, monkeypatch):
    """A 2-D run's latent map said "latent dimensions 1 and 2", its traversal "dimensions [1, 0]"."""
    figs = _drawn(monkeypatch)
    assert main(["inspect", str(tiny_conditional_run.path), "--k", "2", "--n", "12"]) == 0
    titles = [f.axes[0].get_title().replace("\n", " ") for f in figs]
    latent = next(f.axes[0] for f, t in zip(figs, titles, strict=True) if t.startswith("Posterior means"))
    assert "latent dimensions 0 and 1" in latent.get_title().replace("\n", " ")
    assert (latent.get_xlabel(), latent.get_ylabel()) == ("latent dimension 0", "latent dimension 1")
    assert any("Traversal of dimensions [" in t and ("[0, 1]" in t or "[1, 0]" in t) for t in titles)
