"""The size bound of the networks' inputs: an image too large for it is shrunk first, and what comes out is
upsampled back to the image's own size.

``max_long_side`` bounds the long side of every network input of a stage; with multi-scale inference the
largest scale's input counts, so the scales keep their ratios. 0 means no bound. An image within the bound
passes through untouched (the same array, bit-identical results).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def bound_factor(h: int, w: int, max_long_side: int, largest_scale: float = 1.0) -> float:
    """The factor r <= 1 that keeps ``max(h, w) * r * largest_scale`` within ``max_long_side`` (1.0 for no bound)."""
    longest = max(h, w) * largest_scale
    if max_long_side <= 0 or longest <= max_long_side:
        return 1.0
    return max_long_side / longest


def bounded_size(h: int, w: int, max_long_side: int, largest_scale: float = 1.0) -> tuple[int, int]:
    """(h', w') of an h x w image shrunk by ``bound_factor`` (rounded down, at least 1 pixel)."""
    r = bound_factor(h, w, max_long_side, largest_scale)
    if r == 1.0:
        return h, w
    return max(1, int(h * r + 1e-6)), max(1, int(w * r + 1e-6))


def shrink_image(image: np.ndarray, max_long_side: int, largest_scale: float = 1.0) -> np.ndarray:
    """(H, W, 3) uint8 -> (h', w', 3) uint8 within the bound (PIL bilinear, antialiased); ``image`` if it fits."""
    h, w = image.shape[:2]
    size = bounded_size(h, w, max_long_side, largest_scale)
    if size == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 class ids -> ``size`` (h', w') by nearest neighbour; ``mask`` itself when the size matches."""
    if mask.shape[:2] == tuple(size):
        return mask
    return np.array(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) -> (C, H, W) = ``size``, bilinear (align_corners=False); ``x`` itself when the size matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[0] == 0:
        return x.new_zeros((0, *size))
    return F.interpolate(x.unsqueeze(0).float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
