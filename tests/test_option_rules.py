"""The rules joining options live with the part that uses them, and only there: the objective's in
:data:`~pyrovae.objectives.OBJECTIVES`, read by both ``Config.validate`` and ``make_elbo``; the
data's in :data:`~pyrovae.data.DATASETS`, whose every claim is checked by loading the data."""

import itertools

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrovae.build import build_model
from pyrovae.config import Config, ConfigError
from pyrovae.data import DATASETS, SPECIFIC, DataError, Dataset, Split
from pyrovae.elbos import IWAE, TCVAE, CapacityELBO, FreeBitsELBO
from pyrovae.loaded import load_data
from pyrovae.objectives import make_elbo
from pyrovae.variants import MODELS

GRID = dict(
    elbo=["trace", "meanfield", "iwae"], num_particles=[1, 3], beta=[1.0, 0.5], beta_schedule=["constant", "linear"],
    free_bits=[None, 0.5], capacity=[None, 5.0], tc_beta=[None, 2.0], guide=["diag", "iaf"],
)  # fmt: skip
UNKNOWN_TO_MAKE_ELBO = dict(beta=1.0, beta_schedule="constant", guide="diag")  # β is the loss's argument


def _verdict(fn):
    try:
        return fn()
    except ConfigError as e:
        return (str(e), e.option)


def _make_elbo(o: dict):
    capacity = dict(capacity=0.0, gamma=7.0) if o["capacity"] is not None else {}  # C(t) starts at 0
    return make_elbo(o["elbo"], o["num_particles"], free_bits=o["free_bits"], tc_beta=o["tc_beta"],
                     dataset_size=40, **capacity)  # fmt: skip


def _expected_loss(o: dict) -> type:
    """The loss the options ask for, written from the objectives' definitions, not from the table."""
    if o["tc_beta"] is not None:
        return TCVAE
    if o["capacity"] is not None:
        return CapacityELBO
    if o["free_bits"] is not None:
        return FreeBitsELBO
    return {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "iwae": IWAE}[o["elbo"]]


def test_validate_and_make_elbo_accept_and_refuse_the_same_objectives():
    """Over every combination of the objective's options: what ``validate`` accepts, training builds
    (the loss of the one option set: accepted combinations never set two, so no precedence is
    needed); what it refuses, ``make_elbo`` refuses with the same message, naming the same option,
    unless the refusal is about β or the guide, which ``make_elbo`` does not know."""
    x_shape = (4,)
    data = Dataset(
        Split(torch.zeros(40, *x_shape)), Split(torch.zeros(4, *x_shape)), Split(torch.zeros(4, *x_shape))
    )
    seen = {"accepted": 0, "refused by both": 0, "refused for beta or guide": 0}
    for values in itertools.product(*GRID.values()):
        o = dict(zip(GRID, values, strict=True))
        cfg = Config(z_dim=2, hidden=[4], **o)
        verdict = _verdict(cfg.validate)
        by_make_elbo = _verdict(lambda o=o: _make_elbo(o))
        as_make_elbo_sees_it = _verdict(Config(z_dim=2, hidden=[4], **{**o, **UNKNOWN_TO_MAKE_ELBO}).validate)
        if isinstance(as_make_elbo_sees_it, tuple):
            assert by_make_elbo == as_make_elbo_sees_it, o
        else:
            assert not isinstance(by_make_elbo, tuple), (o, by_make_elbo)
        if isinstance(verdict, tuple):
            seen["refused by both" if by_make_elbo == verdict else "refused for beta or guide"] += 1
            assert by_make_elbo == verdict or any(o[k] != v for k, v in UNKNOWN_TO_MAKE_ELBO.items()), o
            assert verdict[1] in ("elbo", "free_bits", "capacity", "tc_beta"), verdict
            continue
        seen["accepted"] += 1
        assert sum(o[k] is not None for k in ("free_bits", "capacity", "tc_beta")) <= 1, o
        model = build_model(cfg, x_shape)
        elbo = MODELS[cfg.model].training(model, data, cfg).elbo  # what fit() trains with
        expected = _expected_loss(o)
        assert type(elbo) is expected and type(by_make_elbo) is expected, (o, elbo)
        assert elbo.num_particles == o["num_particles"] and elbo.vectorize_particles == (
            o["num_particles"] > 1
        )
        if expected is FreeBitsELBO:
            assert elbo.analytic == (o["elbo"] == "meanfield") and elbo.free_bits == o["free_bits"]
        if expected is CapacityELBO:
            assert elbo.capacity == 0.0 and elbo.gamma == cfg.gamma
        if expected is TCVAE:
            assert elbo.tc_beta == o["tc_beta"] and elbo.dataset_size == 40
    assert all(seen.values()), seen  # the grid reaches every case


def _npz(path):
    """The smallest file in DeepMind's dSprites layout: every combination of the factor classes."""
    sizes = (1, 3, 2, 2, 2, 2)
    classes = np.stack(np.meshgrid(*map(np.arange, sizes), indexing="ij"), -1).reshape(-1, len(sizes))
    np.savez(path, imgs=np.zeros((len(classes), 64, 64), np.uint8), latents_classes=classes,
             latents_values=classes / 2.0)  # fmt: skip
    return str(path)


def test_each_data_set_uses_the_options_it_takes_and_refuses_the_others(tmp_path):
    """:data:`~pyrovae.data.DATASETS` says which data sets take ``data_file``, ``labels_file`` and
    ``image_size``: each one a data set takes changes what it loads; each one it does not take is
    refused by ``validate``, naming that option (or, for MNIST's files, the data set)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((30, 6, 6)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(30) % 3)
    x_file = str(tmp_path / "x.npy")
    given = {  # (data set, option) -> its value, and the options the data set needs besides
        ("file", "data_file"): (x_file, {}),
        ("file", "labels_file"): (str(tmp_path / "y.npy"), {"data_file": x_file}),
        ("dsprites", "data_file"): (_npz(tmp_path / "d.npz"), {}),
        ("dsprites", "image_size"): (16, {}),
    }
    assert set(given) == {(d, o) for d, takes in DATASETS.items() for o in takes}, "add a case for a new row"
    small = dict(val_size=4, train_size=8, batch_size=4, likelihood="normal", binarize="none")
    for dataset, option in itertools.product(DATASETS, SPECIFIC):
        if (dataset, option) not in given:
            value = {"image_size": 32}.get(option, x_file)
            with pytest.raises(ConfigError) as e:
                Config(dataset=dataset, **{option: value}).validate()
            assert e.value.option in (option, "dataset"), (dataset, option, e.value)
            continue
        value, needs = given[(dataset, option)]
        with_it = Config(dataset=dataset, **needs, **{option: value}, **small).validate()
        without = Config(dataset=dataset, **needs, **small).validate()
        assert _loaded(with_it) != _loaded(without), (dataset, option)


def _loaded(cfg: Config) -> str:
    """What loading the data gives: its description, or why it cannot be loaded."""
    try:
        return load_data(cfg).describe()
    except DataError as e:
        return f"DataError: {e}"


def test_an_objective_that_forgets_to_refuse_another_is_refused_not_ranked(monkeypatch):
    """Were a row of the table to lose its refusals, two objectives asked at once would still be
    refused (no silent precedence), by ``validate`` and ``make_elbo`` alike."""
    from pyrovae import objectives

    monkeypatch.setitem(
        objectives.OBJECTIVES, "free_bits", objectives.OBJECTIVES["free_bits"]._replace(refuses=())
    )
    with pytest.raises(ConfigError, match="free_bits and capacity are two objectives") as e:
        Config(free_bits=0.5, capacity=5.0).validate()
    assert e.value.option == "free_bits"
    with pytest.raises(ConfigError, match="two objectives"):
        make_elbo(free_bits=0.5, capacity=0.0)
