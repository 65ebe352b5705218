"""The model registry: a variant registered from outside the package trains, evaluates and is
inspected through it, with its own loss, per-epoch figure, test figure and inspection figure."""

import csv
import json

import pytest
import torch

from pyrovae import MODELS, Config, ConfigError, train
from pyrovae.inspect_run import inspect_run
from pyrovae.objectives import ELBOLoss
from pyrovae.variants import Training
from pyrovae.variants.vae import Plain


class _Doubled(ELBOLoss):
    """Twice the ELBO loss: a variant's own loss, visible in train_loss."""

    def forward(self, x, y=None, beta=1.0):
        return 2 * super().forward(x, y, beta)


class _CustomTraining(Training):
    def make_loss(self, model, world):
        return _Doubled(model, self.elbo, world)

    def scores(self, model):
        return {"val_bias_mean": model.decoder.out.bias.mean().item()}


class _Custom(Plain):
    name = "custom"
    options = ("clip_norm",)  # an option only it uses, refused by the others
    owner = "a custom run: add model custom"
    training_cls = _CustomTraining

    @classmethod
    def test_scores(cls, model, test):
        return {"test_mean_pixel": test.x.mean().item()}

    @classmethod
    def figures(cls, model, test, out, add):
        from pyrovae import plots

        plots.image_grid(test.x[:4], out / "custom.png", "Four test images")
        add("custom.png", "Custom", "The variant's own figure.")


@pytest.fixture
def custom(monkeypatch):
    monkeypatch.setitem(MODELS, "custom", _Custom)


def test_flags_and_model_name_agree():
    assert Config(conditional=True).model == "conditional"
    assert Config(model="conditional").conditional
    assert Config(semi_supervised=True, labeled=10).validate().model == "semisupervised"
    assert Config(model="semisupervised", labeled=10).validate().semi_supervised


def test_a_variant_without_owner_is_still_named_where_its_option_belongs(tmp_path, monkeypatch, capsys):
    """``owner`` is optional: the plain model's refusal of a user variant's option names the
    variant instead of ending blank ("components applies to ")."""
    from pyrovae.cli import main
    from pyrovae.variants import Variant

    class Mine2(Variant):
        name = "mine2"
        options = ("components",)

    monkeypatch.setitem(MODELS, "mine2", Mine2)
    with pytest.raises(ConfigError) as e:
        Config(components=5).validate()
    assert str(e.value) == "components applies to model mine2: use model mine2"
    assert main(["train", "--components", "5", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after a note that no prior reads it
    assert err.startswith("error: --components applies to model mine2: use") and err.endswith("mine2"), err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, refused", [(["--prior", "vamp"], "--prior vamp"), (["--guide", "iaf"], "--guide iaf"),
                                            (["--net", "conv"], "--net conv"), (["--dropout", "0.3"], "--dropout 0.3")])  # fmt: skip
def test_a_variant_with_its_own_parts_refuses_the_shared_ones_it_does_not_read(tmp_path, monkeypatch, capsys,
                                                                              tiny_data_file, extra, refused):  # fmt: skip
    """A variant whose build makes its own program (docs/adding-a-model.md) names the shared parts
    it reads; the others are refused, where they used to be ignored without a word."""
    from pyrovae.cli import main
    from pyrovae.variants import Variant

    class Mine(Variant):
        name = "mine"
        parts = ("likelihood",)

    monkeypatch.setitem(MODELS, "mine", Mine)
    data = tiny_data_file(tmp_path)
    argv = ["train", "--model", "mine", "--dataset", "file", "--data-file", str(data), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: model mine builds its own parts, which take no {refused}: drop it", err
    assert not (tmp_path / "r").exists()
    Config(model="mine", likelihood="normal").validate()  # a part it reads
    monkeypatch.setattr(Mine, "parts", None)  # the default: every part read, as vae_parts does
    Config(model="mine", prior="vamp", dropout=0.3).validate()


def test_a_registered_variant_trains_evaluates_and_inspects_through_its_hooks(tmp_path, custom, tiny_data_file,
                                                                            tiny_config):  # fmt: skip
    data = tiny_data_file(tmp_path)
    with pytest.raises(ConfigError, match="clip_norm applies to a custom run"):
        tiny_config(data, clip_norm=5.0).validate()
    run = train(tiny_config(data, model="custom", epochs=2, eval_k=5, clip_norm=5.0), tmp_path / "c",
                progress=False)  # fmt: skip
    assert run.model.variant == "custom"
    rows = list(csv.DictReader(open(tmp_path / "c" / "metrics.csv")))
    bias = run.model.decoder.out.bias.mean().item()  # best.pt is the last epoch's or an earlier one
    assert any(float(r["val_bias_mean"]) == pytest.approx(bias, abs=1e-6) for r in rows)
    # the doubled loss: train loss per image is about twice the negative ELBO, not once
    assert float(rows[-1]["train_loss"]) > 1.5 * -float(rows[-1]["val_elbo"])
    res = json.loads((tmp_path / "c" / "eval.json").read_text())
    assert res["test_mean_pixel"] == pytest.approx(run.data.test.x.mean().item())
    index = inspect_run(run, k=3, n=20).read_text()
    assert "(custom.png)" in index and (tmp_path / "c" / "figures" / "custom.png").exists()
    assert torch.isfinite(torch.tensor(res["elbo"]))
