"""Multi-scale + flip inference of a dense prediction network (pure tensors)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def multiscale_predict(model, image: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """(3, H, W) normalised image -> (K, H, W) softmax scores averaged over scales and horizontal flips.

    ``model(x)`` gives (B, K, h, w) logits at any stride; each is upsampled bilinearly to H x W before the
    softmax. With scales=(1.0,) and flip=False this is exactly the single-scale prediction.
    """
    h, w = image.shape[-2:]
    x = image.unsqueeze(0)
    total = None
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = F.interpolate(model(batch), size=(h, w), mode="bilinear", align_corners=False)
        prob = logits.softmax(1)
        prob = prob[0] + prob[1].flip(-1) if flip else prob[0]
        total = prob if total is None else total + prob
    return total / (len(scales) * (2 if flip else 1))
