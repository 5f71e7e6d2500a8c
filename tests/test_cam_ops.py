"""CAM inference and normalisation, background scores, grid pooling, confident regions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from affinitynet.ops import confident as confident_mod
from affinitynet.ops.cam import (
    background_score,
    cam_scores_with_bg,
    multiscale_cam,
    normalize_cams,
    normalize_image,
    pool_to_grid,
)
from affinitynet.ops.confident import confident_labels, pool_label_map


class StandInClassifier(nn.Module):
    """Three stride-2 convs (output stride 8) and a bias-free 1x1 classifier; cam() is ReLU(W f)."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(16, num_classes, 1, bias=False)
        self.calls = []

    def cam(self, x):
        self.calls.append(x.shape[0])
        return F.relu(self.classifier(self.features(x)))


def _model(num_classes=4):
    torch.manual_seed(0)
    return StandInClassifier(num_classes).eval()


def _image(h=37, w=45):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, h, w, generator=g)


def test_normalize_image_numpy_and_tensor():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = normalize_image(img, mean, std)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    for c in range(3):
        expect = (img[:, :, c].astype(np.float64) / 255 - mean[c]) / std[c]
        np.testing.assert_allclose(out[c].numpy(), expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normalize_image(torch.from_numpy(img), mean, std), out)


@pytest.mark.parametrize("flip", [True, False])
def test_multiscale_batched_equals_loop(flip):
    model, image = _model(), _image()
    scales = (1.0, 0.5, 1.5, 2.0)
    batched = multiscale_cam(model, image, scales, flip, batched=True)
    forwards_batched = len(model.calls)
    model.calls.clear()
    loop = multiscale_cam(model, image, scales, flip, batched=False)
    assert batched.shape == (4, 37, 45)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)
    assert forwards_batched == len(scales)  # one forward per scale
    assert len(model.calls) == len(scales) * (2 if flip else 1)
    assert (batched >= 0).all() and batched.abs().sum() > 0


def test_multiscale_against_independent_reference():
    model, image = _model(), _image(30, 22)
    h, w = image.shape[1:]
    expect = torch.zeros(4, h, w)
    with torch.no_grad():
        for s in (0.5, 1.5):
            size = (round(h * s), round(w * s))
            xs = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True):
                v = torch.flip(xs, dims=[3]) if flipped else xs
                m = model.cam(v)
                m = torch.flip(m, dims=[3]) if flipped else m
                expect += F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[0]
    got = multiscale_cam(model, image, (0.5, 1.5), True)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_scale_one_no_flip_is_upsampled_cam():
    model, image = _model(), _image(40, 24)
    with torch.no_grad():
        low = model.cam(image[None])
    assert low.shape[-2:] == (5, 3)
    expect = F.interpolate(low, size=(40, 24), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(multiscale_cam(model, image, (1.0,), False), expect)


def test_multiscale_flip_adds_flipped_back_view():
    # flip=True adds the map of the flipped image, flipped back (parameter-free stand-in model)
    class Mean(nn.Module):
        def cam(self, x):
            return F.avg_pool2d(x.abs(), 8, ceil_mode=True)

    image = _image(16, 16)
    one = multiscale_cam(Mean(), image, (1.0,), False)
    two = multiscale_cam(Mean(), image, (1.0,), True)
    torch.testing.assert_close(two, one + multiscale_cam(Mean(), image.flip(-1), (1.0,), False).flip(-1))


def test_normalize_cams_keeps_present_classes():
    cams = torch.rand(5, 6, 7) * 3
    cams[1] *= 10
    labels = torch.tensor([0, 1, 0, 1, 1])
    keys, maps = normalize_cams(cams, labels)
    assert keys.dtype == torch.long and keys.tolist() == [2, 4, 5]
    assert maps.shape == (3, 6, 7)
    for i, c in enumerate([1, 3, 4]):
        peak = cams[c].max()
        torch.testing.assert_close(maps[i], cams[c] / (peak + 1e-5))
        assert maps[i].max().item() == pytest.approx(peak.item() / (peak.item() + 1e-5), abs=1e-7)
        assert maps[i].max() < 1 and maps[i].min() >= 0


def test_normalize_cams_no_classes_and_zero_map():
    cams = torch.rand(3, 4, 4)
    keys, maps = normalize_cams(cams, np.zeros(3))
    assert keys.numel() == 0 and maps.shape == (0, 4, 4)
    cams[0] = 0
    keys, maps = normalize_cams(cams, [1, 0, 0])
    assert keys.tolist() == [1] and torch.equal(maps, torch.zeros(1, 4, 4))


def test_background_score_hand_built():
    maps = torch.tensor([[[0.5, 0.0], [1.0, 0.2]], [[0.25, 0.0], [0.0, 0.6]]])
    # max over classes: [[0.5, 0], [1, 0.6]]
    expect = torch.tensor([[0.5**2, 1.0], [0.0, 0.4**2]])
    torch.testing.assert_close(background_score(maps, 2), expect)
    torch.testing.assert_close(background_score(maps, 1), 1 - torch.tensor([[0.5, 0.0], [1.0, 0.6]]))
    assert torch.equal(background_score(torch.zeros(0, 2, 3), 4), torch.ones(2, 3))
    stacked = cam_scores_with_bg(maps, 2)
    assert stacked.shape == (3, 2, 2)
    torch.testing.assert_close(stacked[0], expect)
    assert torch.equal(stacked[1:], maps)
    assert torch.equal(cam_scores_with_bg(torch.zeros(0, 2, 3), 4), torch.ones(1, 2, 3))


@pytest.mark.parametrize("shape,stride", [((13, 17), 8), ((2, 9, 8), 8), ((1, 2, 7, 5), 4), ((3, 3), 8)])
def test_pool_to_grid_matches_loop(shape, stride):
    x = torch.rand(*shape, dtype=torch.float64)
    got = pool_to_grid(x, stride)
    h, w = shape[-2:]
    gh, gw = math.ceil(h / stride), math.ceil(w / stride)
    assert got.shape == (*shape[:-2], gh, gw) and got.dtype == torch.float64
    flat, gflat = x.reshape(-1, h, w), got.reshape(-1, gh, gw)
    for n in range(flat.shape[0]):
        for i in range(gh):
            for j in range(gw):
                cell = flat[n, i * stride:(i + 1) * stride, j * stride:(j + 1) * stride]
                assert gflat[n, i, j].item() == pytest.approx(cell.mean().item(), abs=1e-12)


def _pool_label_brute(label, num_classes, stride):
    h, w = label.shape
    gh, gw = math.ceil(h / stride), math.ceil(w / stride)
    out = np.zeros((gh, gw), dtype=np.int64)
    for i in range(gh):
        for j in range(gw):
            cell = label[i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].ravel()
            counts = [int((cell == c).sum()) for c in range(num_classes)] + [int((cell == 255).sum())]
            best = max(range(len(counts)), key=lambda k: (counts[k], -k))  # ties: lowest channel
            out[i, j] = 255 if best == num_classes else best
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.long])
def test_pool_label_map_matches_brute_force(dtype):
    rng = np.random.default_rng(0)
    values = np.array([0, 1, 2, 3, 255])
    labels = values[rng.integers(0, 5, size=(3, 19, 21))]
    labels[0, :8, :8] = 255  # a cell that is all ignore
    labels[0, :8, 8:16] = np.array([1, 255] * 32).reshape(8, 8)  # tie between class 1 and ignore
    labels[1, 8:16, :8] = np.array([2, 3] * 32).reshape(8, 8)  # tie between classes 2 and 3
    got = pool_label_map(torch.as_tensor(labels, dtype=dtype), 4, 8)
    assert got.shape == (3, 3, 3) and got.dtype == dtype
    for b in range(3):
        np.testing.assert_array_equal(got[b].numpy(), _pool_label_brute(labels[b], 4, 8))
    assert got[0, 0, 0] == 255 and got[0, 0, 1] == 1 and got[1, 1, 0] == 2
    single = pool_label_map(labels[2].astype(np.uint8), 4, 4)
    np.testing.assert_array_equal(single.numpy(), _pool_label_brute(labels[2], 4, 4))


def test_pool_label_map_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        pool_label_map(torch.tensor([[0, 5]]), 4)


def test_confident_labels_without_crf_hand_built():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    maps = torch.tensor(
        [
            [[0.9, 0.2, 0.01], [0.4, 0.0, 0.3]],
            [[0.1, 0.25, 0.02], [0.5, 0.04, 0.1]],
        ]
    )
    keys = torch.tensor([3, 7])
    got = confident_labels(image, keys, maps, crf=False, fg_threshold=0.3, bg_threshold=0.05)
    expect = np.array([[3, 255, 0], [7, 0, 3]], dtype=np.uint8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expect)
    none = confident_labels(image, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 3), crf=False)
    np.testing.assert_array_equal(none, np.zeros((2, 3), np.uint8))


def test_confident_labels_without_crf_pooled():
    rng = np.random.default_rng(3)
    maps = torch.as_tensor(rng.random((2, 10, 12)), dtype=torch.float32)
    image = np.zeros((10, 12, 3), np.uint8)
    got = confident_labels(image, [1, 2], maps, crf=False, stride=4)
    pooled = pool_to_grid(maps, 4)
    expect = confident_labels(np.zeros((3, 3, 3), np.uint8), [1, 2], pooled, crf=False)
    assert got.shape == (3, 3)
    np.testing.assert_array_equal(got, expect)


def test_confident_labels_crf_rule_with_identity_crf(monkeypatch):
    # with an identity "CRF" the result follows from the two argmaxes alone
    calls = []

    def identity(image, probs, **kw):
        calls.append(kw)
        p = np.asarray(probs, dtype=np.float32)
        return p / p.sum(0, keepdims=True)

    monkeypatch.setattr(confident_mod, "dense_crf", identity)
    rng = np.random.default_rng(1)
    maps = torch.as_tensor(rng.random((3, 9, 11)) ** 3, dtype=torch.float32)
    keys = [2, 5, 9]
    got = confident_labels(np.zeros((9, 11, 3), np.uint8), keys, maps, alpha_low=4, alpha_high=32,
                           crf_params={"iters": 3})
    m = maps.numpy().astype(np.float64)
    expect = np.full((9, 11), 255, np.uint8)
    for y in range(9):
        for x in range(11):
            top = m[:, y, x].max()
            la = np.argmax(np.r_[(1 - top) ** 4, m[:, y, x]])
            ha = np.argmax(np.r_[(1 - top) ** 32, m[:, y, x]])
            if la > 0:
                expect[y, x] = keys[la - 1]
            if ha == 0:
                expect[y, x] = 0
    np.testing.assert_array_equal(got, expect)
    assert calls == [{"iters": 3}, {"iters": 3}]
    assert {0, 255} <= set(np.unique(got).tolist())


def test_confident_labels_high_alpha_background_overrides(monkeypatch):
    outputs = iter(
        [
            np.array([[[0.1, 0.1]], [[0.9, 0.9]]], np.float32),  # low alpha: fg everywhere
            np.array([[[0.8, 0.1]], [[0.2, 0.9]]], np.float32),  # high alpha: bg at the left pixel
        ]
    )
    monkeypatch.setattr(confident_mod, "dense_crf", lambda image, probs, **kw: next(outputs))
    got = confident_labels(np.zeros((1, 2, 3), np.uint8), [4], torch.ones(1, 1, 2) * 0.5)
    np.testing.assert_array_equal(got, np.array([[0, 4]], np.uint8))


def test_confident_labels_rejects_unknown_crf_param():
    with pytest.raises(ValueError, match="unknown dense_crf"):
        confident_labels(np.zeros((2, 2, 3), np.uint8), [1], torch.zeros(1, 2, 2), crf_params={"sxy": 3})
