"""Confident foreground / background regions from normalised CAMs, and their labels on the feature grid.

DESIGN.md 2.2. Pure array functions: the make_affinity_labels stage does the reading and writing.
"""
from __future__ import annotations

import numpy as np
import torch

from .cam import cam_scores_with_bg, pool_to_grid
from .crf import dense_crf

IGNORE = 255

_CRF_KEYS = {"iters", "gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat"}


def _as_float_tensor(maps) -> torch.Tensor:
    t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    return t.detach().to("cpu", torch.float32)


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

    With ``crf``: the scores [(1 - max)^alpha, maps] for alpha_low and alpha_high are each refined by
    ``dense_crf`` (``crf_params`` are its keyword arguments) and argmaxed. As in the reference code the
    label is the low-alpha argmax class, 255 where the low-alpha argmax is background, then 0 where the
    high-alpha argmax is background: background confident at high alpha overrides foreground from low
    alpha (a rare conflict, since raising alpha only lowers the background score). Without ``crf``
    (fast variant): max CAM >= fg_threshold -> argmax class, max CAM <= bg_threshold -> 0, else 255.
    ``stride`` > 1 average-pools the (CRF-refined) scores over stride x stride cells before the argmax
    (DESIGN.md 2.2) and returns (ceil(H/stride), ceil(W/stride)) labels.
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
    lut = torch.cat([torch.zeros(1, dtype=torch.long), keys_t])  # argmax channel -> class id

    if crf:
        params = dict(crf_params or {})
        unknown = set(params) - _CRF_KEYS
        if unknown:
            raise ValueError(f"unknown dense_crf parameters {sorted(unknown)}; valid: {sorted(_CRF_KEYS)}")
        argmaxes = []
        for alpha in (alpha_low, alpha_high):
            scores = cam_scores_with_bg(m, alpha).numpy()
            refined = torch.from_numpy(dense_crf(image, scores, **params))
            if stride > 1:
                refined = pool_to_grid(refined, stride)
            argmaxes.append(refined.argmax(dim=0))
        la, ha = argmaxes
        label = lut[la]
        label[la == 0] = IGNORE
        label[ha == 0] = 0
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
