"""Data sets as tensors on the training device: MNIST and a user's own arrays.

Every split is one tensor ``x`` of shape ``(N, *x_shape)`` with values in [0, 1] (plus labels
``y`` when known); batches are index slices of a permutation, so an epoch has no per-item Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEFAULT_ROOT = Path.home() / ".cache" / "pyrovae"

DATASETS = {"mnist": (), "file": ("data_file", "labels_file"), "dsprites": ("data_file", "image_size")}
"""The data sets ``Config.dataset`` names (see :func:`load_dataset`), each with the options of
:data:`SPECIFIC` it takes (:func:`check_options` refuses the others)."""
SPECIFIC = {"image_size": 64, "labels_file": None, "data_file": None}
"""The options only some data sets take, with their defaults, in the order they are checked."""


#: The validation images held out of MNIST's 60,000 training images unless asked otherwise; a data
#: file's split caps it at a tenth, and says so only where another size was asked for.
DEFAULT_VAL_SIZE = 10000


class DataError(ValueError):
    """Data that cannot be used, with a message saying what to do about it.

    :param option: the :class:`~pyrovae.config.Config` field the remedy concerns, if any.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


@dataclass
class Split:
    """One split of a data set: ``x`` of shape ``(N, *x_shape)`` in [0, 1], labels ``y`` or None."""

    x: Tensor
    y: Tensor | None = None
    factors: Tensor | None = None  # (N, F) ground-truth factor classes, where known (dSprites)

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Split:
        y = None if self.y is None else self.y.to(device)
        return Split(self.x.to(device, dtype), y, self.factors)

    def subset(self, index: Tensor | slice) -> Split:
        factors = None if self.factors is None else self.factors[index]
        return Split(self.x[index], None if self.y is None else self.y[index], factors)


@dataclass
class Dataset:
    """Train / validation / test splits and what is known about them."""

    train: Split
    val: Split
    test: Split
    num_classes: int = 0
    name: str = "data"
    notes: list[str] = field(default_factory=list)  # what loading did to the data, for the run's output
    ground_truth: object | None = None  # a :class:`~pyrovae.dsprites.GroundTruth` drawing any image

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def describe(self) -> str:
        """One line: the data, its shape, its splits and what loading did to it."""
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        sizes = f"{len(self.train)} train / {len(self.val)} validation / {len(self.test)} test"
        return "; ".join([f"data: {self.name}, {sizes} of shape {self.x_shape}{classes}", *self.notes])


def data_root(data_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Where to look for data: ``data_dir``, else ``$PYROVAE_DATA``, else a default cache folder.

    :returns: the folder and whether downloading into it is allowed (only for the default).
    """
    if data_dir:
        return Path(data_dir), False
    if os.environ.get("PYROVAE_DATA"):
        return Path(os.environ["PYROVAE_DATA"]), False
    return DEFAULT_ROOT, True


def _missing_mnist(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return [f for f in MNIST_FILES if not (raw / f).exists() and not (raw / f"{f}.gz").exists()]


def holds_mnist(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds the four MNIST files under ``MNIST/raw/``."""
    return not _missing_mnist(Path(root))


def load_mnist(data_dir: str | os.PathLike | None = None) -> tuple[Split, Split, int]:
    """MNIST train (60k) and test (10k) as float tensors in [0, 1] of shape (N, 1, 28, 28)."""
    import torchvision

    root, may_download = data_root(data_dir)
    missing = _missing_mnist(root)
    if missing and may_download:
        try:
            torchvision.datasets.MNIST(root, train=True, download=True)
            torchvision.datasets.MNIST(root, train=False, download=True)
        except Exception as e:  # no network, or a mirror that is down
            raise DataError(f"could not download MNIST into {root} ({e}). " + _where_help(root)) from None
        missing = _missing_mnist(root)
    if missing:
        raise DataError(
            f"MNIST files missing from {root / 'MNIST' / 'raw'}: {', '.join(missing)}. " + _where_help(root)
        )
    splits = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.MNIST(root, train=train, download=False)
            x, y = ds.data, ds.targets
        except Exception as e:
            raise DataError(
                f"MNIST files in {root / 'MNIST' / 'raw'} could not be read ({type(e).__name__}: {e}); "
                "they are truncated or corrupted: delete them and copy or download them again"
            ) from None
        expected = 60000 if train else 10000
        if x.shape != (expected, 28, 28) or y.shape != (expected,):
            raise DataError(
                f"MNIST {'train' if train else 'test'} files hold {tuple(x.shape)} images, expected "
                f"({expected}, 28, 28): they are truncated or corrupted; delete and replace them"
            )
        splits.append(Split(x.unsqueeze(1).float().div_(255), y.long()))
    return splits[0], splits[1], 10


def _where_help(root: Path) -> str:
    return (
        f"Expected the four files {', '.join(MNIST_FILES)} under <DIR>/MNIST/raw/ "
        "(torchvision's layout). Point pyrovae at DIR with --data-dir DIR or the PYROVAE_DATA "
        "environment variable."
    )


def load_array(path: str | os.PathLike, labels: str | os.PathLike | None = None) -> Split:
    """A user's data: a ``.pt`` tensor (or dict with ``"x"`` and optional ``"y"``) or ``.npy`` array
    of shape (N, ...) with values in [0, 1]; labels from ``labels`` (``.pt``/``.npy``) if given.

    uint8 data is divided by 255, other numbers converted to torch's default dtype (float64 to
    float32, say), the model's; an array (N, H, W) is read as grey images (N, 1, H, W), so
    convolutional networks take it; (N, D) stays vectors, (N, C, H, W) images.
    """
    return _load_array(path, labels)[0]


def _load_array(path: str | os.PathLike, labels: str | os.PathLike | None = None) -> tuple[Split, list[str]]:
    """:func:`load_array`, and notes on what was done to the data (for the run's output)."""
    path, notes = Path(path), []
    x, y = read_rows(path, labels)
    x = torch.as_tensor(x)
    dtype = torch.get_default_dtype()  # the model's: float64 data into a float32 model fails deep in torch
    if x.dtype == torch.uint8:
        notes.append("uint8 values divided by 255")
        x = x.to(dtype) / 255
    elif x.dtype != dtype:
        if x.is_floating_point():
            notes.append(f"{x.dtype} values converted to {dtype}".replace("torch.", ""))
        x = x.to(dtype)
    if x.dim() < 2 or x.shape[0] < 2:
        raise DataError(f"{path} holds a tensor of shape {tuple(x.shape)}; expected (N, ...) with N >= 2")
    if x.dim() == 3:  # (N, H, W): grey images, as numpy holds them
        x = x.unsqueeze(1)
        notes.append("(N, H, W) array read as single-channel images (N, 1, H, W)")
    check_values(x, str(path))
    if y is not None:
        y = class_indices(y, labels or path)
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{x.shape[0]} data points but {y.shape[0]} labels; give one label per row")
        if (y < 0).any():
            raise DataError("labels must be class indices 0, 1, ..., K-1")
    return Split(x, y), notes


def class_indices(y, what: str | os.PathLike) -> Tensor:
    """Labels ``y`` (an array or tensor) as class indices, one ``long`` per row; labels of ``what``
    that are not whole numbers are refused rather than truncated to a class."""
    y = torch.as_tensor(np.asarray(y)).reshape(-1)
    if y.is_floating_point():
        bad = (~torch.isfinite(y) | (y != y.round())).nonzero()
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{what} holds labels that are not whole numbers ({y[i].item():g} in row {i}); "
                            "give one class index per row (0, 1, ...)", "labels_file")  # fmt: skip
    return y.long()


def read_rows(path: Path, labels: str | os.PathLike | None = None, mmap: bool = False):
    """The rows and labels a data file holds, as stored (not yet converted): a ``.pt`` tensor or
    dict ``{"x": ..., "y": ...}``, or a ``.npy`` array (read through a memory map with ``mmap``);
    labels from the file ``labels`` where given."""
    x, y = _read(path, mmap), None
    if isinstance(x, dict):
        if "x" not in x:
            raise DataError(f"{path} holds a dict without the key 'x'; save {{'x': data, 'y': labels}}")
        x, y = x["x"], x.get("y")
    if labels is not None:
        y = _read(Path(labels))
    for what, a in (("data", x), ("labels", y)):
        kind = getattr(getattr(a, "dtype", None), "kind", None)  # numpy's; torch dtypes have none
        if a is not None and not isinstance(a, torch.Tensor) and kind not in tuple("biuf"):
            raise DataError(f"{labels if what == 'labels' else path} holds {getattr(a, 'dtype', type(a).__name__)} "
                            f"{what}, not numbers; save a numeric array")  # fmt: skip
    return x, y


def _read(path: Path, mmap: bool = False):
    if not path.exists():
        raise DataError(f"data file {path} does not exist; if it moved, give its new path (data_file)")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        if path.suffix == ".pt":
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        from .checkpoint import load_error_cause

        raise DataError(
            f"could not read {path} ({type(e).__name__}: {load_error_cause(str(e))}); is it truncated or corrupted?"
        ) from None
    raise DataError(f"unsupported data file {path}: use a .pt tensor or a .npy array")


def check_values(x: Tensor, what: str = "data") -> None:
    """Refuse non-finite data and values outside [0, 1]."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise DataError(f"{what} contains {bad} NaN or infinite values; clean or drop those rows")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise DataError(f"{what} has values in [{lo:.3g}, {hi:.3g}]; pyrovae expects [0, 1]: rescale it")


def is_binary(x: Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One Bernoulli draw per pixel with the grey value as probability (dynamic binarization)."""
    return torch.bernoulli(x, generator=generator)


def select_classes(data: Dataset, keep: list[int] | None = None, drop: list[int] | None = None) -> Dataset:
    """Keep only the training and validation data of the classes ``keep`` (or of all but ``drop``),
    so a model learns some classes and can be tested on all: the test set keeps every class.

    :raises DataError: when the data has no labels, or a class named is not among its labels.
    """
    if keep is None and drop is None:
        return data
    option = "classes" if keep is not None else "exclude_classes"
    if data.train.y is None:
        raise DataError(f"{option} needs labelled data; give labels_file with the data", option)
    present = sorted(set(data.train.y.unique().tolist()))
    unknown = sorted(set(keep if keep is not None else drop) - set(present))
    if unknown:
        raise DataError(
            f"{option} {unknown} are not labels of the training data (its labels: {present})", option
        )
    chosen = keep if keep is not None else [c for c in present if c not in drop]
    if not chosen:
        raise DataError(f"{option} leaves no class to train on; keep at least one of {present}", option)
    wanted = torch.tensor(chosen)
    data.train = data.train.subset(torch.isin(data.train.y, wanted))
    if data.val.y is not None:
        data.val = data.val.subset(torch.isin(data.val.y, wanted))
    data.notes.append(
        f"training and validation on classes {chosen} only ({len(data.train)} / {len(data.val)} images); "
        "the test set keeps every class (a conditional model is tested on the trained ones)"
    )
    return data


def trained_classes(
    num_classes: int, keep: list[int] | None = None, drop: list[int] | None = None
) -> list[int]:
    """The classes a model saw in training, out of ``num_classes``: ``keep``, or all but ``drop``
    (see :func:`select_classes`)."""
    if keep is not None:
        return sorted(keep)
    return [c for c in range(num_classes) if c not in (drop or [])]


def split_train_val(train: Split, val_size: int, seed: int = 0) -> tuple[Split, Split]:
    """A fixed random validation split; the same ``seed`` always gives the same split."""
    if not 0 < val_size < len(train):
        raise DataError(f"validation size {val_size} must be between 1 and {len(train) - 1}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[val_size:]), train.subset(perm[:val_size])


def check_options(cfg) -> None:
    """Refuse ``classes`` with ``exclude_classes``, and an option of :data:`SPECIFIC` given to a
    data set that does not take it (see :data:`DATASETS`); ``cfg`` is a
    :class:`~pyrovae.config.Config`, whose ``validate`` calls this.

    :raises ConfigError: naming the option at fault.
    """
    if cfg.classes is not None and cfg.exclude_classes is not None:
        raise ConfigError(
            "give classes (those to keep) or exclude_classes (those to drop), not both", "classes"
        )
    for option, default in SPECIFIC.items():
        if getattr(cfg, option) in (None, "", default) or option in DATASETS[cfg.dataset]:
            continue
        if option == "image_size":
            raise ConfigError(
                "image_size applies only to dataset dsprites; drop it or set dataset dsprites", option
            )
        if cfg.dataset == "dsprites":
            raise ConfigError("dsprites has its own labels (the shape); drop labels_file", option)
        # "set dataset file", unquoted: the CLI's message says "set --dataset file"
        raise ConfigError(f"{option} was given but dataset is 'mnist': set dataset file to train on your own file",
                          "dataset")  # fmt: skip


def hold_out(n: int, val_size: int, seed: int) -> tuple[int, Tensor]:
    """The size of a validation and a test set of at most ``val_size`` and a tenth of ``n`` rows each
    (at least one), and the random permutation (``seed``) whose first rows they take."""
    return max(1, min(val_size, n // 10)), torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def load_dataset(
    name: str = "mnist",
    data_dir: str | None = None,
    data_file: str | None = None,
    labels_file: str | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
    split_seed: int = 0,
    image_size: int = 64,
    train_size: int | None = None,
) -> Dataset:
    """Load a data set and split it. ``name`` is ``"mnist"``, ``"file"`` with ``data_file``, or
    ``"dsprites"`` (rendered, or DeepMind's ``.npz`` as ``data_file``; see :func:`pyrovae.dsprites.load_dsprites`).

    A user's file is split into train / validation / test (80 / 10 / 10 unless ``val_size`` fits).
    """
    if name == "dsprites":
        from .dsprites import load_dsprites

        return load_dsprites(data_file, image_size, val_size, split_seed, train_size)
    if name == "mnist":
        train, test, k = load_mnist(data_dir)
        train, val = split_train_val(train, val_size, split_seed)
        return Dataset(train, val, test, k, "mnist")
    if name == "file":
        if not data_file:
            raise DataError("dataset 'file' needs data_file, the path of a .pt or .npy array", "data_file")
        full, notes = _load_array(data_file, labels_file)
        n = len(full)
        n_hold, perm = hold_out(n, val_size, split_seed)
        val, test, train = (full.subset(perm[:n_hold]), full.subset(perm[n_hold : 2 * n_hold]),
                            full.subset(perm[2 * n_hold :]))  # fmt: skip
        k = int(full.y.max()) + 1 if full.y is not None else 0
        split = "80/10/10" if n_hold == max(1, n // 10) else f"with val_size {n_hold} for validation and test"
        capped = f"; val_size {val_size} capped at a tenth" if n_hold < val_size != DEFAULT_VAL_SIZE else ""
        notes.append(f"{n} rows split {split} at random (split_seed {split_seed}{capped})")
        return Dataset(train, val, test, k, Path(data_file).stem, notes)
    raise DataError(f"unknown dataset {name!r}; choose 'mnist', 'file' or 'dsprites'")


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, device=None):
    """Index tensors of a fresh random permutation, ``batch_size`` at a time (last may be short)."""
    perm = torch.randperm(n, generator=generator).to(device)
    return perm.split(batch_size)
