"""Dense CRF wrapper: refines boundaries to image edges, returns distributions, clear error without the binding."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from affinitynet.errors import AffinityNetError
from affinitynet.ops.crf import dense_crf

needs_crf = pytest.mark.skipif(importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf2 not installed")


def _disc_scene(size=64, radius=18, shift=5, seed=0):
    """Bright disc on a dark background; a score map of the same disc shifted right and blurred."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = size / 2 - 0.5
    dist = np.hypot(yy - c, xx - c)
    mask = dist < radius
    rng = np.random.default_rng(seed)
    image = np.where(mask[..., None], [220, 200, 60], [30, 40, 70]) + rng.normal(0, 4, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    shifted = np.hypot(yy - c, xx - c - shift)
    fg = 1 / (1 + np.exp((shifted - radius) / 3.0))  # soft, displaced foreground probability
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    band = np.abs(dist - radius) <= 6
    return image, probs, mask, band


@needs_crf
def test_crf_moves_boundary_to_image_edge():
    image, probs, mask, band = _disc_scene()
    before = (probs.argmax(0) == mask)[band].mean()
    q = dense_crf(image, probs)
    after = (q.argmax(0) == mask)[band].mean()
    assert q.shape == probs.shape and q.dtype == np.float32
    assert before < 0.9
    assert after > before + 0.05, (before, after)
    assert after > 0.95


@needs_crf
def test_crf_output_is_distribution_and_scale_invariant():
    image, probs, _, _ = _disc_scene(size=32, radius=9, shift=2)
    # three labels that do not sum to one, as in [bg (1-max)^alpha, cams]
    scores = np.stack([probs[0] ** 4, probs[1], 0.5 * probs[1]])
    q = dense_crf(image, scores, iters=5)
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    assert (q >= 0).all()
    # per-pixel scaling of the scores is a constant in the unary: same result
    scale = np.random.default_rng(1).uniform(0.5, 2.0, size=(1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(dense_crf(image, scores * scale, iters=5), q, atol=1e-4)


@needs_crf
def test_crf_does_not_modify_inputs():
    image, probs, _, _ = _disc_scene(size=24, radius=6, shift=1)
    image_copy, probs_copy = image.copy(), probs.copy()
    dense_crf(image, probs, iters=2)
    assert np.array_equal(image, image_copy) and np.array_equal(probs, probs_copy)


@needs_crf
def test_crf_rejects_bad_inputs():
    image, probs, _, _ = _disc_scene(size=16, radius=4, shift=1)
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="do not match"):
        dense_crf(image, probs[:, :8])


@needs_crf
def test_confident_labels_with_real_crf():
    from affinitynet.ops.confident import confident_labels

    image, probs, mask, _ = _disc_scene(size=48, radius=14, shift=3)
    cam = torch.from_numpy(probs[1:2] * 0.95)  # one class, id 3
    label = confident_labels(image, [3], cam, alpha_low=4, alpha_high=32)
    assert label.shape == (48, 48) and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= {0, 3, 255}
    assert (label == 3).sum() > 0 and (label == 0).sum() > 0
    assert mask[label == 3].mean() > 0.95  # confident foreground lies on the disc
    assert (~mask)[label == 0].mean() > 0.95  # confident background lies off it


def test_missing_binding_raises_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.utils", None)
    image, probs, _, _ = _disc_scene(size=8, radius=2, shift=0)
    with pytest.raises(AffinityNetError, match=r"pip install 'affinitynet\[crf\]'"):
        dense_crf(image, probs)
