"""The global batch: how N processes and accumulation steps share each batch, and losses that add up over the parts.

``batch_size`` is the number of images of one optimiser step, whatever the number of processes: every step's
images, their order and their augmentation are those of a 1-process run (``GlobalBatches``), and a loss
written as weighted means (``MeanLoss``) averages over the whole batch however unequal its parts' counts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

from .errors import ConfigError, StageError
from .ops.loss import weighted_mean


def batch_split_problem(batch_size: int, processes: int = 1, accumulation: int = 1, section: str = "") -> str:
    """Why ``batch_size`` does not split into ``processes`` x ``accumulation`` equal parts ("" when it does)."""
    parts = processes * accumulation
    if batch_size >= parts and batch_size % parts == 0:
        return ""
    steps = "step" if accumulation == 1 else "steps"
    also = f" or {section}.accumulation" if section else ""
    return (f"{batch_size} does not split evenly over {processes} process{'es' if processes > 1 else ''} x "
            f"{accumulation} accumulation {steps}: make it a multiple of {parts}, or change the number of "
            f"processes{also}")


def split_batch(batch_size: int, processes: int = 1, accumulation: int = 1, key: str = "batch_size") -> int:
    """Images each process runs at a time: ``batch_size`` / (``processes`` x ``accumulation``), which must divide
    (a ConfigError naming ``key`` otherwise)."""
    section = key.rsplit(".", 1)[0] if "." in key else ""
    if accumulation < 1:
        raise ConfigError(f"{section + '.' if section else ''}accumulation: must be at least 1, got {accumulation}")
    problem = batch_split_problem(batch_size, processes, accumulation, section)
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return batch_size // (processes * accumulation)


class GlobalBatches(Sampler):
    """This process's micro-batches of every global batch, the same global batches for any number of processes.

    Each epoch permutes the ``n`` indices with ``seed + epoch`` (as ``DistributedSampler`` does), cuts the
    permutation into ``n // batch_size`` global batches in order (the rest is dropped), gives process
    ``rank`` of ``processes`` the ``rank``-th contiguous share of each and cuts that share into
    ``accumulation`` micro-batches: yields lists of indices, ``accumulation`` per step.
    """

    def __init__(self, n: int, batch_size: int, processes: int = 1, rank: int = 0, accumulation: int = 1,
                 seed: int = 0):
        if not 0 <= rank < processes:
            raise ValueError(f"rank {rank} is outside {processes} process(es)")
        self.micro = split_batch(batch_size, processes, accumulation)
        self.n, self.batch_size, self.rank, self.accumulation, self.seed = n, batch_size, rank, accumulation, seed
        self.steps = n // batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation ``__iter__`` cuts."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps * self.accumulation

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        share = self.micro * self.accumulation
        for step in range(self.steps):
            start = step * self.batch_size + self.rank * share
            for m in range(self.accumulation):
                yield order[start + m * self.micro: start + (m + 1) * self.micro]


class MeanLoss:
    """A training loss of weighted means over the whole batch: sum_k ``weights[k]`` * (sum of term k) / (count).

    ``counts(batch, device)`` -> (K,) int64: what each term averages over in ``batch`` (images, labelled
    pixels, pairs), from its labels alone; ``sums(model, batch, device)`` -> ((K,) sums over ``batch``,
    {name: 0-dim tensor} logs). ``fit`` adds the counts of every process's micro-batches of a step before
    any backward pass, so a batch split over processes and accumulation steps averages over what the whole
    batch averages over, however unequal the parts. Calling the loss gives the loss of one batch alone.
    """

    terms: tuple[str, ...] = ("loss",)
    weights: tuple[float, ...] = (1.0,)

    def counts(self, batch, device) -> torch.Tensor:
        """(K,) int64 numbers of elements each term averages over in ``batch``."""
        raise NotImplementedError

    def sums(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        """((K,) float sums of each term over ``batch``, {name: 0-dim tensor} logs)."""
        raise NotImplementedError

    def parts(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's mean and count (``{term}_loss``, ``{term}_count``) when there are several terms."""
        if len(self.terms) < 2:
            return {}
        means = (sums / counts.clamp(min=1)).detach()
        out = {}
        for k, name in enumerate(self.terms):
            out[f"{name}_loss"], out[f"{name}_count"] = means[k], counts[k]
        return out

    def __call__(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        """The loss of ``batch`` alone (0-dim) and its logs: the terms' means and counts."""
        sums, logs = self.sums(model, batch, device)
        counts = self.counts(batch, device)
        return weighted_mean(sums, counts, self.weights), {**logs, **self.parts(sums, counts)}


class SampleMean(MeanLoss):
    """A ``loss_fn(model, batch, device) -> (mean over the batch's samples, logs)`` as a ``MeanLoss``.

    Every micro-batch holds the same number of samples, so each micro-batch's mean counts once and their
    mean is the whole batch's mean.
    """

    def __init__(self, loss_fn: Callable):
        self.loss_fn = loss_fn

    def counts(self, batch, device) -> torch.Tensor:
        """One: the micro-batch's mean."""
        return torch.ones(1, dtype=torch.long, device=device)

    def sums(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        """The micro-batch's mean loss as a (1,) tensor, and its logs."""
        loss, logs = self.loss_fn(model, batch, device)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
        return loss.reshape(1), logs or {}


class StepSums:
    """One finished step whose values are not read yet: its local term sums, global counts, logs and rate."""

    def __init__(self, step: int, sums: torch.Tensor, counts: torch.Tensor, logs: dict, lr: float):
        self.step, self.sums, self.counts, self.logs, self.lr = step, sums, counts, logs, lr


def read_steps(unread: list[StepSums], loss: MeanLoss, info, epoch: int, last_path: Path) -> list[dict]:
    """The rows of the steps not read yet: each one's loss and term parts over the whole batch (sums added over
    the ranks), its logs (this rank's), step and rate. StageError at the first loss that is not finite on any
    rank (all ranks agree: they read the same sums)."""
    sums = torch.stack([u.sums for u in unread])  # (S, K)
    if info.distributed:
        torch_dist.all_reduce(sums, op=torch_dist.ReduceOp.SUM)
    rows = []
    for u, s in zip(unread, sums):
        value = weighted_mean(s, u.counts, loss.weights)
        parts = loss.parts(s, u.counts)
        rows.append({"step": u.step, "lr": u.lr, "loss": value, **parts, **u.logs})
    values = torch.stack([r["loss"] for r in rows]).tolist()
    for row, value in zip(rows, values):
        if not np.isfinite(value):
            kept = f"last good checkpoint kept at {last_path}" if last_path.is_file() else \
                "no checkpoint was written yet (one is written after each epoch)"
            what = "NaN" if not np.isinf(value) else "infinite"
            raise StageError(f"loss became {what} at epoch {epoch} step {row['step']}; {kept}; lower the "
                             f"learning rate (now {row['lr']:.3g}) and re-run")
        row["loss"] = value
    return rows
