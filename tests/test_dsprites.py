"""dSprites rendered from its factors: the factor grid, the shapes' geometry, DeepMind's .npz."""

import math

import numpy as np
import pytest
import torch

from pyrovae.config import Config, ConfigError
from pyrovae.data import DataError, load_dataset
from pyrovae.dsprites import MARGIN, SIZES, DSprites, R, factor_values, from_npz


def _at(shape=0, scale=5, orient=0, px=15, py=15) -> list[int]:
    return [shape, scale, orient, px, py]


def test_factor_grid_and_values():
    ds = DSprites(32)
    assert len(ds) == 737_280 and ds.factor_sizes == SIZES == (3, 6, 40, 32, 32)
    index = torch.tensor([0, 1, 32, 1024, 40960, 737_279])
    classes = ds.classes(index)
    assert classes[-1].tolist() == [2, 5, 39, 31, 31] and classes[3].tolist() == [0, 0, 1, 0, 0]
    assert torch.equal(ds.index(classes), index)  # DeepMind's order: row-major over the factors
    every = torch.stack(torch.meshgrid(*[torch.arange(k) for k in SIZES[1:]], indexing="ij"), -1).reshape(
        -1, 4
    )
    v = factor_values(torch.cat([torch.zeros(len(every), 1, dtype=torch.long), every], 1))
    assert torch.allclose(v[:, 1].unique(), torch.linspace(0.5, 1, 6, dtype=torch.float64))
    assert torch.allclose(v[:, 2].unique(), torch.arange(40, dtype=torch.float64) * 2 * math.pi / 40)
    assert v[:, 2].max() < 2 * math.pi
    assert torch.allclose(v[:, 3].unique(), torch.linspace(0, 1, 32, dtype=torch.float64))


def test_images_are_binary_deterministic_and_inside():
    ds = DSprites(64)
    rng = np.random.RandomState(0)
    classes = torch.as_tensor(ds.sample(300, rng))
    x = ds.images(classes)
    assert x.shape == (300, 1, 64, 64) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0} and torch.equal(x, ds.images(classes))
    assert (x.sum((1, 2, 3)) > 10).all()
    extremes = torch.tensor([_at(s, 5, o, px, py) for s in range(3) for o in (0, 5, 13) for px in (0, 31)
                             for py in (0, 31)])  # fmt: skip
    edge = ds.images(extremes)[:, 0]
    border = torch.cat([edge[:, 0], edge[:, -1], edge[:, :, 0], edge[:, :, -1]], 1)
    assert border.sum() == 0  # no shape leaves the image, whatever its position and turn


def test_areas_follow_the_scale_ratios():
    ds, size = DSprites(64), 64
    scales = torch.linspace(0.5, 1, 6)
    mean_area = {}
    for shape, unit_area in [(0, 4.0), (1, math.pi / 2), (2, None)]:
        # averaged over the 32 x-positions and two turns, so the pixel grid's offsets average out
        c = torch.tensor([_at(shape, k, o, px) for k in range(6) for o in (0, 3) for px in range(32)])
        areas = ds.images(c).sum((1, 2, 3)).reshape(6, 64).mean(1)  # (scales,)
        assert torch.allclose(areas / areas[-1], (scales / scales[-1]) ** 2, rtol=0.03), areas
        if unit_area is not None:  # square 2Rs a side; ellipse semi-axes Rs and Rs/2
            expected = unit_area * (R * scales * size) ** 2
            assert torch.allclose(areas, expected, rtol=0.03), (areas, expected)
        mean_area[shape] = areas
    assert (mean_area[0] > mean_area[2]).all() and (mean_area[2] > mean_area[1]).all()


def test_rotational_symmetries():
    ds = DSprites(64)
    for k in (0, 3, 7, 13):
        square = ds.images(torch.tensor([_at(0, 4, k), _at(0, 4, k + 10), _at(0, 4, k + 5)]))
        assert torch.equal(square[0], square[1])  # a quarter turn maps the square onto itself
        assert not torch.equal(square[0], square[2])  # an eighth does not
        ellipse = ds.images(torch.tensor([_at(1, 4, k), _at(1, 4, k + 20), _at(1, 4, k + 10)]))
        assert torch.equal(ellipse[0], ellipse[1])  # a half turn
        assert (ellipse[0] != ellipse[2]).sum() > 20  # a quarter turn swaps its axes
        heart = ds.images(torch.tensor([_at(2, 4, k), _at(2, 4, k + 20)]))
        assert not torch.equal(heart[0], heart[1])
    upright = ds.images(torch.tensor([_at(2, 5, 0)]))[0, 0]
    j = torch.arange(64) + 0.5
    centre = (MARGIN + 15 / 31 * (1 - 2 * MARGIN)) * 64
    assert (upright.sum(0) * j).sum() / upright.sum() == pytest.approx(centre, abs=0.3)  # mirror-symmetric
    rows = upright.sum(1).nonzero()[:, 0]
    assert upright[rows[0]].sum() < upright[rows[0] + 3].sum() and upright[rows[-1]].sum() <= 2  # tip down


def test_positions_lie_on_the_stated_grid():
    ds, size = DSprites(64), 64
    cols = torch.tensor([_at(0, 2, 0, px, 7) for px in range(32)])
    x = ds.images(cols)[:, 0]
    j = torch.arange(size) + 0.5
    centroid = (x.sum(1) * j).sum(1) / x.sum((1, 2))  # (32,) pixels
    expected = (MARGIN + torch.linspace(0, 1, 32) * (1 - 2 * MARGIN)) * size
    assert (centroid - expected).abs().max() < 0.51  # the centre on the grid, to within half a pixel
    rows = ds.images(torch.tensor([_at(1, 2, 0, 3, py) for py in (0, 10, 31)]))[:, 0]
    centroid_y = (rows.sum(2) * j).sum(1) / rows.sum((1, 2))
    assert (centroid_y - expected[[0, 10, 31]]).abs().max() < 0.51  # pos_y runs down the rows


def test_load_dataset_splits_with_factors():
    data = load_dataset("dsprites", val_size=40, split_seed=1, image_size=32, train_size=200)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 40, 40)
    assert data.x_shape == (1, 32, 32) and data.num_classes == 3 and data.name == "dsprites"
    for split in (data.train, data.val, data.test):
        assert split.factors.shape == (len(split), 5)
        assert torch.equal(split.x, DSprites(32).images(split.factors))  # each image with its factors
        assert torch.equal(split.y, split.factors[:, 0])
    index = [data.ground_truth.index(s.factors) for s in (data.train, data.val, data.test)]
    assert len(torch.cat(index).unique()) == 280  # disjoint splits
    assert torch.equal(data.train.subset(slice(0, 5)).factors, data.train.factors[:5])


def _tiny_npz(path, sizes=(1, 3, 2, 2, 2, 2), shuffle=True):
    classes = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    imgs = np.zeros((len(classes), 64, 64), dtype=np.uint8)
    for i, c in enumerate(classes):  # a mark that encodes the factors, to check lookups
        imgs[i, : 4 * (c[1] + 1), : 4 * (1 + c[2] + 2 * c[3] + 4 * c[4] + 8 * c[5])] = 1
    if shuffle:
        perm = np.random.RandomState(0).permutation(len(classes))
        classes, imgs = classes[perm], imgs[perm]
    values = classes.astype(np.float64) / 2
    np.savez(path, imgs=imgs, latents_classes=classes, latents_values=values)
    return path


def test_npz_read_with_its_factors(tmp_path):
    path = _tiny_npz(tmp_path / "dsprites.npz")
    src = from_npz(path)
    assert src.factor_sizes == (3, 2, 2, 2, 2) and len(src) == 48
    c = torch.tensor([[2, 1, 0, 1, 1], [0, 0, 1, 0, 0]])
    x = src.images(c)[:, 0]
    assert x[0].sum() == 12 * 4 * (1 + 1 + 0 + 4 + 8) and x[1].sum() == 4 * 4 * 3
    assert torch.equal(src.values(c), c.double() / 2)
    half = from_npz(path, image_size=32).images(c)[:, 0]
    assert half.shape == (2, 32, 32) and half[0].sum() == 6 * 2 * 14  # 2x2 blocks, wholly on
    data = load_dataset("dsprites", data_file=str(path), val_size=4, train_size=None)
    assert (len(data.train), len(data.val)) == (40, 4) and data.ground_truth.factor_sizes == (3, 2, 2, 2, 2)
    assert torch.equal(data.train.x, src.images(data.train.factors))


def test_npz_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 64, 64)))
    with pytest.raises(DataError, match="imgs, latents_classes and latents_values"):
        from_npz(bad)
    plain = tmp_path / "imgs.npy"  # the images alone, saved with np.save
    np.save(plain, np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(
        DataError, match=r"could not read .*imgs.npy as dSprites \(ValueError: a single array"
    ):
        from_npz(plain)
    part = tmp_path / "part.npz"
    f = np.load(_tiny_npz(tmp_path / "full.npz"))
    np.savez(part, imgs=f["imgs"][:-1], latents_classes=f["latents_classes"][:-1],
             latents_values=f["latents_values"][:-1])  # fmt: skip
    with pytest.raises(DataError, match="every one"):
        from_npz(part)
    with pytest.raises(DataError, match="does not exist"):
        from_npz(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="image_size applies only to dataset dsprites"):
        Config(image_size=32).validate()


def test_a_val_size_above_a_tenth_is_capped_and_the_data_line_says_so(tmp_path, capsys):
    from pyrovae.cli import main

    npz = _tiny_npz(tmp_path / "dsprites.npz")  # 48 images: at most 4 for validation and 4 for test
    assert main(["train", "--dataset", "dsprites", "--data-file", str(npz), "--image-size", "32", "--val-size", "10",
                 "--z-dim", "2", "--hidden", "8", "--batch-size", "8", "--epochs", "1", "--no-eval",
                 "--out", str(tmp_path / "run")]) == 0  # fmt: skip
    data_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("data:"))
    assert "40 train / 4 validation / 4 test" in data_line
    assert "val_size 10 capped at a tenth of the 48 images: 4 validation and 4 test images" in data_line
