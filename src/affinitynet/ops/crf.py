"""Fully connected CRF (Krähenbühl & Koltun) refinement of per-pixel class scores, via pydensecrf2.

Same kernels as the reference code's ``crf_inference(img, probs, t=10, scale_factor=1, labels=K)``:
unary -log(p) from ``unary_from_softmax``, a Gaussian kernel (sxy=3, compat=3) and a bilateral kernel
(sxy=80, srgb=13, compat=10) on the RGB image, ``iters`` mean-field iterations.
"""
from __future__ import annotations

import numpy as np

from ..errors import AffinityNetError

UNARIES = ("normalized", "clipped")

_MISSING = (
    "the dense CRF needs the optional dependency pydensecrf2; install it with "
    "pip install 'affinitynet[crf]' (or pip install pydensecrf2), or turn the CRF off in the config"
)


def _densecrf():
    """Import the binding lazily: (pydensecrf.densecrf module, unary_from_softmax)."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as exc:
        raise AffinityNetError(_MISSING) from exc
    return dcrf, unary_from_softmax


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    iters: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
    unary: str = "normalized",
) -> np.ndarray:
    """(H, W, 3) uint8 image, (K, H, W) non-negative scores -> (K, H, W) float32 CRF marginals (sum to 1 per pixel).

    ``unary="normalized"``: scores are normalised per pixel before -log (a per-pixel constant in the
    unary, so the result differs from the raw scores' only where the 1e-5 probability clip bites); an
    all-zero pixel is uniform. ``unary="clipped"``: -log of the raw scores clipped to [1e-5, 1], as the
    AffinityNet release does (its ``crf_inference``, tool/imutils.py).
    """
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"scores of shape {probs.shape} do not match image {image.shape[:2]}")
    k, h, w = probs.shape
    if k == 0:
        raise ValueError("dense_crf needs at least one label")
    if unary not in UNARIES:
        raise ValueError(f"unknown unary {unary!r} (valid: {', '.join(UNARIES)})")
    dcrf, unary_from_softmax = _densecrf()

    p = np.clip(probs, 0.0, None)
    if unary == "normalized":
        total = p.sum(axis=0, keepdims=True)
        p = np.where(total > 0, p / np.maximum(total, np.finfo(np.float32).tiny), 1.0 / k).astype(np.float32)

    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p)))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image), compat=bilateral_compat
    )
    q = d.inference(int(iters))
    return np.asarray(q, dtype=np.float32).reshape(k, h, w)


def dense_crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    *,
    gt_prob: float = 0.7,
    iters: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) hard labels in 0..n_labels-1 -> (H, W) int64 CRF labels (argmax of the marginals).

    The unary trusts each pixel's label with probability ``gt_prob`` and spreads the rest evenly over the
    other labels, as IRN's ``crf_inference_label`` (misc/imutils.py) does with its bilateral kernel
    sxy=50, srgb=5; one label needs no CRF.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels of shape {labels.shape} do not match image {image.shape[:2]}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {labels.min()}..{labels.max()}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob}")
    if n_labels == 1:
        return np.zeros(labels.shape, dtype=np.int64)
    dcrf, _ = _densecrf()
    from pydensecrf.utils import unary_from_labels

    h, w = labels.shape
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False)))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image), compat=bilateral_compat
    )
    q = np.asarray(d.inference(int(iters)), dtype=np.float32).reshape(n_labels, h, w)
    return q.argmax(axis=0).astype(np.int64)
