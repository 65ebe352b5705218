"""Disentanglement metrics on data with known factors, with disentanglement_lib's settings.

A *code* maps factor classes ``(n, F)`` to representations ``(n, D)`` (numpy): for a VAE the
posterior means of the images of those factors (:func:`vae_code`), for a test the factors
themselves. Each metric draws its factors from ``data`` (a :class:`~pyrovae.dsprites.GroundTruth`:
``factor_sizes`` and ``sample``) with its own ``numpy`` generator seeded by ``seed``, so a score
repeats exactly. The defaults are those of Locatello et al. (2019)'s ``disentanglement_lib``:

- :func:`beta_vae_score`: batches of 64 pairs sharing one factor; the mean absolute difference
  of their codes is classified by a logistic regression; 10,000 training / 5,000 evaluation points.
- :func:`factor_vae_score`: codes scaled by their standard deviation over 10,000 points (those
  below 0.05 pruned); in batches of 64 sharing one factor, the dimension of least scaled variance
  votes for that factor; majority-vote classifier, 10,000 / 5,000 points.
- :func:`mig`: 10,000 points, each code dimension discretized into a 20-bin histogram; the mean
  over factors of the gap between the two largest mutual informations, over the factor's entropy.
- :func:`dci`: gradient-boosted trees predict each factor from the code (10,000 / 5,000 points);
  their feature importances give disentanglement and completeness, their test accuracy
  informativeness.

References: Higgins et al. (2017) β-VAE; Kim & Mnih (2018) Disentangling by factorising;
Chen et al. (2018) Isolating sources of disentanglement; Eastwood & Williams (2018) A framework
for the quantitative evaluation of disentangled representations; Locatello et al. (2019)
Challenging common assumptions in the unsupervised learning of disentangled representations.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

Code = Callable[[np.ndarray], np.ndarray]
"""Factor classes ``(n, F)`` to codes ``(n, D)``."""


def beta_vae_score(data, code: Code, seed: int = 0, batch_size: int = 64, num_train: int = 10000,
                   num_eval: int = 5000) -> dict:  # fmt: skip
    """Accuracy of a logistic regression telling which factor a batch of pairs shared from the
    mean absolute difference of their codes (Higgins et al. 2017). Chance is ``1 / F``.

    :returns: ``{"train_accuracy", "eval_accuracy"}``; the score is ``eval_accuracy``.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.RandomState(seed)
    x_train, y_train = _beta_vae_points(data, code, rng, batch_size, num_train)
    x_eval, y_eval = _beta_vae_points(data, code, rng, batch_size, num_eval)
    model = LogisticRegression(random_state=rng)
    with warnings.catch_warnings():  # lbfgs' iteration limit, as in disentanglement_lib
        warnings.simplefilter("ignore")
        model.fit(x_train, y_train)
    return {"train_accuracy": float(np.mean(model.predict(x_train) == y_train)),
            "eval_accuracy": float(np.mean(model.predict(x_eval) == y_eval))}  # fmt: skip


def _beta_vae_points(data, code: Code, rng, batch_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = len(data.factor_sizes)
    index = rng.randint(k, size=n)  # (n,) the factor each batch of pairs shares
    f1 = data.sample(n * batch_size, rng).reshape(n, batch_size, k)
    f2 = data.sample(n * batch_size, rng).reshape(n, batch_size, k)
    rows = np.arange(n)
    f2[rows, :, index] = f1[rows, :, index]
    z1, z2 = (code(f.reshape(n * batch_size, k)).reshape(n, batch_size, -1) for f in (f1, f2))
    return np.abs(z1 - z2).mean(1), index  # (n, D), (n,)


def factor_vae_score(data, code: Code, seed: int = 0, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000, num_variance_estimate: int = 10000,
                     prune_threshold: float = 0.05) -> dict:  # fmt: skip
    """Accuracy of the majority-vote classifier from "the dimension of least normalized variance"
    to the factor held fixed in a batch (Kim & Mnih 2018). Chance is about ``1 / F``.

    :returns: ``{"train_accuracy", "eval_accuracy", "num_active_dims"}`` (both accuracies 0 when
        every dimension is pruned); the score is ``eval_accuracy``.
    """
    rng = np.random.RandomState(seed)
    z = code(data.sample(num_variance_estimate, rng))
    variance = np.var(z, axis=0, ddof=1)
    active = np.sqrt(variance) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train = _factor_vae_votes(data, code, rng, batch_size, num_train, variance, active)
    test = _factor_vae_votes(data, code, rng, batch_size, num_eval, variance, active)
    classifier = np.argmax(train, axis=0)  # for each active dimension, its most voted factor
    dims = np.arange(train.shape[1])
    return {"train_accuracy": float(train[classifier, dims].sum() / train.sum()),
            "eval_accuracy": float(test[classifier, dims].sum() / test.sum()),
            "num_active_dims": int(active.sum())}  # fmt: skip


def _factor_vae_votes(data, code: Code, rng, batch_size: int, n: int, variance, active) -> np.ndarray:
    k = len(data.factor_sizes)
    index = rng.randint(k, size=n)
    f = data.sample(n * batch_size, rng).reshape(n, batch_size, k)
    rows = np.arange(n)
    f[rows, :, index] = f[rows, :1, index]  # every datum of a batch takes its first datum's value
    z = code(f.reshape(n * batch_size, k)).reshape(n, batch_size, -1)
    local = np.var(z, axis=1, ddof=1)  # (n, D)
    argmin = np.argmin(local[:, active] / variance[active], axis=1)  # (n,)
    votes = np.zeros((k, int(active.sum())), dtype=np.int64)
    np.add.at(votes, (index, argmin), 1)
    return votes


def mig(data, code: Code, seed: int = 0, num_train: int = 10000, num_bins: int = 20) -> dict:
    """Mutual information gap (Chen et al. 2018): for each factor, the gap between the two code
    dimensions that inform most about it, over the factor's entropy, averaged over factors.

    :returns: ``{"mig", "mutual_info" (D, F), "entropy" (F,)}``, mutual information in nats.
    """
    rng = np.random.RandomState(seed)
    factors = data.sample(num_train, rng)
    m = mutual_info(code(factors), factors, num_bins)
    entropy = np.array([_mi(f, f) for f in factors.T])
    top = np.sort(m, axis=0)[::-1]
    gap = (top[0] - top[1]) / np.maximum(entropy, 1e-12) if len(m) > 1 else top[0] / entropy
    return {"mig": float(np.mean(gap)), "mutual_info": m, "entropy": entropy}


def mutual_info(z: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Mutual information ``(D, F)``, in nats, of each code dimension discretized into a
    ``num_bins`` histogram with each discrete factor."""
    binned = [np.digitize(col, np.histogram(col, num_bins)[1][:-1]) for col in z.T]
    return np.array([[_mi(b, f) for f in factors.T] for b in binned])


def _mi(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import mutual_info_score

    return float(mutual_info_score(a, b))


def dci(
    data, code: Code, seed: int = 0, num_train: int = 10000, num_test: int = 5000, n_estimators: int = 100
) -> dict:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018) from
    gradient-boosted trees (scikit-learn's defaults, ``n_estimators`` boosting stages) predicting
    each factor from the code.

    :returns: ``{"disentanglement", "completeness", "informativeness_train",
        "informativeness_test", "importance" (D, F)}``.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.RandomState(seed)
    f_train, f_test = data.sample(num_train, rng), data.sample(num_test, rng)
    z_train, z_test = code(f_train), code(f_test)
    importance = np.zeros((z_train.shape[1], f_train.shape[1]))
    acc_train, acc_test = [], []
    for j in range(f_train.shape[1]):
        with warnings.catch_warnings():  # "more classes than half the samples", in small quick looks
            warnings.simplefilter("ignore", UserWarning)
            model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed).fit(
                z_train, f_train[:, j]
            )
        importance[:, j] = np.abs(model.feature_importances_)
        acc_train.append(np.mean(model.predict(z_train) == f_train[:, j]))
        acc_test.append(np.mean(model.predict(z_test) == f_test[:, j]))
    return {"disentanglement": _weighted_purity(importance), "completeness": _weighted_purity(importance.T),
            "informativeness_train": float(np.mean(acc_train)), "informativeness_test": float(np.mean(acc_test)),
            "importance": importance}  # fmt: skip


def _weighted_purity(importance: np.ndarray) -> float:
    """``Σ_i ρ_i (1 - H_K(P_i.))``: one minus the entropy (base K, the number of columns) of each
    row's normalized importances, weighted by the row's share of the total."""
    from scipy.stats import entropy

    per_row = 1.0 - entropy(importance.T + 1e-11, base=importance.shape[1])
    total = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_row * total.sum(1) / total.sum()))


SETTINGS = {
    "beta_vae": dict(batch_size=64, num_train=10000, num_eval=5000),
    "factor_vae": dict(batch_size=64, num_train=10000, num_eval=5000, num_variance_estimate=10000),
    "mig": dict(num_train=10000, num_bins=20),
    "dci": dict(num_train=10000, num_test=5000, n_estimators=100),
}
"""disentanglement_lib's sample sizes, the defaults of :func:`scores`."""


MIN_SAMPLES = 25
"""The fewest points a scaled sample size may keep: below it a classifier may see one class only
and a score means little. At ``scale`` 0.005 the smallest sizes (5,000) keep exactly this many."""

_FIXED = ("batch_size", "num_bins", "n_estimators")


def settings(scale: float | dict[str, float] = 1.0, dci_trees: int = 100) -> dict[str, dict[str, int]]:
    """:data:`SETTINGS` with every sample size scaled (see :func:`scores`).

    :raises ConfigError: where a scaled sample size falls below :data:`MIN_SAMPLES`, naming the
        smallest scale that keeps every sample size of that metric at it.
    """
    from .config import ConfigError

    frac = scale if isinstance(scale, dict) else dict.fromkeys(SETTINGS, scale)
    s = {m: {k: (v if k in _FIXED else round(v * frac.get(m, 1.0))) for k, v in o.items()}
         for m, o in SETTINGS.items()}  # fmt: skip
    for m, o in s.items():
        small = {k: n for k, n in o.items() if k not in _FIXED and not n >= MIN_SAMPLES}
        if small:
            k, n = next(iter(small.items()))
            least = MIN_SAMPLES / min(v for k, v in SETTINGS[m].items() if k not in _FIXED)
            name = f"scale[{m!r}]" if isinstance(scale, dict) else "--scale"
            raise ConfigError(f"{name} {frac.get(m, 1.0):g} leaves {m} {n} points for {k}, too few for a "
                              f"meaningful score (at least {MIN_SAMPLES} needed): use {name} {least:g} or "
                              "more")  # fmt: skip
    s["dci"]["n_estimators"] = dci_trees
    return s


def scores(
    data, code: Code, seed: int = 0, scale: float | dict[str, float] = 1.0, dci_trees: int = 100
) -> dict:
    """All four scores: ``beta_vae``, ``factor_vae``, ``mig``, ``dci_disentanglement``,
    ``dci_completeness``, ``dci_informativeness``, plus ``mutual_info`` (D, F) and the settings.

    :param scale: fraction of :data:`SETTINGS`' sample sizes (batch sizes and bins kept), for
        quick looks; 1 is disentanglement_lib's protocol. A dict gives one per metric (by the
        names of :data:`SETTINGS`; those it omits keep 1). Each sample size must keep at least
        :data:`MIN_SAMPLES` points (``scale`` 0.005 or more), else :class:`ConfigError`.
    :param dci_trees: boosting stages of DCI's trees (100, scikit-learn's default, as there).
    """
    s = settings(scale, dci_trees)
    b, f = (
        beta_vae_score(data, code, seed, **s["beta_vae"]),
        factor_vae_score(data, code, seed, **s["factor_vae"]),
    )
    m, d = mig(data, code, seed, **s["mig"]), dci(data, code, seed, **s["dci"])
    return {"beta_vae": b["eval_accuracy"], "factor_vae": f["eval_accuracy"], "mig": m["mig"],
            "dci_disentanglement": d["disentanglement"], "dci_completeness": d["completeness"],
            "dci_informativeness": d["informativeness_test"], "factor_vae_active_dims": f["num_active_dims"],
            "mutual_info": m["mutual_info"].tolist(), "entropy": m["entropy"].tolist(), "settings": s,
            "seed": seed}  # fmt: skip


def vae_code(vae, data, batch_size: int = 2048) -> Code:
    """The posterior means ``E_q[z|x]`` of the images of the given factors, as a :data:`Code`."""
    from .evaluate import posterior_mean

    p = next(vae.parameters())

    def code(classes: np.ndarray) -> np.ndarray:
        classes = torch.as_tensor(classes)
        out = [
            posterior_mean(vae, data.images(c).to(p.device, p.dtype)).cpu() for c in classes.split(batch_size)
        ]
        return torch.cat(out).double().numpy()

    return code


def disentangle_run(run, seed: int = 0, scale: float | dict[str, float] = 1.0, n_kl: int = 2000,
                    dci_trees: int = 100) -> dict:  # fmt: skip
    """The four scores of a run trained on dSprites (see :func:`scores`), written to
    ``run.path / "disentanglement.json"`` with, for each latent dimension, its mean KL over
    ``n_kl`` random images and the factor it tells most about (mutual information over the
    factor's entropy); and ``traversal.png``: one row per dimension, by decreasing KL, each
    changing that dimension of an image's posterior mean from -2.5 to 2.5.
    """
    from . import plots
    from .config import ConfigError
    from .dsprites import ground_truth
    from .evaluate import kl_per_dim, posterior_mean
    from .loaded import write_json
    from .posterior import traverse

    cfg, vae = run.config, run.model
    if cfg.dataset != "dsprites":
        raise ConfigError(f"{run.path} trained on {cfg.dataset}; the disentanglement scores need data with known "
                          "factors: train with --dataset dsprites")  # fmt: skip
    if vae.num_classes:
        what = {"conditional": "a conditional VAE (--conditional)",
                "semisupervised": "a semi-supervised VAE (--semi-supervised)"}.get(cfg.model, f"a {cfg.model} run")  # fmt: skip
        raise ConfigError(f"the disentanglement scores encode images without labels, and {run.path} is {what}, "
                          "whose encoder needs one: score a run trained without labels")  # fmt: skip
    settings(scale, dci_trees)  # refuse too small a scale before rendering anything
    data = ground_truth(cfg.data_file, cfg.image_size)
    code = vae_code(vae, data)
    res = scores(data, code, seed, scale, dci_trees)
    p = next(vae.parameters())
    x = data.images(data.sample(n_kl, np.random.RandomState(seed))).to(p.device, p.dtype)
    kl = kl_per_dim(vae, x)
    if kl is None:  # no per-dimension KL for this guide/prior: rank by the spread of the means
        kl = posterior_mean(vae, x).var(0)
    kl = kl.cpu()
    informs = np.array(res["mutual_info"]) / np.maximum(np.array(res["entropy"]), 1e-12)  # (D, F)
    order = kl.argsort(descending=True).tolist()
    res["latents"] = [{"dim": d, "kl": float(kl[d]), "factor": data.factor_names[int(informs[d].argmax())],
                       "mi_over_entropy": float(informs[d].max())} for d in order]  # fmt: skip
    _, images = traverse(vae, x[0], order, torch.linspace(-2.5, 2.5, 10))
    labels = [
        f"z{r['dim']}  KL {r['kl']:.2f}: {r['factor']} ({r['mi_over_entropy']:.2f})" for r in res["latents"]
    ]
    plots.labelled_rows(images, labels, run.path / "traversal.png",
                        f"Traversals, one latent per row by decreasing KL, with the factor it tells most "
                        f"about (MI / H); MIG {res['mig']:.2f}")  # fmt: skip
    write_json(run.path / "disentanglement.json", res)
    return res


def summary(res: dict) -> str:
    """One line: the four scores."""
    return (f"BetaVAE {res['beta_vae']:.3f}, FactorVAE {res['factor_vae']:.3f}, MIG {res['mig']:.3f}, DCI "
            f"disentanglement {res['dci_disentanglement']:.3f} (completeness {res['dci_completeness']:.3f}, "
            f"informativeness {res['dci_informativeness']:.3f})")  # fmt: skip
