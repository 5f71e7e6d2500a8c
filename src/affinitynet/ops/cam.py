"""Class activation maps: multi-scale + flip inference, per-class normalisation, background scores.

Pure tensor functions; they know nothing about files.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..conventions import normalize_image

DEFAULT_SCALES = (1.0, 0.5, 1.5, 2.0)


def model_device(model: nn.Module) -> torch.device:
    """The device of the network's first parameter (or buffer); the CPU for a network without either."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _scaled_size(h: int, w: int, s: float) -> tuple[int, int]:
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear, align_corners=False; identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scaled_images(image: np.ndarray, scales: Sequence[float], mean: Sequence[float], std: Sequence[float],
                  resample: str = "bilinear") -> list[torch.Tensor]:
    """(H, W, 3) uint8 image -> one normalised (3, round(H*s), round(W*s)) tensor per scale.

    ``bilinear`` normalises first and resizes the float image (align_corners=False); ``bicubic`` resizes
    the uint8 image with PIL's bicubic filter (``bicubic_rescaled``), then normalises, as the AffinityNet
    release's make-CAM data loader does (voc12/data.py, ``VOC12ClsDatasetMSF``).
    """
    if resample not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown resample {resample!r} (valid: bilinear, bicubic)")
    img = np.asarray(image)
    h, w = img.shape[:2]
    if resample == "bilinear":
        x = normalize_image(img, mean, std).unsqueeze(0)
        return [_resize(x, _scaled_size(h, w, s))[0] for s in scales]
    return [normalize_image(scaled, mean, std) for scaled in bicubic_rescaled(img, scales)]


def bicubic_rescaled(image: np.ndarray, scales: Sequence[float]) -> list[np.ndarray]:
    """(H, W, 3) uint8 image -> one (round(H*s), round(W*s), 3) uint8 image per scale, by PIL's bicubic filter (the
    image itself at its own size)."""
    from PIL import Image

    h, w = image.shape[:2]
    out = []
    for s in scales:
        sh, sw = _scaled_size(h, w, s)
        out.append(image if (sh, sw) == (h, w) else np.array(Image.fromarray(image).resize((sw, sh), Image.BICUBIC)))
    return out


def multiscale_cam(
    model: nn.Module,
    image: torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    *,
    batched: bool = True,
    scaled: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(3, H, W) normalised image -> (C, H, W) CAMs summed over scales and flips, on the model's device;
    a batch (B, 3, H, W) of images of one size gives (B, C, H, W), each as if it were alone.

    Each scale resizes the image bilinearly to round(H*s) x round(W*s); ``model.cam`` gives (B, C, h, w)
    maps, the flipped one is flipped back, and each map is upsampled bilinearly (align_corners=False)
    to H x W. ``batched=True`` runs the image and its flip as one batch of 2 and, since bilinear
    upsampling is linear and commutes with a horizontal flip, adds the two low-resolution maps before
    a single upsample; ``batched=False`` is the plain loop (one forward and one upsample per
    scale and flip). Both give the same result up to float rounding. Scales are not packed into
    one padded batch: zero padding changes the convolution outputs near the border, so it would not
    be exact. ``scaled`` (one (3, h_s, w_s) tensor per scale, e.g. from ``scaled_images``) replaces the
    bilinear resizing of ``image``; ``image`` then only gives the output size. With a batch, each of
    them is (B, 3, h_s, w_s).
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"expected a (3, H, W) image or a (B, 3, H, W) batch, got shape {tuple(image.shape)}")
    if len(scales) == 0:
        raise ValueError("multiscale_cam needs at least one scale")
    device = model_device(model)
    h, w = image.shape[-2:]
    single = image.ndim == 3
    x = image.to(device=device, dtype=torch.float32, non_blocking=True)  # from page-locked memory: no wait
    x = x.unsqueeze(0) if single else x
    b = x.shape[0]
    total = None
    if scaled is not None and len(scaled) != len(scales):
        raise ValueError(f"{len(scaled)} scaled images for {len(scales)} scales")
    with torch.inference_mode():
        for i, s in enumerate(scales):
            xs = _resize(x, _scaled_size(h, w, s)) if scaled is None else scaled[i].to(device, torch.float32, non_blocking=True)
            xs = xs.unsqueeze(0) if xs.ndim == 3 else xs
            if batched:
                batch = torch.cat([xs, xs.flip(-1)], dim=0) if flip else xs
                maps = model.cam(batch)
                low = maps[:b] + maps[b:].flip(-1) if flip else maps
                up = _resize(low, (h, w))
                total = up if total is None else total + up
            else:
                views = [(xs, False), (xs.flip(-1), True)] if flip else [(xs, False)]
                for view, flipped in views:
                    m = model.cam(view)
                    if flipped:
                        m = m.flip(-1)
                    up = _resize(m, (h, w))
                    total = up if total is None else total + up
    return total[0] if single else total


def normalize_cams(cams: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) CAMs, (C,) multi-hot tags -> (keys (C',) long class ids in 1..C, maps (C', H, W) in [0, 1]).

    Only classes present in the tags are kept; each map is divided by its maximum + 1e-5.
    """
    if cams.ndim != 3:
        raise ValueError(f"expected (C, H, W) CAMs, got shape {tuple(cams.shape)}")
    labels = torch.as_tensor(labels, device=cams.device).reshape(-1)
    if labels.numel() != cams.shape[0]:
        raise ValueError(f"{labels.numel()} tags for {cams.shape[0]} CAM channels")
    idx = torch.nonzero(labels > 0, as_tuple=False).reshape(-1)
    maps = cams[idx].to(torch.float32)
    if maps.shape[0]:
        peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
        maps = maps / (peak + 1e-5)
    return (idx + 1).to(torch.long), maps


def class_lut(keys) -> torch.Tensor:
    """(C',) class ids (array or tensor) -> (1 + C',) long lookup: channel of a [background, CAMs] stack -> class id."""
    keys = torch.as_tensor(np.asarray(keys) if not isinstance(keys, torch.Tensor) else keys).to("cpu", torch.long)
    return torch.cat([torch.zeros(1, dtype=torch.long), keys.reshape(-1)])


def background_score(maps: torch.Tensor, alpha: float) -> torch.Tensor:
    """(C', H, W) normalised CAMs -> (H, W) background score (1 - max_c maps)^alpha; all ones when C' = 0."""
    if maps.shape[0] == 0:
        return torch.ones(maps.shape[-2:], dtype=torch.float32, device=maps.device)
    return torch.pow(1.0 - maps.amax(dim=0), alpha)


def cam_scores_with_bg(maps: torch.Tensor, alpha: float) -> torch.Tensor:
    """(C', H, W) normalised CAMs -> (1 + C', H, W) scores, background (1 - max)^alpha first."""
    bg = background_score(maps, alpha).to(maps.dtype if maps.shape[0] else torch.float32)
    return torch.cat([bg.unsqueeze(0), maps.to(bg.dtype)], dim=0)


def pool_to_grid(x: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """(..., H, W) -> (..., ceil(H/stride), ceil(W/stride)) mean over each stride x stride cell (valid pixels only)."""
    if x.ndim < 2:
        raise ValueError(f"expected (..., H, W), got shape {tuple(x.shape)}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    oh, ow = -(-h // stride), -(-w // stride)
    if x.numel() == 0:
        return torch.zeros(*lead, oh, ow, dtype=dtype, device=x.device)
    flat = x.reshape(-1, 1, h, w).to(dtype)
    pooled = F.avg_pool2d(flat, kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False)
    return pooled.reshape(*lead, pooled.shape[-2], pooled.shape[-1])
