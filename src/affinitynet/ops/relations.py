"""Inter-pixel relation labels from CAMs (Ahn, Cho & Kwak, CVPR 2019, "IRN"): confident foreground and background by
two constant background scores, each argmax refined by a dense CRF, then combined; and their cells at the boundary
network's stride. Pure array functions: the make_ir_labels stage does the reading and writing (docs/irn.md).
"""
from __future__ import annotations

import numpy as np
import torch

from ..conventions import IGNORE
from .cam import class_lut
from .crf import dense_crf_labels

_CRF_KEYS = {"gt_prob", "iters", "gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat"}


def threshold_argmax(maps: np.ndarray, threshold: float) -> np.ndarray:
    """(C', H, W) CAMs in [0, 1] -> (H, W) int64 channel indices of argmax [threshold, maps] (0: background)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (C', H, W), got shape {maps.shape}")
    padded = np.concatenate([np.full((1, *maps.shape[1:]), threshold, np.float32), maps], axis=0)
    return padded.argmax(axis=0).astype(np.int64)


def combine_confident(fg_conf: np.ndarray, bg_conf: np.ndarray) -> np.ndarray:
    """Labels at the foreground threshold and at the background threshold, (H, W) each -> (H, W) relation labels.

    A class where the high threshold still finds one, background where neither finds a class, 255 between.
    """
    if fg_conf.shape != bg_conf.shape:
        raise ValueError(f"label maps of shapes {fg_conf.shape} and {bg_conf.shape} differ")
    out = np.where(fg_conf == 0, IGNORE, fg_conf)
    out[(fg_conf == 0) & (bg_conf == 0)] = 0
    return out


def relation_labels(image: np.ndarray, keys, maps, *, fg_threshold: float = 0.30, bg_threshold: float = 0.05,
                    crf: bool = True, crf_params: dict | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image, (C',) class ids, (C', H, W) CAMs in [0, 1] -> (H, W) uint8 labels (0 bg, ids, 255).

    At each threshold t: argmax of [t, CAMs], refined by ``dense_crf_labels`` (``crf_params`` are its keyword
    arguments) when ``crf``; then ``combine_confident``.
    """
    image = np.asarray(image)
    maps = np.asarray(maps, dtype=np.float32)
    keys_t = torch.as_tensor(np.asarray(keys)).to(torch.long).reshape(-1)
    if maps.ndim != 3 or maps.shape[0] != keys_t.numel():
        raise ValueError(f"{keys_t.numel()} class ids for maps of shape {maps.shape}")
    if maps.shape[1:] != image.shape[:2]:
        raise ValueError(f"maps of shape {maps.shape} do not match image {image.shape}")
    if not 0 <= bg_threshold <= fg_threshold:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold, got {bg_threshold} and {fg_threshold}")
    params = dict(crf_params or {})
    unknown = set(params) - _CRF_KEYS
    if unknown:
        raise ValueError(f"unknown dense_crf_labels parameters {sorted(unknown)}; valid: {sorted(_CRF_KEYS)}")
    lut = class_lut(keys_t).numpy()
    conf = []
    for threshold in (fg_threshold, bg_threshold):
        channel = threshold_argmax(maps, threshold)
        if crf:
            channel = dense_crf_labels(image, channel, maps.shape[0] + 1, **params)
        conf.append(lut[channel])
    return combine_confident(*conf).astype(np.uint8)


def cell_labels(label: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., H, W) labels -> (..., ceil(H/stride), ceil(W/stride)): each cell's centre pixel (255 past the edge).

    IRN reduces its crops' labels by nearest-neighbour resizing to a quarter (voc12/dataloader.py), which picks
    pixel stride * i + stride // 2 of a side divisible by the stride.
    """
    if label.dim() < 2:
        raise ValueError(f"labels must be (..., H, W), got shape {tuple(label.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    h, w = label.shape[-2:]
    gh, gw = -(-h // stride), -(-w // stride)
    pad = (0, gw * stride - w, 0, gh * stride - h)
    if any(pad):
        label = torch.nn.functional.pad(label, pad, value=IGNORE)
    return label[..., stride // 2:: stride, stride // 2:: stride]
