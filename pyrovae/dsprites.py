"""dSprites (Matthey et al. 2017) generated procedurally: every image rendered from its factors.

The five ground-truth factors and their values are those of DeepMind's data set:

=========== ===== ==========================================
factor      size  values
=========== ===== ==========================================
shape       3     square, ellipse, heart (values 1, 2, 3)
scale       6     linspace(0.5, 1, 6)
orientation 40    2πk/40, k = 0..39, in [0, 2π)
pos_x       32    linspace(0, 1, 32)
pos_y       32    linspace(0, 1, 32)
=========== ===== ==========================================

3 · 6 · 40 · 32 · 32 = 737,280 binary images. Nothing is stored: an image is computed from its
factors by testing every pixel centre against the shape's implicit equation, vectorized over a
batch, so any subset can be drawn by factor. The images are not pixel-identical to DeepMind's
file, whose sprites were drawn by other code, but have its factors, their order and the
geometry below; where a user has that file, :func:`from_npz` reads it with the same interface.

Geometry, in units of the image side: a shape of scale ``s`` has half-size ``R·s`` with
``R = 0.14``; its centre is at ``MARGIN + pos·(1 - 2·MARGIN)`` with ``MARGIN = 0.22`` (columns
for ``pos_x``, rows, downwards, for ``pos_y``), so no shape at any orientation touches the
image's border pixels. With ``(x, y)`` a pixel centre's offset from the shape's centre, turned
back by the orientation and divided by ``R·s`` (``y`` downwards): the square is
``|x|, |y| ≤ 1`` (side ``2R·s``), the ellipse ``x² + 4y² ≤ 1`` (semi-axes ``R·s`` and
``R·s/2``), the heart ``(u² + v² - 1)³ ≤ u² v³`` with ``(u, v) = 1.2·(x, -y)``, its tip down.
Orientation turns the shape counter-clockwise about its centre (in the image as shown).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import DEFAULT_VAL_SIZE, DataError, Dataset, Split, hold_out

FACTORS = ("shape", "scale", "orientation", "pos_x", "pos_y")
SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
R, MARGIN, HEART = 0.14, 0.22, 1.2
_CHUNK = 2**24  # pixels rendered at once


def factor_values(classes: Tensor) -> Tensor:
    """DeepMind's ``latents_values`` of factor classes ``(N, 5)``: shape 1..3, scale in
    [0.5, 1], orientation in [0, 2π), positions in [0, 1]. Shape ``(N, 5)``, float64.

    >>> factor_values(torch.tensor([[2, 5, 10, 31, 0]])).tolist()
    [[3.0, 1.0, 1.5707963267948966, 1.0, 0.0]]
    """
    c = torch.as_tensor(classes).to(torch.float64)
    return torch.stack(
        [c[:, 0] + 1, 0.5 + 0.1 * c[:, 1], c[:, 2] * (2 * math.pi / 40), c[:, 3] / 31, c[:, 4] / 31], 1
    )


def render(classes: Tensor, size: int = 64) -> Tensor:
    """Binary images ``(N, 1, size, size)`` (float32, 0 or 1) of factor classes ``(N, 5)``."""
    classes = torch.as_tensor(classes).long().reshape(-1, 5)
    out = torch.empty(len(classes), 1, size, size)
    step = max(1, _CHUNK // (size * size))
    for i in range(0, len(classes), step):
        out[i : i + step, 0] = _render(classes[i : i + step], size)
    return out


def _render(classes: Tensor, size: int) -> Tensor:
    v = factor_values(classes).float()  # (N, 5)
    centre = MARGIN + v[:, 3:] * (1 - 2 * MARGIN)  # (N, 2): column, row
    half = R * v[:, 1]  # (N,)
    cos, sin = _cos_sin(classes[:, 2])  # a quarter turn swaps them exactly: symmetric to the pixel
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres
    dx = (grid[None, :] - centre[:, 0, None]) / half[:, None]  # (N, W)
    dy = (grid[None, :] - centre[:, 1, None]) / half[:, None]  # (N, H)
    # rows point down, so turning counter-clockwise on screen is clockwise in (column, row)
    c, s = cos[:, None, None], sin[:, None, None]
    x = c * dx[:, None, :] - s * dy[:, :, None]  # (N, H, W), shape frame, x right
    y = s * dx[:, None, :] + c * dy[:, :, None]  # (N, H, W), y down
    out = torch.empty(x.shape, dtype=torch.bool)
    for k, inside in enumerate((_square, _ellipse, _heart)):
        m = classes[:, 0] == k
        if m.any():
            out[m] = inside(x[m], y[m])
    return out.float()


def _square(x: Tensor, y: Tensor) -> Tensor:
    return (x.abs() <= 1) & (y.abs() <= 1)


def _ellipse(x: Tensor, y: Tensor) -> Tensor:
    return x * x + 4 * y * y <= 1


def _heart(x: Tensor, y: Tensor) -> Tensor:
    u2, w = (HEART * x) ** 2, -HEART * y
    return (u2 + w * w - 1) ** 3 <= u2 * w**3


def _cos_sin(k: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of 2πk/40, with the quarter turns (k a multiple of 10) and their offsets from
    them computed alike, so turning by 10 steps is an exact quarter turn of the frame."""
    quarter, rest = torch.div(k, 10, rounding_mode="floor"), k % 10
    a = rest.to(torch.float64) * (2 * math.pi / 40)
    c0, s0 = torch.cos(a).float(), torch.sin(a).float()
    # (c, s) of a + q·π/2 without evaluating cos/sin at large angles
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])[quarter % 4]
    cq, sq = table[:, 0], table[:, 1]
    return c0 * cq - s0 * sq, s0 * cq + c0 * sq


class GroundTruth:
    """Images with known factors: ``factor_sizes``, :meth:`images` of factor classes, uniform
    :meth:`sample` of classes. The disentanglement metrics need nothing else.

    Every image has a flat index (row-major over the factors, DeepMind's file order):
    :meth:`index` and :meth:`classes` convert.
    """

    name = "ground truth"
    factor_names: tuple[str, ...] = FACTORS
    factor_sizes: tuple[int, ...] = SIZES

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    @property
    def _strides(self) -> Tensor:
        sizes = torch.tensor(self.factor_sizes)
        return torch.cat([sizes.flip(0).cumprod(0).flip(0)[1:], torch.ones(1, dtype=torch.long)])

    def index(self, classes: Tensor) -> Tensor:
        """Flat indices ``(N,)`` of factor classes ``(N, F)``."""
        return (torch.as_tensor(classes).long() * self._strides).sum(-1)

    def classes(self, index: Tensor) -> Tensor:
        """Factor classes ``(N, F)`` of flat indices ``(N,)``."""
        index = torch.as_tensor(index).long()[:, None]
        return torch.div(index, self._strides, rounding_mode="floor") % torch.tensor(self.factor_sizes)

    def sample(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """``n`` factor classes drawn uniformly and independently, shape ``(n, F)``."""
        return np.stack([rng.randint(k, size=n) for k in self.factor_sizes], 1)

    def images(self, classes) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class DSprites(GroundTruth):
    """The 737,280 dSprites images, rendered on demand at ``image_size`` pixels a side.

    >>> ds = DSprites(image_size=32)
    >>> len(ds), ds.images(ds.classes(torch.tensor([0, 737279]))).shape
    (737280, torch.Size([2, 1, 32, 32]))
    """

    name = "dsprites"

    def __init__(self, image_size: int = 64) -> None:
        if image_size < 8:
            raise ValueError(f"dsprites image_size must be at least 8 pixels, got {image_size}")
        self.image_size = image_size

    def images(self, classes) -> Tensor:
        return render(torch.as_tensor(classes), self.image_size)

    def values(self, classes) -> Tensor:
        return factor_values(torch.as_tensor(classes))


class ArraySprites(GroundTruth):
    """Images and factor classes held in arrays (DeepMind's ``.npz``, see :func:`from_npz`).

    :param imgs: ``(N, H, W)`` binary images; :param classes: ``(N, F)`` factor classes, which
        must cover every combination of the factors' values exactly once.
    """

    def __init__(
        self, imgs: np.ndarray, classes: np.ndarray, values: np.ndarray, image_size: int, name: str
    ) -> None:
        self.name = name
        self.factor_sizes = tuple(int(m) + 1 for m in classes.max(0))
        if len(self.factor_sizes) != len(FACTORS):
            self.factor_names = tuple(f"factor{i}" for i in range(len(self.factor_sizes)))
        if len(classes) != math.prod(self.factor_sizes):
            raise DataError(
                f"{name}: {len(classes)} images, but its factors' classes span a grid of "
                f"{math.prod(self.factor_sizes)} combinations {self.factor_sizes}; the metrics need every one"
            )
        self.rows = torch.full((len(classes),), -1, dtype=torch.long)
        self.rows[self.index(torch.as_tensor(classes))] = torch.arange(len(classes))
        if (self.rows < 0).any():
            raise DataError(f"{name}: some factor combinations appear twice and others not at all")
        side = imgs.shape[-1]
        if image_size > side or side % image_size:
            raise DataError(f"{name}: its {side}-pixel images cannot be reduced to image_size {image_size}",
                            "image_size")  # fmt: skip
        self.imgs, self._values, self.image_size = imgs, values, image_size

    def images(self, classes) -> Tensor:
        rows = self.rows[self.index(torch.as_tensor(classes))].numpy()
        order = np.argsort(rows)  # h5py-like readers and memory maps like sorted reads
        x = torch.empty(len(rows), 1, self.imgs.shape[-2], self.imgs.shape[-1])
        x[order, 0] = torch.as_tensor(np.asarray(self.imgs[rows[order]]), dtype=torch.float32)
        k = x.shape[-1] // self.image_size
        if k > 1:  # a pixel of the smaller image is on where at least half its k x k block is
            x = (torch.nn.functional.avg_pool2d(x, k) >= 0.5).float()
        return x

    def values(self, classes) -> Tensor:
        return torch.as_tensor(self._values[self.rows[self.index(torch.as_tensor(classes))].numpy()])


def ground_truth(data_file: str | os.PathLike | None = None, image_size: int = 64) -> GroundTruth:
    """DeepMind's file ``data_file`` (see :func:`from_npz`) where given, else the rendered
    :class:`DSprites`."""
    return from_npz(data_file, image_size) if data_file else DSprites(image_size)


def from_npz(path: str | os.PathLike, image_size: int = 64) -> ArraySprites:
    """DeepMind's ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``: ``imgs`` (N, 64, 64),
    ``latents_classes`` and ``latents_values`` (N, 6) whose first column, colour, has one value
    and is dropped. A file in the same layout with fewer values per factor also works."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; give the path of DeepMind's dSprites .npz")
    try:
        f = np.load(path, allow_pickle=False)
        if isinstance(f, np.ndarray):  # a .npy holds one array, not the three named ones
            raise ValueError(f"a single array of shape {f.shape}, not an .npz archive")
        imgs, classes, values = f["imgs"], f["latents_classes"], f["latents_values"]
    except (KeyError, ValueError, OSError) as e:
        raise DataError(
            f"could not read {path} as dSprites ({type(e).__name__}: {e}); expected an .npz with the arrays "
            "imgs, latents_classes and latents_values"
        ) from None
    if imgs.ndim != 3 or classes.ndim != 2 or len(classes) != len(imgs) or values.shape != classes.shape:
        raise DataError(f"{path}: imgs {imgs.shape}, latents_classes {classes.shape} and latents_values "
                        f"{values.shape} do not match (expected (N, H, W), (N, F), (N, F))")  # fmt: skip
    if classes.shape[1] == 6:  # colour: one value in dSprites
        classes, values = classes[:, 1:], values[:, 1:]
    return ArraySprites(imgs, classes.astype(np.int64), values, image_size, path.name)


def load_dsprites(
    data_file: str | None = None,
    image_size: int = 64,
    val_size: int = DEFAULT_VAL_SIZE,
    split_seed: int = 0,
    train_size: int | None = None,
) -> Dataset:
    """dSprites split at random (``split_seed``) into validation and test sets of ``val_size``
    images (at most a tenth each) and a training set of the rest, or of its first ``train_size``.

    Only the images of the splits are made: rendered (:class:`DSprites`) or
    read from DeepMind's ``.npz`` (``data_file``). Each split holds the factor classes
    (``factors``, ``(N, 5)``) and the shape as label ``y``; ``ground_truth`` draws any image.
    Float32 images take 4 bytes a pixel: all 737,280 at 64 × 64 would be 12 GB, at 32 × 32 3 GB.
    """
    try:
        source = ground_truth(data_file, image_size)
    except ValueError as e:
        raise DataError(str(e), "image_size") from None
    n = len(source)
    n_hold, perm = hold_out(n, val_size, split_seed)
    parts = [perm[:n_hold], perm[n_hold : 2 * n_hold], perm[2 * n_hold :][:train_size]]
    splits = []
    for index in parts:
        classes = source.classes(index)  # (N, F)
        splits.append(Split(source.images(classes), classes[:, 0].clone(), classes))
    origin = f"read from {Path(data_file).name}" if data_file else "rendered"
    notes = [f"{origin} at {image_size}x{image_size}, factors {dict(zip(source.factor_names, source.factor_sizes, strict=True))}",
             f"{n} images split at random (split_seed {split_seed})"]  # fmt: skip
    if n_hold < val_size:  # said, as the run then validates on fewer images than asked
        notes.append(f"val_size {val_size} capped at a tenth of the {n} images: {n_hold} validation and "
                     f"{n_hold} test images")  # fmt: skip
    val, test, train = splits
    return Dataset(
        train,
        val,
        test,
        num_classes=source.factor_sizes[0],
        name=source.name,
        notes=notes,
        ground_truth=source,
    )
