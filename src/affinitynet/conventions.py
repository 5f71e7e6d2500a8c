"""Facts every layer shares, each stated once: the ignore label, the feature stride, the image normalisation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE = 255  # label of pixels that are not scored and not learned from (VOC's void, unsure regions)
STRIDE = 8  # the feature grid of every network is ceil(H / 8) x ceil(W / 8)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(img, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) uint8 image (numpy or tensor) -> (3, H, W) float32 tensor ``(img/255 - mean) / std``."""
    # a float copy of a numpy image: images decoded by PIL are read-only arrays, which torch warns about
    t = torch.from_numpy(np.array(img, dtype=np.float32)) if not isinstance(img, torch.Tensor) else img
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {tuple(t.shape)}")
    t = t.permute(2, 0, 1).to(torch.float32) / 255.0
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=t.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=t.device).view(3, 1, 1)
    return ((t - mean_t) / std_t).contiguous()
