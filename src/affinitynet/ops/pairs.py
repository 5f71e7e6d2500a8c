"""Pixel pairs within a radius on the feature grid (Ahn & Kwak, CVPR 2018): offsets, flat indices, pair labels."""
from __future__ import annotations

import functools

import torch

from ..conventions import IGNORE


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with dy^2 + dx^2 < radius^2 in one half-plane (dy > 0, or dy == 0 and dx > 0); 34 for radius 5."""
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    # Same order as the reference code's search_dst: the row dy == 0 first, then row by row.
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [
        (dy, dx)
        for dy in range(1, radius)
        for dx in range(-radius + 1, radius)
        if dx * dx + dy * dy < radius * radius
    ]
    return offsets


def offset_slices(h: int, w: int, radius: int) -> list[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """((rows, cols) of the "from" pixels, (rows, cols) of the "to" pixels) on an h x w grid for each offset of
    ``pair_offsets(radius)`` that fits in it: the full pair set as shifted slices, in ``pair_indices`` order."""
    out = []
    for dy, dx in pair_offsets(radius):
        x0, x1 = max(0, -dx), w - max(0, dx)
        if dy >= h or x1 <= x0:
            continue
        out.append(((slice(0, h - dy), slice(x0, x1)), (slice(dy, h), slice(x0 + dx, x1 + dx))))
    return out


@functools.lru_cache(maxsize=64)
def _full_pairs(h: int, w: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All unordered pairs within the radius with both pixels inside the grid, offset-major."""
    grid = torch.arange(h * w, dtype=torch.long).reshape(h, w)
    slices = offset_slices(h, w, radius)
    return _concat([grid[f].reshape(-1) for f, _ in slices]), _concat([grid[t].reshape(-1) for _, t in slices])


@functools.lru_cache(maxsize=64)
def _reference_pairs(h: int, w: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original AffinityNet code's get_indices_of_pairs: "from" pixels kept away from the bottom, left and right borders."""
    floor = radius - 1
    crop_h, crop_w = h - floor, w - 2 * floor
    offsets = pair_offsets(radius)
    if crop_h <= 0 or crop_w <= 0 or not offsets:
        return _concat([]), _concat([])
    grid = torch.arange(h * w, dtype=torch.long).reshape(h, w)
    idx_from = grid[:crop_h, floor : floor + crop_w].reshape(-1)
    tos = [grid[dy : dy + crop_h, floor + dx : floor + dx + crop_w].reshape(-1) for dy, dx in offsets]
    return idx_from.repeat(len(offsets)), _concat(tos)


def _concat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def pair_indices(
    h: int, w: int, radius: int, *, reference: bool = False, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat (row-major) indices (P,), (P,) of the unordered pairs within the radius on an h x w grid; cached, do not modify."""
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got {h}x{w}")
    build = _reference_pairs if reference else _full_pairs
    with torch.inference_mode(False):  # cached: an inference tensor made under inference_mode would break training
        if device is not None and torch.device(device).type != "cpu":
            return _on_device(build, int(h), int(w), int(radius), torch.device(device))
        return build(int(h), int(w), int(radius))


@functools.lru_cache(maxsize=64)
def _on_device(build, *args):
    """``build(*args[:-1])``'s tensors copied to the device ``args[-1]`` once: a copy from host memory every
    training step would wait for the device."""
    out = build(*args[:-1])
    return tuple(t.to(args[-1]) for t in out) if isinstance(out, tuple) else out.to(args[-1])


@functools.lru_cache(maxsize=64)
def _reference_positions(h: int, w: int, radius: int) -> torch.Tensor:
    full_from, full_to = _full_pairs(h, w, radius)
    ref_from, ref_to = _reference_pairs(h, w, radius)
    n = h * w
    full_key = full_from * n + full_to
    order = torch.argsort(full_key)
    pos = torch.searchsorted(full_key[order], ref_from * n + ref_to)
    return order[pos]


def reference_subset(h: int, w: int, radius: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(P_ref,) positions in ``pair_indices(h, w, radius)`` of the pairs of ``pair_indices(..., reference=True)``, in its order."""
    with torch.inference_mode(False):
        if device is not None and torch.device(device).type != "cpu":
            return _on_device(_reference_positions, int(h), int(w), int(radius), torch.device(device))
        return _reference_positions(int(h), int(w), int(radius))


def pair_labels(
    labels: torch.Tensor, idx_from: torch.Tensor, idx_to: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean masks (bg_pos, fg_pos, neg), each (P,) or (B, P), from a label grid (h, w) or (B, h, w) with 255 = ignore."""
    if labels.dim() not in (2, 3):
        raise ValueError(f"labels must be (h, w) or (B, h, w), got shape {tuple(labels.shape)}")
    flat = labels.flatten(-2)
    lab_from, lab_to = flat[..., idx_from], flat[..., idx_to]
    valid = (lab_from != IGNORE) & (lab_to != IGNORE)
    same = lab_from == lab_to
    bg_pos = same & (lab_from == 0)
    fg_pos = same & valid & (lab_from != 0)
    neg = valid & ~same
    return bg_pos, fg_pos, neg
