"""Pictures for people: CAM heat maps and label overlays (PIL only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_path, voc_palette

_PALETTE = voc_palette()


def heatmap(x: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 'jet'-like colours (blue low, red high)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend two (H, W, 3) uint8 images."""
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


def cam_overlay(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """(H, W, 3) image, (C', H, W) CAMs in [0, 1] -> (H, W, 3) image with the max-over-classes heat map."""
    m = maps.max(axis=0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    return blend(image, heatmap(m), 0.5)


def label_colours(label: np.ndarray) -> np.ndarray:
    """(H, W) class ids (255 void) -> (H, W, 3) uint8 VOC colours."""
    return _PALETTE[label.astype(np.uint8)]


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) image with its label map blended on top (background and void left lighter)."""
    col = label_colours(label)
    out = blend(image, col, alpha)
    keep = (label == 0)[..., None]
    return np.where(keep, blend(image, np.full_like(image, 0), 0.25), out)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def confident_colours(label: np.ndarray, void: tuple[int, int, int] = (232, 232, 232)) -> np.ndarray:
    """(H, W) class ids with 255 = ignored -> (H, W, 3) uint8 VOC colours, ignored pixels in light grey."""
    out = label_colours(label)
    out[label == 255] = void
    return out


def thumbnail(rgb: np.ndarray, width: int, *, nearest: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> (round(H * width / W), width, 3) uint8; ``nearest`` keeps label colours exact."""
    h, w = rgb.shape[:2]
    height = max(1, round(h * width / w))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize((width, height), resample), dtype=np.uint8)
