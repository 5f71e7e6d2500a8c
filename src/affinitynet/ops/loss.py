"""Training losses as weighted means: sum_k weight_k * (sum of term k) / (count of term k).

Kept as sums and counts, a loss adds up over any split of its batch (processes, accumulation steps) to
the loss of the whole batch: the training loop sums the counts of every part before any backward pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_mean(sums: torch.Tensor, counts: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_k weights[k] * sums[k] / max(counts[k], 1): sums (K,) float, counts (K,) integer -> 0-dim tensor.

    A term without elements contributes 0 and keeps the graph connected.
    """
    if sums.shape != counts.shape or sums.dim() != 1 or sums.numel() != len(weights):
        raise ValueError(f"sums {tuple(sums.shape)}, counts {tuple(counts.shape)} and {len(weights)} weights differ")
    means = sums / counts.clamp(min=1)
    total = weights[0] * means[0]
    for k in range(1, len(weights)):
        total = total + weights[k] * means[k]
    return total
