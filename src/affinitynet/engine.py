"""The one training loop shared by train_cam, train_affinitynet and train_segmentation.

SGD with the reference's per-group learning-rate multipliers, a per-iteration poly schedule, atomic
checkpoints that resume to the same weights, a NaN guard, a JSON-lines history, and DistributedDataParallel
when the job has several processes. ``batch_size`` is the global batch (``affinitynet.global_batch``): N
processes and ``accumulation`` steps share every batch of one process's schedule, losses are normalised
over the whole batch and trained BatchNorm layers normalise over it (``affinitynet.batchnorm``), so N
processes train what one process trains (docs/distributed.md says where that holds bit for bit).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from .accel import AccelOptions
from .dist import DistInfo, barrier, derive_seed
from .batchnorm import synchronise_trained_batchnorm
from .errors import DataError, StageError
from .global_batch import GlobalBatches, MeanLoss, SampleMean, StepSums, read_steps, split_batch
from .checkpoints import gather_rng, load_checkpoint, save_checkpoint, set_rng_state, unwrap
from .io import atomic_path
from .ops.loss import weighted_mean

GROUP_NAMES = ("backbone_weights", "backbone_biases", "new_weights", "new_biases")
LR_MULTIPLIERS = (1.0, 2.0, 10.0, 20.0)


# ----------------------------------------------------------------------------- optimiser and schedule


def param_groups_sgd(groups, lr: float, weight_decay: float, momentum: float) -> torch.optim.SGD:
    """SGD over the 4 lists (backbone weights, backbone biases, new weights, new biases): lr x1, x2, x10, x20;
    weight decay on the weight groups only. Each group keeps ``initial_lr``, ``lr_mult`` and ``name``."""
    groups = list(groups)
    if len(groups) != 4:
        raise ValueError(f"expected 4 parameter lists {GROUP_NAMES}, got {len(groups)}")
    param_groups = []
    for name, params, mult in zip(GROUP_NAMES, groups, LR_MULTIPLIERS):
        decay = weight_decay if name.endswith("weights") else 0.0
        param_groups.append({"params": [p for p in params if p.requires_grad], "lr": lr * mult,
                             "initial_lr": lr * mult, "weight_decay": decay, "lr_mult": mult, "name": name})
    if not any(g["params"] for g in param_groups):
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


class PolyLR(LRScheduler):
    """lr = initial_lr * (1 - step / max_step) ** power, stepped once per iteration (0 from max_step on)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_step: int, power: float = 0.9, last_epoch: int = -1):
        if max_step < 1:
            raise ValueError(f"max_step must be positive, got {max_step}")
        self.max_step = int(max_step)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of ``initial_lr`` at iteration ``step`` (0-based)."""
        return max(0.0, 1.0 - step / self.max_step) ** self.power

    def get_lr(self) -> list[float]:
        """Learning rates of all groups at the current iteration."""
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


# ----------------------------------------------------------------------------- training loop


def _wrap(model: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    if not info.distributed:
        return model
    model.train()  # lets the model's own train() put frozen BN layers in eval before we look
    synchronise_trained_batchnorm(model, device)
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index],
                                       find_unused_parameters=find_unused_parameters)
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")


def _trim_history(path: Path, step: int) -> None:
    """Drop history rows written after global step ``step`` (the part of an interrupted epoch that is redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if int(row.get("step", 0)) <= step:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def _mean_over_ranks(sums: dict[str, float], count: int, info: DistInfo, device: torch.device) -> dict[str, float]:
    keys = sorted(sums)
    if not keys or count == 0:
        return {}
    t = torch.tensor([sums[k] / count for k in keys], dtype=torch.float64, device=device)
    if info.distributed:
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        t /= info.world_size
    return dict(zip(keys, t.tolist()))


def _sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts rank 0's buffers before each forward pass, so after the last one each rank holds the
    statistics of its own last batch; parameters are already equal (gradients are averaged).
    """
    if not info.distributed:
        return
    for buf in model.buffers():
        torch_dist.broadcast(buf.data, src=0)


DUMP_ENV = "AFFINITYNET_DUMP_RANK_WEIGHTS"


def _dump_rank_weights(model: nn.Module, info: DistInfo, tag: str) -> None:
    """Debugging aid: with $AFFINITYNET_DUMP_RANK_WEIGHTS=DIR every rank writes DIR/{tag}.rank{r}.pt."""
    out = os.environ.get(DUMP_ENV, "")
    if not out:
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(Path(out) / f"{tag}.rank{info.rank}.pt") as tmp:
        torch.save(state, tmp)


def _to_device(batch, device: torch.device):
    """A batch (tensors, or tuples / lists of them) on ``device``, copied without blocking."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def fit(model: nn.Module, loss_fn: Callable | MeanLoss, dataset, *, optimizer: torch.optim.Optimizer, epochs: int,
        batch_size: int, ckpt_dir, device, poly_power: float = 0.9, dist_info: DistInfo | None = None,
        seed: int = 0, num_workers: int = 0, progress: bool = False, log_every: int = 20,
        log: logging.Logger | None = None, validate: Callable | None = None, config: dict | None = None,
        collate_fn: Callable | None = None, find_unused_parameters: bool = False,
        accel: AccelOptions | None = None, accumulation: int = 1, batch_key: str = "batch_size") -> dict:
    """Train ``model`` for ``epochs`` with global batches of ``batch_size`` and a ``MeanLoss``, or a plain
    ``loss_fn(model, batch, device) -> (scalar mean over the batch's samples, {name: scalar})``.

    Each of the job's processes runs its share of every batch in ``accumulation`` micro-batches of
    ``batch_size`` / (processes x ``accumulation``) samples (a ConfigError naming ``batch_key`` when that
    does not divide), gradients are summed over all of them and the optimiser steps once: the schedule,
    the samples of each step and their augmentation do not depend on how the batch is split.
    Resumes from ``ckpt_dir/last.pt`` when present, writes it after every epoch (rank 0), appends to
    ``ckpt_dir/history.jsonl`` (losses of the whole batch), writes ``ckpt_dir/final.pt`` and returns a
    summary dict. The loss must run the network through ``model(...)`` (it receives the DDP wrapper when
    the job has several processes). ``validate(model) -> {name: value}`` runs after each epoch on rank 0
    with the unwrapped model under ``torch.no_grad()``; it calls ``model.eval()`` itself, ``fit`` switches
    back to ``train()``. A non-finite loss raises StageError and leaves ``last.pt`` as it was.
    ``accel`` (``affinitynet.accel``): mixed precision, channels-last, DataLoader pinning and prefetch, and
    whether losses are read every step or only every ``log_every`` steps.
    """
    info = dist_info or DistInfo()
    accel = accel or AccelOptions()
    loss = loss_fn if isinstance(loss_fn, MeanLoss) else SampleMean(loss_fn)
    log = log or logging.getLogger("affinitynet.engine")
    device = torch.device(device)
    ckpt_dir = Path(ckpt_dir)
    last_path, final_path, history = ckpt_dir / "last.pt", ckpt_dir / "final.pt", ckpt_dir / "history.jsonl"
    micro = split_batch(batch_size, info.world_size, accumulation, batch_key)
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    model.to(device)
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = accel.grad_scaler(device)
    sampler = GlobalBatches(len(dataset), batch_size, info.world_size, info.rank, accumulation, seed)
    steps_per_epoch = sampler.steps
    if steps_per_epoch == 0:
        raise StageError(f"{len(dataset)} training samples make no full batch of {batch_size}; lower {batch_key}")
    scheduler = PolyLR(optimizer, steps_per_epoch * epochs, poly_power)
    if info.distributed or accumulation > 1:
        n, m = info.world_size, accumulation
        log.info(f"batch {batch_size} = {n} process{'es' if n > 1 else ''} x {m} accumulation step{'s' if m > 1 else ''}"
                 f" x {micro} image{'s' if micro > 1 else ''}; {steps_per_epoch} iterations per epoch")

    start_epoch, step, time_before, last_loss, resumed_from, rng_states = 0, 0, 0.0, float("nan"), None, None
    if last_path.is_file():
        try:
            ckpt = load_checkpoint(last_path, map_location="cpu")
        except DataError as e:
            raise DataError(last_path, f"{e.problem}; delete it to restart this training from epoch 1") from None
        saved_max = (ckpt.get("scheduler") or {}).get("max_step")
        if saved_max != scheduler.max_step:
            raise StageError(f"{last_path} was written for a {saved_max}-iteration schedule but this run has "
                             f"{scheduler.max_step} ({epochs} epochs x {steps_per_epoch} iterations); "
                             f"delete it to start over or restore the previous settings")
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        extra = ckpt.get("extra", {})
        time_before, last_loss = float(extra.get("time_s", 0.0)), float(extra.get("loss", float("nan")))
        rng_states = extra.get("rng")
        if scaler.is_enabled() and extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        resumed_from = start_epoch
        if info.is_main:
            _trim_history(history, step)
        log.info("resuming from %s: epoch %d of %d done, iteration %d", last_path, start_epoch, epochs, step)
    elif info.is_main and history.exists():
        history.unlink()  # a fresh run starts a fresh history
    barrier()

    train_model = _wrap(model, info, device, find_unused_parameters)
    net = accel.wrap(train_model, device)  # what the loss calls: autocast and channels-last inputs when asked
    if rng_states:
        set_rng_state(rng_states[info.rank] if len(rng_states) == info.world_size else rng_states[0])

    t0 = time.time()
    for epoch in range(start_epoch + 1, epochs + 1):
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(derive_seed(seed, epoch)),
                            **accel.loader_kwargs(device, num_workers))
        train_model.train()
        sums: dict[str, float] = {}
        count = 0
        unread: list[StepSums] = []  # steps whose losses are not read (nor checked for NaN) yet
        parts: list = []  # this step's micro-batches
        bar = tqdm(loader, total=len(sampler), desc=f"epoch {epoch}/{epochs}", leave=False,
                   disable=not (progress and info.is_main), dynamic_ncols=True)
        for batch in bar:
            parts.append(_to_device(batch, device))
            if len(parts) < accumulation:
                continue
            batches, parts = parts, []
            counts = sum(loss.counts(b, device) for b in batches)  # (K,) over this rank's micro-batches
            if info.distributed:
                torch_dist.all_reduce(counts, op=torch_dist.ReduceOp.SUM)  # ... and over every rank's
            optimizer.zero_grad(set_to_none=True)
            step_sums, logs = None, {}
            for m, b in enumerate(batches):
                quiet = info.distributed and m + 1 < len(batches)  # gradients are averaged after the last one
                with train_model.no_sync() if quiet else contextlib.nullcontext():
                    b_sums, b_logs = loss.sums(net, b, device)
                    share = weighted_mean(b_sums, counts, loss.weights)
                    # DDP averages the ranks' gradients; the ranks' shares add up to the batch's loss
                    scaler.scale(share * info.world_size if info.distributed else share).backward()
                step_sums = b_sums.detach() if step_sums is None else step_sums + b_sums.detach()
                for k, v in (b_logs or {}).items():
                    v = v.detach() if torch.is_tensor(v) else float(v)
                    logs[k] = logs.get(k, 0.0) + v / len(batches)
            unread.append(StepSums(step + 1, step_sums, counts, logs, optimizer.param_groups[0]["lr"]))
            logged = log_every > 0 and (step + 1) % log_every == 0
            if accel.step_sync or logged or count + 1 == steps_per_epoch:  # the only host-device syncs
                rows = read_steps(unread, loss, info, epoch, last_path)
                unread.clear()
                for row in rows:
                    values = {k: float(v) for k, v in row.items() if k not in ("step", "lr")}
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if info.is_main and log_every > 0 and row["step"] % log_every == 0:
                        _append_jsonl(history, {"kind": "step", "epoch": epoch, "step": row["step"],
                                                "lr": row["lr"], **values})
                        log.info("epoch %d/%d iteration %d/%d loss %.4f lr %.3g", epoch, epochs, row["step"],
                                 scheduler.max_step, values["loss"], row["lr"])
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            count += 1
        bar.close()

        means = _mean_over_ranks(sums, count, info, device)
        last_loss = means.get("loss", float("nan"))
        val = {}
        if validate is not None and info.is_main:
            with torch.no_grad():
                val = validate(unwrap(model)) or {}
        rng_all = gather_rng(info)
        elapsed = time_before + time.time() - t0
        if info.is_main:
            _append_jsonl(history, {"kind": "epoch", "epoch": epoch, "step": step,
                                    "lr": optimizer.param_groups[0]["lr"], **means, "val": val, "time_s": elapsed})
            extra = {"loss": last_loss, "time_s": elapsed, "rng": rng_all}
            if scaler.is_enabled():
                extra["scaler"] = scaler.state_dict()
            save_checkpoint(last_path, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                            step=step, config=config, extra=extra)
            log.info("epoch %d/%d done: %s%s", epoch, epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in means.items()),
                     "".join(f" val {k} {v}" for k, v in val.items()))
        barrier()

    elapsed = time_before + time.time() - t0
    _sync_buffers(unwrap(model), info)
    if info.is_main:
        save_checkpoint(final_path, model=model, epoch=epochs, step=step, config=config,
                        extra={"loss": last_loss, "time_s": elapsed})
    _dump_rank_weights(unwrap(model), info, ckpt_dir.name)
    barrier()
    return {"final_loss": last_loss, "epochs": epochs, "steps": step, "time_s": elapsed,
            "resumed_from_epoch": resumed_from, "last": str(last_path), "final": str(final_path),
            "history": str(history)}
