"""Label-free criteria on the walk's grid (docs/calibration.md): labels from walked scores, the mean affinity across
the labels' borders, the normalised cut, and choosing the lowest over images with a bootstrap stability. Used by the
walk's own choice of alpha (``stages/walk_alpha.py``) and by ``affinitynet calibrate`` (``calibration.py``)."""
from __future__ import annotations

import numpy as np
import torch

from .pairs import pair_indices

BOOTSTRAP = 200  # resamples of the images for the stability of a choice


def walk_graph(aff: torch.Tensor, grid: tuple[int, int], radius: int, reference: bool = False):
    """(1, P) pair affinities of the walk's grid -> (idx_from (P,), idx_to (P,), affinities (P,) float64 clamped at 0)
    as NumPy arrays: the graph the criteria read."""
    idx_from, idx_to = (t.numpy() for t in pair_indices(*grid, radius, reference=reference))
    return idx_from, idx_to, aff.reshape(-1).double().clamp_min(0).numpy()


def grid_labels(stack: torch.Tensor, keys: np.ndarray) -> np.ndarray:
    """(1, 1 + C', gh, gw) scores on the walk's grid -> (gh * gw,) int64 class ids (0 background, then ``keys``)."""
    ids = np.concatenate([[0], np.asarray(keys, dtype=np.int64)])
    return ids[stack[0].argmax(0).reshape(-1).numpy()]


def normalized_cut(labels: np.ndarray, weights: np.ndarray, idx_from: np.ndarray, idx_to: np.ndarray,
                   regions, valid: np.ndarray | None = None) -> float:
    """Mean normalised cut of ``regions`` (class ids) in the partition ``labels`` (N,) of a graph's nodes.

    ``weights`` (P,) are the symmetric pair weights of the pairs (``idx_from``, ``idx_to``); pairs with an end
    outside ``valid`` (N,) bool are left out. cut(A) / assoc(A): the weight of the pairs with exactly one end in A
    over the weight of the pairs with at least one end in A, counted from both ends (each node's degree). A region
    with no node, or whose nodes touch no weight, counts 1.
    """
    keep = np.ones(len(weights), bool) if valid is None else valid[idx_from] & valid[idx_to]
    w, a, b = weights[keep], labels[idx_from[keep]], labels[idx_to[keep]]
    terms = []
    for r in regions:
        in_a, in_b = a == r, b == r
        cut = float(w[in_a != in_b].sum())
        assoc = float(w[in_a].sum() + w[in_b].sum())  # the degrees of A's nodes: inside pairs twice, cut pairs once
        terms.append(cut / assoc if assoc > 0 else 1.0)
    return float(np.mean(terms)) if terms else 0.0


def boundary_affinity(labels: np.ndarray, weights: np.ndarray, idx_from: np.ndarray, idx_to: np.ndarray) -> float:
    """Mean weight of the pairs whose two ends have different labels (1, the most, where no pair crosses a border)."""
    crossing = labels[idx_from] != labels[idx_to]
    return float(weights[crossing].mean()) if crossing.any() else 1.0


def choose_by_cut(cut: np.ndarray) -> int:
    """(n, T) per-image scores of a lower-is-better criterion (border affinity, normalised cut) -> index of the value
    with the lowest mean."""
    return int(np.argmin(cut.mean(0)))


def stability(per_image: np.ndarray, choose, chosen: int, seed: int, resamples: int = BOOTSTRAP) -> float:
    """Share (0..1) of bootstrap resamples of the images (rows of ``per_image``) for which ``choose`` gives ``chosen``."""
    rng = np.random.default_rng(seed)
    n = per_image.shape[0]
    if n < 2:
        return 1.0
    same = sum(choose(per_image[rng.integers(0, n, n)]) == chosen for _ in range(resamples))
    return same / resamples
