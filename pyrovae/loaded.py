"""A run directory read back: its data (:func:`load_data`), its model (:func:`load_run`) and its
test-set figures (:func:`evaluate_run`, :func:`finish`). :mod:`pyrovae.runs` trains into one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from torch import Tensor

from . import checkpoint
from .build import build_model, resolve_device, run_device
from .config import Config, ConfigError, check_seed
from .data import (
    DataError,
    Dataset,
    Split,
    binarize,
    check_values,
    holds_mnist,
    is_binary,
    load_dataset,
    select_classes,
    trained_classes,
)
from .evaluate import evaluate
from .likelihoods import LIKELIHOODS
from .models import VAE
from .variants import MODELS, variant_of

EVAL_BINARIZE_SEED = 0  # validation and test sets are binarized once, identically in every run


# -- data -----------------------------------------------------------------------------------
def load_data(cfg: Config, x_shape: tuple[int, ...] | None = None) -> Dataset:
    """The config's data set, checked against the likelihood; validation and test are binarized
    once with a fixed seed when training binarizes, so figures compare across runs.

    :param x_shape: the shape of one datum of the trained model the data is for (a run read
        back): data of another shape is refused, and the batch size, a training option, is not
        checked.
    """
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.data_file, cfg.labels_file, cfg.val_size, cfg.split_seed,
                        cfg.image_size, cfg.train_size if cfg.dataset == "dsprites" else None)  # fmt: skip
    if x_shape is not None:  # before any other check: a file of the wrong shape is the mistake to name
        check_shape(cfg.data_file or cfg.dataset, data.x_shape, x_shape,
                    "give the run's own data file, or one shaped like it")  # fmt: skip
    data = select_classes(data, cfg.classes, cfg.exclude_classes)
    if cfg.train_size is not None and cfg.train_size < len(data.train):
        data.train = data.train.subset(slice(0, cfg.train_size))
        data.notes.append(f"training on the first {cfg.train_size} (train_size)")
    check_values(data.train.x, "training data")
    MODELS[cfg.model].prepare_data(data, cfg)  # e.g. hide labels
    needs_binary = getattr(LIKELIHOODS[cfg.likelihood], "needs_binary", False)  # optional in the protocol
    if needs_binary and not cfg.resolve_binarize() and not is_binary(data.train.x):
        raise DataError(
            f"the {cfg.likelihood} likelihood is only normalized on {{0, 1}} but the data has grey values; "
            "set binarize dynamic, or use a likelihood for grey values (cbernoulli, normal, laplace)",
            "binarize",
        )
    if x_shape is None and cfg.batch_size > len(data.train):
        raise ConfigError(
            f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training data; lower it",
            "batch_size",
        )
    if cfg.resolve_binarize():
        # each split its own generator: the test set is the same tensor whatever val_size or classes
        data.val.x = binarize(data.val.x, torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
        data.test.x = binarize(data.test.x, torch.Generator().manual_seed(EVAL_BINARIZE_SEED))
        data.notes.append("binarized: training data afresh every epoch, validation and test once (seed 0)")
    return data


def check_shape(name: str, shape: tuple[int, ...], x_shape: tuple[int, ...], advice: str) -> None:
    """Refuse data ``name`` whose rows have ``shape`` where the run was trained on ``x_shape``,
    before the model fails on them with an error about matrix sizes; ``advice`` says what to give."""
    if tuple(shape) != tuple(x_shape):
        raise DataError(
            f"{name} has rows of shape {tuple(shape)} but the run was trained on {tuple(x_shape)}; {advice}",
            "data_file",
        )


# -- loading a run --------------------------------------------------------------------------
@dataclass
class Run:
    """A trained run: its folder, config, model (in eval mode) and, on demand, its data."""

    path: Path
    config: Config
    model: VAE
    _data: Dataset | None = field(default=None, repr=False)
    results: dict | None = None
    complete: bool = False  # resumed with nothing left to train (see :func:`train`)
    results_kept: bool = False  # complete, and eval.json still held: its results were not recomputed

    @property
    def data(self) -> Dataset:
        """The run's data set, loaded on first use (validation/test binarized as in training), on
        the model's device and in its dtype, so ``run.model`` takes ``run.data``'s tensors as they are."""
        if self._data is None:
            with default_dtype(self.dtype):  # as train loaded it: binarizing float64 draws other pixels
                self._data = load_data(self.config, self.model.x_shape)
        d, device, dtype = self._data, self.device, self.dtype
        if any(s.x.device != device or s.x.dtype != dtype for s in (d.train, d.val, d.test)):
            # a copy: data given to train stays; MNIST is float32 whatever the model's dtype
            self._data = dataclasses.replace(d, train=d.train.to(device, dtype), val=d.val.to(device, dtype),
                                             test=d.test.to(device, dtype))  # fmt: skip
        return self._data

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype: the one its checkpoint was saved in."""
        return next(p for p in self.model.parameters() if p.is_floating_point()).dtype


def load_run(path: str | Path, which: str = "best", device: str | None = None, data_dir: str | None = None,
             data_file: str | None = None) -> Run:  # fmt: skip
    """Load ``path/best.pt`` (or ``checkpoint.pt`` with ``which="last"``) into its model, built in
    the dtype the checkpoint was saved in (a run trained under a float64 default stays float64).

    :param device: where to put the model and, when used, the data; default the device ``train``
        would use for this run here (:func:`~pyrovae.build.run_device`): the run's own ``device``
        option, where the GPU it names is absent the CPU.
    :param data_dir: where MNIST is now, if it moved since training.
    :param data_file: where the run's data file is now, if it moved since training.
    :raises ConfigError: for a ``data_file`` given for a run that read none, or a ``data_dir`` for a
        run not trained on MNIST: the run's own data would be used regardless.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(
            f"{path} is not a pyrovae run directory (no config.json); train one with `pyrovae train`"
        )
    cfg = Config.load(path / "config.json")
    _check_registered(cfg, path)
    _check_moved_data(cfg, path, data_dir, data_file)
    cfg.data_dir = data_dir or _moved_mnist(cfg)
    cfg.data_file = data_file or cfg.data_file
    name = {"best": "best.pt", "last": "checkpoint.pt"}.get(which, which)
    ckpt = checkpoint.load(path / name)
    _check_same_config(cfg, ckpt, path, name)
    shape = ckpt.get("x_shape")
    if shape is None:
        raise checkpoint.CheckpointError(f"{path / name} does not record the data shape")
    with default_dtype(saved_dtype(ckpt["model"])):  # a float64 run reopens as float64, not cast silently
        model = build_model(cfg, tuple(shape), int(ckpt.get("num_classes", 0)))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        why = ("the run was made by fit() on a model config.json does not describe (your own components, say), "
               "which cannot be rebuilt from it: build that model in Python and load the state into it, "
               f"model.load_state_dict(pyrovae.checkpoint.load('{path / name}')['model'])"
               if ckpt.get("made_by") == "fit" else "was config.json edited, or the run made by another model?")  # fmt: skip
        raise checkpoint.CheckpointError(
            f"{path / name} does not fit the model {path / 'config.json'} describes ({str(e).splitlines()[0]}); {why}"
        ) from None
    model.to(run_device(cfg.device) if device is None else resolve_device(device)).eval()
    return Run(path, cfg, model)


def saved_dtype(state: dict) -> torch.dtype | None:
    """The floating dtype a model's ``state`` was saved in, where it has one (float32 or float64)."""
    dtypes = {v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64} else None


@contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """torch's default dtype ``dtype`` inside (``None``: left as it is): a run's model and data
    are built as ``train`` built them, in the dtype it trained in."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype or before)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _check_same_config(cfg: Config, ckpt: dict, path: Path, name: str) -> None:
    """Refuse a checkpoint whose stored options differ from ``config.json``'s, where the weights
    would load into a model of another kind and be evaluated silently (its ``guide_scale``, say);
    options that may change on resume (:data:`pyrovae.runs.RESUMABLE`) may differ."""
    from .runs import RESUMABLE  # runs imports this module

    try:
        stored = json.loads(ckpt.get("config") or "{}")
    except (TypeError, ValueError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    saved = dataclasses.asdict(cfg)
    # an option the checkpoint does not record was added since it was written: nothing to compare
    differ = [k for k, v in stored.items() if k in saved and k not in RESUMABLE and saved[k] != v]
    if differ:
        detail = ", ".join(f"{k}: {name} {stored[k]!r}, config.json {saved[k]!r}" for k in differ)
        error = checkpoint.CheckpointError(
            f"{path / name} was made with other options than {path / 'config.json'} holds ({detail}); "
            "was config.json edited, or the run made by another model?"
        )
        error.options = differ  # so the command line names each as its flag, one-word ones too
        raise error


def _check_moved_data(cfg: Config, path: Path, data_dir: str | None, data_file: str | None) -> None:
    """Refuse a new place for data the run never read: it would be ignored, and the run's own data
    used, without a word (a file given to a run trained on MNIST evaluates MNIST)."""
    source = {"mnist": "MNIST", "dsprites": "dSprites" if cfg.data_file else "rendered dSprites"}.get(
        cfg.dataset, f"the data file {cfg.data_file}"
    )
    if data_file and not cfg.data_file:
        raise ConfigError(
            f"{path} was trained on {source}, not on a data file, so the data file given for it would be "
            "ignored: drop it (`pyrovae score` and `pyrovae embed` put other data through a run)"
        )
    if data_dir and cfg.dataset != "mnist":
        raise ConfigError(
            f"{path} was trained on {source}, not on MNIST, so the MNIST folder given for it would be "
            "ignored: drop it"
        )


def _moved_mnist(cfg: Config) -> str | None:
    """The run's MNIST folder, or ``$PYROVAE_DATA`` where the saved folder no longer holds MNIST
    and that one does (a run copied to another machine)."""
    env = os.environ.get("PYROVAE_DATA")
    if cfg.dataset == "mnist" and cfg.data_dir and env and not holds_mnist(cfg.data_dir) and holds_mnist(env):
        return env
    return cfg.data_dir


def _check_registered(cfg: Config, path: Path) -> None:
    """Refuse a run whose components are not registered in this process (a user's own, say)."""
    from .guides import GUIDES
    from .nets import NETS
    from .priors import PRIORS

    for family, registry, name in [("prior", PRIORS, "PRIORS"), ("guide", GUIDES, "GUIDES"),
                                   ("likelihood", LIKELIHOODS, "LIKELIHOODS"), ("net", NETS, "NETS"),
                                   ("model", MODELS, "MODELS")]:  # fmt: skip
        value = cfg.prior_family if family == "prior" else getattr(cfg, family)
        if value not in registry:
            raise ConfigError(
                f"{path} uses {family} {value!r}, which is not registered in this process: register it "
                f"first (pyrovae.{name}[{value!r}] = YourClass), then load the run", family,
            )  # fmt: skip


def finish(run: Run, k: int | None = None, n_test: int | None = None, seed: int = 0,
           progress: bool = True, which: str = "best") -> dict:  # fmt: skip
    """Evaluate a run on its test set and write ``eval.json``, ``samples.png`` and
    ``reconstructions.png``. Seeded, so the figures repeat."""
    from . import plots

    res = evaluate_run(run, k, n_test, seed, progress, which)
    variant_of(run.model).samples(run, run.path / "samples.png", seed=seed)
    test = trained_test(run)
    plots.reconstruction_grid(run.model, test.x[:32], test.y[:32] if test.y is not None else None,
                              run.path / "reconstructions.png")  # fmt: skip
    return res


def trained_test(run: Run) -> Split:
    """The run's test split as its figures take it: of a conditional run trained on some classes,
    the images of those classes (see :func:`trained_rows`); otherwise all of it."""
    test = run.data.test
    trained = trained_rows(run, test.y)
    return test if trained is None else test.subset(trained[0])


def evaluate_run(run: Run, k: int | None = None, n_test: int | None = None, seed: int = 0,
                 progress: bool = True, which: str = "best") -> dict:  # fmt: skip
    """Test-set figures of a run (see :func:`pyrovae.evaluate.evaluate`), written to
    ``eval.json``; ``k`` and ``n_test`` default to the run's ``eval_k`` and ``eval_n_test``."""
    cfg = run.config
    k = cfg.eval_k if k is None else k
    n_test = n_test if n_test is not None else cfg.eval_n_test
    if k < 1 or (n_test is not None and n_test < 1):
        raise ConfigError("k and n_test must be positive", "k")
    check_seed(seed)
    test, variant = run.data.test.to(run.device), variant_of(run.model)
    labels, classes = variant.test_labels(run.model, test.y), None
    if (trained := trained_rows(run, test.y)) is not None:
        seen, classes = trained
        test, labels = test.subset(seen), labels[seen]
    pyro.set_rng_seed(seed)
    res = evaluate(run.model, Split(test.x, labels), k=k, n_ll=n_test, progress=progress)
    if classes is not None:
        res["test_classes"] = classes
    res.update(variant.test_scores(run.model, test))
    res["seed"] = seed
    res["binarized"] = (
        "dynamic (test set binarized once, seed 0)" if cfg.resolve_binarize() else "no (grey values)"
    )
    res["checkpoint"] = which
    write_json(run.path / "eval.json", res)
    return res


def trained_rows(run: Run, labels: Tensor | None) -> tuple[Tensor, list[int]] | None:
    """For a run trained on some classes only (``classes``, ``exclude_classes``) whose model is
    given the data's ``labels`` (a conditional one: the variant's
    :meth:`~pyrovae.variants.Variant.test_labels` says), the positions of the labels of those
    classes, and the classes; ``None`` for a run of every class, or whose model takes no labels (an
    unconditional model's test set keeps every class: scoring unseen ones is the point). log p(x |
    y) of a label the model never trained on goes through untrained weights, so evaluation,
    ``score``, ``embed``, ``inspect`` and ``reconstruct`` leave those data out."""
    cfg = run.config
    labels = None if labels is None else variant_of(run.model).test_labels(run.model, labels)
    if labels is None or not (cfg.classes or cfg.exclude_classes):
        return None
    classes = trained_classes(run.model.num_classes, cfg.classes, cfg.exclude_classes)
    return torch.isin(labels, torch.tensor(classes, device=labels.device)).nonzero().squeeze(1), classes


def write_json(path: str | Path, obj: dict | list) -> None:
    checkpoint.write_text(path, json.dumps(obj, indent=2) + "\n")
