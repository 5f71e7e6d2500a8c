"""Confident foreground / background regions from normalised CAMs, and their labels on the feature grid.

As in AffinityNet (Ahn & Kwak, CVPR 2018). Pure array functions: the make_affinity_labels stage does the reading and writing.
"""
from __future__ import annotations

import numpy as np
import torch

from .cam import cam_scores_with_bg, class_lut, pool_to_grid
from .crf import dense_crf

from ..conventions import IGNORE

_CRF_KEYS = {"iters", "gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat", "unary"}


def _as_float_tensor(maps) -> torch.Tensor:
    t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    return t.detach().to("cpu", torch.float32)


def confident_scores(
    image: np.ndarray,
    maps: torch.Tensor,
    *,
    alpha_low: float = 4,
    alpha_high: float = 32,
    crf_params: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 image, (C', H, W) CAMs -> CRF-refined score stacks (la, ha), each (1 + C', H, W), bg first.

    la refines [(1 - max)^alpha_low, maps], ha [(1 - max)^alpha_high, maps]; ``crf_params`` are
    ``dense_crf``'s keyword arguments (iterations, kernels, unary).
    """
    params = dict(crf_params or {})
    unknown = set(params) - _CRF_KEYS
    if unknown:
        raise ValueError(f"unknown dense_crf parameters {sorted(unknown)}; valid: {sorted(_CRF_KEYS)}")
    m = _as_float_tensor(maps)
    return tuple(torch.from_numpy(dense_crf(image, cam_scores_with_bg(m, alpha).numpy(), **params))
                 for alpha in (alpha_low, alpha_high))


def labels_from_scores(la: torch.Tensor, ha: torch.Tensor, lut: torch.Tensor | None = None) -> torch.Tensor:
    """Score stacks la, ha (K, h, w) (bg first) -> (h, w) long labels: fg where la's argmax is fg, bg where ha's is bg.

    The label is ``lut[argmax la]`` (channel index when ``lut`` is None), 255 where la's argmax is
    background, 0 where ha's argmax is background (confident background at high alpha overrides
    foreground from low alpha: a rare conflict, since raising alpha only lowers the background), and
    255 where neither stack has a score of at least 1e-5 (e.g. crop padding), as the release's
    AffinityNet dataset does (voc12/data.py).
    """
    if la.shape != ha.shape or la.dim() != 3:
        raise ValueError(f"la and ha must be (K, h, w) of one shape, got {tuple(la.shape)} and {tuple(ha.shape)}")
    arg_la, arg_ha = la.argmax(dim=0), ha.argmax(dim=0)
    label = arg_la.clone() if lut is None else lut.to(la.device)[arg_la]
    label[arg_la == 0] = IGNORE
    label[arg_ha == 0] = 0
    no_score = torch.maximum(la.amax(dim=0), ha.amax(dim=0)) < 1e-5
    label[no_score] = IGNORE
    return label


def grid_labels_from_scores(scores: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Stacked [la; ha] scores (2K, H, W) -> (ceil(H/stride), ceil(W/stride)) long labels (channel indices, 255).

    Each stack is averaged over stride x stride cells first, then ``labels_from_scores`` decides: the
    release's order (average the CRF scores, then argmax). Cells average their pixels inside the map.
    """
    if scores.dim() != 3 or scores.shape[0] % 2:
        raise ValueError(f"expected stacked (2K, H, W) scores, got shape {tuple(scores.shape)}")
    pooled = pool_to_grid(scores.to(torch.float32), stride)
    la, ha = pooled.chunk(2, dim=0)
    return labels_from_scores(la, ha)


def confident_labels(
    image: np.ndarray,
    keys,
    maps,
    *,
    alpha_low: float = 4,
    alpha_high: float = 32,
    crf: bool = True,
    crf_params: dict | None = None,
    fg_threshold: float = 0.3,
    bg_threshold: float = 0.05,
    stride: int = 1,
) -> np.ndarray:
    """(H, W, 3) uint8 image, (C',) class ids, (C', H, W) CAMs in [0, 1] -> (H, W) uint8 labels (0 bg, ids, 255).

    With ``crf``: ``confident_scores`` then ``labels_from_scores``. Without ``crf`` (fast variant):
    max CAM >= fg_threshold -> argmax class, max CAM <= bg_threshold -> 0, else 255.
    ``stride`` > 1 average-pools the (CRF-refined) scores over stride x stride cells before the argmax
    and returns (ceil(H/stride), ceil(W/stride)) labels.
    """
    image = np.asarray(image)
    m = _as_float_tensor(maps)
    keys_t = torch.as_tensor(np.asarray(keys) if not isinstance(keys, torch.Tensor) else keys).to("cpu", torch.long)
    keys_t = keys_t.reshape(-1)
    if m.ndim != 3 or m.shape[0] != keys_t.numel():
        raise ValueError(f"{keys_t.numel()} class ids for maps of shape {tuple(m.shape)}")
    if tuple(m.shape[1:]) != tuple(image.shape[:2]):
        raise ValueError(f"maps of shape {tuple(m.shape)} do not match image {image.shape}")
    if m.shape[0] and (keys_t.min() < 1 or keys_t.max() >= IGNORE):
        raise ValueError(f"class ids must lie in 1..254, got {keys_t.tolist()}")
    lut = class_lut(keys_t)

    if crf:
        la, ha = confident_scores(image, m, alpha_low=alpha_low, alpha_high=alpha_high, crf_params=crf_params)
        if stride > 1:
            la, ha = pool_to_grid(la, stride), pool_to_grid(ha, stride)
        label = labels_from_scores(la, ha, lut)
    else:
        if stride > 1:
            m = pool_to_grid(m, stride)
        label = torch.full(m.shape[1:], IGNORE, dtype=torch.long)
        if m.shape[0]:
            peak, arg = m.max(dim=0)
            fg = peak >= fg_threshold
            label[fg] = lut[arg + 1][fg]
            label[peak <= bg_threshold] = 0
        else:
            label.fill_(0)
    return label.to(torch.uint8).numpy()


def pool_label_map(label, num_classes: int, stride: int = 8) -> torch.Tensor:
    """(B, H, W) or (H, W) labels in 0..num_classes-1 or 255 -> (..., ceil(H/stride), ceil(W/stride)) labels.

    One-hot maps (plus one channel for 255) are averaged over each stride x stride cell (valid pixels
    only) and argmaxed; ties go to the lowest channel, so a cell is 255 only where ignore is the
    strict plurality. Returns a tensor of the input's integer dtype.
    """
    lab = label if isinstance(label, torch.Tensor) else torch.as_tensor(np.asarray(label))
    if lab.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (B, H, W) labels, got shape {tuple(lab.shape)}")
    if lab.is_floating_point():
        raise ValueError(f"labels must be integers, got {lab.dtype}")
    if not 1 <= num_classes < IGNORE:
        raise ValueError(f"num_classes must lie in 1..254, got {num_classes}")
    idx = lab.to(torch.long)
    bad = ((idx < 0) | (idx >= num_classes)) & (idx != IGNORE)
    if bool(bad.any()):
        raise ValueError(f"labels outside 0..{num_classes - 1} and 255: {sorted(set(idx[bad].tolist()))[:10]}")
    idx = torch.where(idx == IGNORE, torch.full_like(idx, num_classes), idx)
    one_hot = torch.zeros(*idx.shape[:-2], num_classes + 1, *idx.shape[-2:], dtype=torch.float32, device=idx.device)
    one_hot.scatter_(-3, idx.unsqueeze(-3), 1.0)
    pooled = pool_to_grid(one_hot, stride)
    out = pooled.argmax(dim=-3)
    out = torch.where(out == num_classes, torch.full_like(out, IGNORE), out)
    return out.to(lab.dtype)
