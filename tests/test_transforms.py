"""Joint image/label augmentations and the epoch-seeded training sets."""
import numpy as np
import pytest
import torch

from affinitynet.conventions import normalize_image
from affinitynet.data.transforms import (ClassificationSet, LabelMapSet, TrainTransform, color_jitter,
                                         random_crop, random_hflip, random_resize_long, random_scale)


def coord_pair(h=20, w=30):
    """Image whose red channel is 4*x and green channel 4*y; label = x (a function of the same coordinates)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([4 * x, 4 * y, np.full_like(x, 100)], axis=-1).astype(np.uint8)
    return img, x.astype(np.uint8)


def test_hflip_moves_image_and_label_together():
    img, label = coord_pair()
    flipped = 0
    for seed in range(20):
        out_img, out_label = random_hflip(img, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_img[..., 0] // 4, out_label)
        if out_label[0, 0] == 29:
            flipped += 1
            np.testing.assert_array_equal(out_label, label[:, ::-1])
        else:
            np.testing.assert_array_equal(out_label, label)
    assert 0 < flipped < 20
    assert img[0, 0, 0] == 0 and label[0, 0] == 0  # inputs untouched


def test_crop_cuts_the_same_window_and_pads_label_with_255():
    img, label = coord_pair(20, 30)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out_img, out_label = random_crop(img, label, 16, rng, img_fill=7, label_fill=255)
        assert out_img.shape == (16, 16, 3) and out_label.shape == (16, 16)
        np.testing.assert_array_equal(out_img[..., 0] // 4, out_label)
        x0, y0 = out_label[0, 0], out_img[0, 0, 1] // 4  # a real window of the input
        np.testing.assert_array_equal(out_img, img[y0:y0 + 16, x0:x0 + 16])
    # larger than the image: padded at a random place, label 255 and image fill outside
    positions = set()
    for seed in range(10):
        out_img, out_label = random_crop(img, label, 40, np.random.default_rng(seed), img_fill=7)
        valid = out_label != 255
        assert valid.sum() == 20 * 30
        assert (out_img[~valid] == 7).all()
        np.testing.assert_array_equal(out_img[valid][:, 0] // 4, out_label[valid])
        ys, xs = np.nonzero(valid)
        positions.add((ys.min(), xs.min()))
        np.testing.assert_array_equal(out_label[ys.min():ys.max() + 1, xs.min():xs.max() + 1], label)
    assert len(positions) > 1
    # mixed: taller than the crop in one direction, narrower in the other
    out_img, out_label = random_crop(img, label, 25, np.random.default_rng(0))
    assert (out_label != 255).sum() == 20 * 25


def test_crop_of_float_image_pads_with_zero():
    x = np.ones((5, 6, 3), np.float32)
    out, lab = random_crop(x, None, 8, np.random.default_rng(0))
    assert lab is None and out.dtype == np.float32
    assert out.sum() == 5 * 6 * 3 and set(np.unique(out)) == {0.0, 1.0}


def test_resize_long_and_scale_keep_image_and_label_aligned():
    img, label = coord_pair(20, 30)
    for seed in range(5):
        out_img, out_label = random_resize_long(img, label, (40, 60), np.random.default_rng(seed))
        assert out_img.shape[:2] == out_label.shape and 40 <= max(out_label.shape) <= 60
        h, w = out_label.shape
        assert max(h, w) == w and abs(h / w - 20 / 30) < 0.05
        # bilinear image vs nearest label at the same pixel: both read the same x coordinate
        assert np.abs(out_img[..., 0].astype(float) / 4 - out_label).max() <= 1.0
        assert out_label.dtype == np.uint8
    blocks = np.kron(np.array([[0, 1], [255, 2]], np.uint8), np.ones((10, 15), np.uint8))
    _, out = random_scale(img, blocks, (0.3, 1.7), np.random.default_rng(3))
    assert set(np.unique(out)) <= {0, 1, 2, 255}  # nearest neighbour invents no class
    only_img, none = random_resize_long(img, None, (8, 8), np.random.default_rng(0))
    assert none is None and only_img.shape == (5, 8, 3)


def test_color_jitter():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert color_jitter(img, 0.0, rng) is img
    a = color_jitter(img, 0.3, np.random.default_rng(5))
    b = color_jitter(img, 0.3, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == img.shape and not np.array_equal(a, img)
    grey = np.full((4, 4, 3), 90, np.uint8)  # saturation and contrast leave a flat grey image as it is
    out = color_jitter(grey, 0.3, np.random.default_rng(1))
    assert (out == out[0, 0, 0]).all() and 90 * 0.7 - 1 <= out[0, 0, 0] <= 90 * 1.3 + 1


def test_normalize_values_and_layout():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 1] = (255, 0, 51)
    x = normalize_image(img, mean=(0.5, 0.5, 0.0), std=(0.5, 0.25, 0.2)).numpy()
    assert x.shape == (3, 2, 3) and x.dtype == np.float32
    assert x[:, 0, 1] == pytest.approx([1.0, -2.0, 1.0])
    assert x[:, 1, 1] == pytest.approx([-1.0, -2.0, 0.0])


class Seg:
    crop_size = 24
    scale_range = [0.7, 1.4]
    color_jitter = 0.0


class Aff:
    crop_size = 24
    resize_long = [20, 40]
    color_jitter = 0.0


@pytest.mark.parametrize("cfg,kind", [(Seg, "seg"), (Aff, "aff")])
def test_train_transform_applies_geometry_identically(cfg, kind):
    img, label = coord_pair(20, 30)
    t = TrainTransform(kind, cfg(), mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))  # identity normalisation
    for seed in range(8):
        x, y = t(img, label, np.random.default_rng(seed))
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y.shape == (24, 24) and y.dtype == torch.int64
        valid = y != 255
        assert valid.any()
        assert (x[:, ~valid] == 0).all()  # padding: 0 after normalisation
        assert (x[0][valid] / 4 - y[valid].float()).abs().max() <= 1.0
    a = t(img, label, np.random.default_rng(11))
    b = t(img, label, np.random.default_rng(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = t(img, label, np.random.default_rng(12))
    assert not torch.equal(a[0], c[0])


def test_train_transform_upsamples_a_coarse_label_and_needs_one():
    img, _ = coord_pair(16, 24)
    coarse = np.arange(6, dtype=np.uint8).reshape(2, 3)  # the stride-8 grid
    t = TrainTransform("aff", type("C", (), {"crop_size": 16, "color_jitter": 0.0})())
    x, y = t(img, coarse, np.random.default_rng(0))
    assert y.shape == (16, 16) and set(y.unique().tolist()) <= set(range(6)) | {255}
    with pytest.raises(ValueError):
        t(img, None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        TrainTransform("bogus", Seg())


def test_train_transform_shrinks_an_image_whose_largest_scale_exceeds_the_bound():
    img = np.full((900, 1200, 3), 7, np.uint8)
    label = np.ones((900, 1200), np.uint8)
    cfg = type("C", (), {"crop_size": 400, "scale_range": [0.5, 1.5], "color_jitter": 0.0})()
    t = TrainTransform("seg", cfg, max_long_side=300)
    for seed in range(4):  # the image is first shrunk to 200 x 150, then scaled by at most 1.5
        _, y = t(img, label, np.random.default_rng(seed))
        rows, cols = np.nonzero((y != 255).numpy())
        assert cols.max() - cols.min() + 1 <= 300 and rows.max() - rows.min() + 1 <= 225
    small = np.full((90, 120, 3), 7, np.uint8)  # within the bound: untouched, as without one
    a = TrainTransform("seg", cfg, max_long_side=300)(small, label[:90, :120], np.random.default_rng(0))
    b = TrainTransform("seg", cfg)(small, label[:90, :120], np.random.default_rng(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


class FakeDataset:
    names = [f"n{i}" for i in range(6)]

    def load_image(self, name):
        return np.random.default_rng(int(name[1:])).integers(0, 256, (18, 26, 3), dtype=np.uint8)

    def load_labels(self, name):
        return np.eye(3, dtype=np.float32)[int(name[1:]) % 3]


class Cls:
    crop_size = 16
    resize_long = [16, 30]
    color_jitter = 0.3


def test_classification_set_is_seeded_by_epoch_and_index():
    data = ClassificationSet(FakeDataset(), TrainTransform("cls", Cls()), seed=1)
    img, labels = data[4]
    assert img.shape == (3, 16, 16) and torch.equal(labels, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(data[4][0], img)
    data.set_epoch(1)
    assert not torch.equal(data[4][0], img)
    data.set_epoch(0)
    assert torch.equal(data[4][0], img)
    other_seed = ClassificationSet(FakeDataset(), TrainTransform("cls", Cls()), seed=2)
    assert not torch.equal(other_seed[4][0], img)


def test_label_map_set_batches_do_not_depend_on_worker_count():
    ds = FakeDataset()
    data = LabelMapSet(ds, ds.names[:4], lambda name: np.full((18, 26), int(name[1:]), np.uint8),
                       TrainTransform("seg", Seg()), seed=0)
    data.set_epoch(3)

    def batches(workers):
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=workers)
        return [b for b in loader]

    serial, parallel = batches(0), batches(2)
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = serial[1]
    assert set(y[0].unique().tolist()) <= {2, 255} and set(y[1].unique().tolist()) <= {3, 255}
    with pytest.raises(ValueError):
        LabelMapSet(ds, ds.names, lambda n: None, TrainTransform("cls", Cls()))
