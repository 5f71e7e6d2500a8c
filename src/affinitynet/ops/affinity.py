"""Pair affinities from an embedding, the AffinityNet loss and its average precision (Ahn & Kwak, CVPR 2018)."""
from __future__ import annotations

import torch

# Elements of one gathered (B, chunk, D) block in pair_affinity: 1 MiB of float32 stays in cache
# (measured 5x faster than 64 MiB blocks on CPU at 63x47 x 448 channels) and bounds the memory.
_GATHER_ELEMENTS = 1 << 18


def pair_affinity(feat: torch.Tensor, idx_from: torch.Tensor, idx_to: torch.Tensor) -> torch.Tensor:
    """Affinities exp(-mean_k |f_i,k - f_j,k|): feat (B, D, h, w) or (D, h, w) -> (B, P) or (P,)."""
    if feat.dim() not in (3, 4):
        raise ValueError(f"feat must be (D, h, w) or (B, D, h, w), got shape {tuple(feat.shape)}")
    batched = feat.dim() == 4
    if not batched:
        feat = feat.unsqueeze(0)
    b, d = feat.shape[:2]
    nodes = feat.flatten(2).transpose(1, 2).contiguous()  # (B, N, D): each node's vector contiguous
    chunk = max(1, _GATHER_ELEMENTS // max(1, b * d))
    parts = []
    for start in range(0, idx_from.numel(), chunk):
        f = nodes[:, idx_from[start : start + chunk]]
        t = nodes[:, idx_to[start : start + chunk]]
        parts.append(torch.exp(-(f - t).abs().mean(dim=-1)))
    aff = torch.cat(parts, dim=1) if parts else nodes.new_zeros(b, 0)
    return aff if batched else aff[0]


def grid_pair_affinity(feat: torch.Tensor, radius: int) -> torch.Tensor:
    """pair_affinity over the full radius pair set, in pair_indices(h, w, radius) order: (B, D, h, w) -> (B, P).

    Works on shifted slices of the grid instead of gathered indices, so its backward pass is plain
    slicing rather than a scatter-add (about 10x faster to train on CPU); same values as
    ``pair_affinity(feat, *pair_indices(h, w, radius))`` up to float rounding (the mean runs across planes).
    """
    from .pairs import offset_slices

    if feat.dim() != 4:
        raise ValueError(f"feat must be (B, D, h, w), got shape {tuple(feat.shape)}")
    b, _, h, w = feat.shape
    parts = [torch.exp(-(feat[(..., *f)] - feat[(..., *t)]).abs().mean(dim=1)).reshape(b, -1)
             for f, t in offset_slices(h, w, radius)]
    return torch.cat(parts, dim=1) if parts else feat.new_zeros(b, 0)


AFFINITY_TERMS = ("bg", "fg", "neg")
AFFINITY_WEIGHTS = (0.25, 0.25, 0.5)  # bg/4 + fg/4 + neg/2


def affinity_counts(bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Boolean pair masks (B, P) -> (3,) int64 numbers of background-positive, foreground-positive and negative pairs."""
    return torch.stack([bg_pos.sum(), fg_pos.sum(), neg.sum()])


def affinity_sums(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                  eps: float = 1e-5) -> torch.Tensor:
    """aff (B, P) and boolean masks (B, P) -> (3,) sums of -log a over bg-positive, -log a over fg-positive and
    -log(1 - a) over negative pairs: the AffinityNet loss is their ``AFFINITY_WEIGHTS`` mean (``affinity_loss``)."""
    pos_term = -torch.log(aff + eps)
    neg_term = -torch.log(1.0 + eps - aff)
    return torch.stack([torch.where(bg_pos, pos_term, 0.0).sum(), torch.where(fg_pos, pos_term, 0.0).sum(),
                        torch.where(neg, neg_term, 0.0).sum()])


def radius_pair_affinity(feat: torch.Tensor, radius: int, *, reference: bool = False) -> torch.Tensor:
    """pair_affinity over pair_indices(h, w, radius, reference=...): feat (B, D, h, w) or (D, h, w) -> (B, P) or (P,).

    For inference: shifted slices of the channels-last embedding instead of gathered indices, so every pair's
    mean runs over its D contiguous channels exactly as in ``pair_affinity``: the same values bit for bit on
    the CPU, 3-6x faster at 63x47 x 448 channels (one reused buffer, no gathered copies; benchmarks/
    bench_randomwalk.py). ``reference`` picks the release's border-trimmed pairs out of the full set.
    """
    from .pairs import offset_slices, reference_subset

    if feat.dim() not in (3, 4):
        raise ValueError(f"feat must be (D, h, w) or (B, D, h, w), got shape {tuple(feat.shape)}")
    batched = feat.dim() == 4
    feat = feat if batched else feat.unsqueeze(0)
    b, d, h, w = feat.shape
    nodes = feat.permute(0, 2, 3, 1).contiguous()  # (B, h, w, D): each node's vector contiguous
    slices = offset_slices(h, w, radius)
    sizes = [(f[0].stop - f[0].start) * (f[1].stop - f[1].start) for f, _ in slices]
    aff = nodes.new_empty(b, sum(sizes))
    buf = nodes.new_empty(b * max(sizes, default=0) * d)
    start = 0
    for (f, t), n in zip(slices, sizes):
        rows, cols = f[0].stop - f[0].start, f[1].stop - f[1].start
        diff = buf[: b * n * d].view(b, rows, cols, d)
        torch.sub(nodes[:, f[0], f[1]], nodes[:, t[0], t[1]], out=diff).abs_()
        aff[:, start : start + n] = diff.mean(dim=-1).reshape(b, n)
        start += n
    aff = aff.neg_().exp_()
    if reference:
        aff = aff[:, reference_subset(h, w, radius, device=aff.device)]
    return aff if batched else aff[0]


def affinity_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AffinityNet loss on aff (B, P) and boolean masks (B, P): bg/4 + fg/4 + neg/2, each a mean over its own pairs.

    The parts (each term and its pair count) are 0-dim tensors on aff's device: nothing here waits for the device.
    """
    from .loss import weighted_mean

    sums, counts = affinity_sums(aff, bg_pos, fg_pos, neg, eps), affinity_counts(bg_pos, fg_pos, neg)
    means = (sums / counts.clamp(min=1)).detach()
    parts = {}
    for k, name in enumerate(AFFINITY_TERMS):
        parts[f"{name}_loss"] = means[k]
        parts[f"{name}_count"] = counts[k]
    return weighted_mean(sums, counts, AFFINITY_WEIGHTS), parts


def affinity_average_precision(aff: torch.Tensor, is_pos: torch.Tensor) -> float:
    """Average precision of affinities aff (any shape) ranking positive pairs is_pos (same shape, bool) above negatives."""
    from .metrics import average_precision

    return average_precision(aff.detach().reshape(-1).to("cpu", torch.float64), is_pos.detach().reshape(-1).cpu())


def pair_ap(per_image) -> dict:
    """[(aff, bg_pos, fg_pos, neg) per image, each (P,) or (1, P)] -> dict(ap (%), positive_pairs, negative_pairs).

    AP of the affinities ranking same-label pairs (bg_pos | fg_pos) above different-label ones (neg); pairs
    with neither label are left out.
    """
    from .metrics import average_precision

    scores, positive = [], []
    for aff, bg_pos, fg_pos, neg in per_image:
        pos = (bg_pos | fg_pos).reshape(-1)
        keep = pos | neg.reshape(-1)
        scores.append(aff.reshape(-1)[keep].cpu())
        positive.append(pos[keep].cpu())
    s, p = torch.cat(scores).numpy(), torch.cat(positive).numpy()
    return {"ap": 100.0 * average_precision(s, p), "positive_pairs": int(p.sum()), "negative_pairs": int((~p).sum())}
