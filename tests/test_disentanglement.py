"""The disentanglement metrics on known codes: the factors themselves score at the top, a code
that ignores them at the bottom, a code that mixes them in between."""

import numpy as np
import pytest

from pyrovae import disentanglement as D
from pyrovae.dsprites import GroundTruth


class Small(GroundTruth):
    factor_sizes = (3, 6, 10, 8, 8)


DATA = Small()


def perfect(f: np.ndarray) -> np.ndarray:
    return f / np.array(DATA.factor_sizes, dtype=float)  # (n, 5): one dimension per factor


def mixed(f: np.ndarray) -> np.ndarray:
    """The factors turned 30 degrees in three planes, plus a little noise: every dimension tells
    about two or three factors."""
    z = perfect(f)
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    for i, j in [(0, 1), (2, 3), (3, 4)]:
        z[:, [i, j]] = z[:, [i, j]] @ np.array([[c, -s], [s, c]])
    return z + 0.01 * np.random.RandomState(len(f)).randn(*z.shape)


def random(f: np.ndarray) -> np.ndarray:
    return np.random.RandomState(len(f) + 1).randn(len(f), 5)


CODES = {"perfect": perfect, "mixed": mixed, "random": random}


def _ordered(values: dict, top: float, bottom: float) -> None:
    assert values["perfect"] >= top, values
    assert values["random"] <= bottom, values
    assert values["perfect"] > values["mixed"] > values["random"], values


def test_beta_vae_score():
    v = {k: D.beta_vae_score(DATA, c, num_train=300, num_eval=200, batch_size=16)["eval_accuracy"]
         for k, c in CODES.items()}  # fmt: skip
    _ordered(v, top=0.99, bottom=0.35)  # chance: 1/5


def test_factor_vae_score():
    res = {k: D.factor_vae_score(DATA, c, num_train=300, num_eval=200, batch_size=16, num_variance_estimate=1000)
           for k, c in CODES.items()}  # fmt: skip
    _ordered({k: r["eval_accuracy"] for k, r in res.items()}, top=0.99, bottom=0.4)
    assert res["perfect"]["num_active_dims"] == 5
    pruned = D.factor_vae_score(DATA, lambda f: 0.01 * perfect(f), num_train=10, num_eval=10)
    assert pruned == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}  # std < 0.05


def test_mig():
    res = {k: D.mig(DATA, c, num_train=2000) for k, c in CODES.items()}
    _ordered({k: r["mig"] for k, r in res.items()}, top=0.95, bottom=0.05)
    # the entropies of uniform factors, and each factor's information all in its own dimension
    assert res["perfect"]["entropy"] == pytest.approx(np.log(DATA.factor_sizes), rel=0.02)
    assert np.argmax(res["perfect"]["mutual_info"], axis=0).tolist() == [0, 1, 2, 3, 4]
    # 20 bins cannot hold 40 orientations: the gap is about log 20 / log 40 for that factor
    wide = type("Wide", (GroundTruth,), {"factor_sizes": (40,)})()
    assert D.mig(wide, lambda f: f.astype(float), num_train=4000)["mig"] == pytest.approx(
        np.log(20) / np.log(40), abs=0.01
    )


def test_dci():
    res = {k: D.dci(DATA, c, num_train=300, num_test=200) for k, c in CODES.items()}
    _ordered({k: r["disentanglement"] for k, r in res.items()}, top=0.9, bottom=0.25)
    _ordered({k: r["completeness"] for k, r in res.items()}, top=0.9, bottom=0.25)
    assert res["perfect"]["informativeness_test"] > 0.95 > 0.4 > res["random"]["informativeness_test"]
    assert res["perfect"]["importance"].shape == (5, 5)


def test_weighted_purity_closed_forms():
    assert D._weighted_purity(np.eye(3)) == pytest.approx(1.0)
    assert D._weighted_purity(np.ones((3, 3))) == pytest.approx(0.0, abs=1e-9)
    # one code informs about two factors equally (purity 0), one about one (purity 1), equal weights
    assert D._weighted_purity(np.array([[1.0, 1.0], [0.0, 2.0]])) == pytest.approx(0.5)


def test_scores_are_seeded():
    a = D.scores(DATA, mixed, seed=3, scale=0.01)
    b = D.scores(DATA, mixed, seed=3, scale=0.01)
    assert a == b and a["settings"]["beta_vae"] == {"batch_size": 64, "num_train": 100, "num_eval": 50}
    assert all(0 <= a[k] <= 1 for k in ("beta_vae", "factor_vae", "mig", "dci_disentanglement"))
