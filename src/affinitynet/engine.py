"""The one training loop shared by train_cam, train_affinitynet and train_segmentation.

SGD with the reference's per-group learning-rate multipliers, a per-iteration poly schedule, atomic
checkpoints that resume to the same weights, a NaN guard, a JSON-lines history, and DistributedDataParallel
when the job has several processes.
"""
from __future__ import annotations

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
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .accel import AccelOptions
from .dist import DistInfo, barrier, derive_seed
from .errors import DataError, StageError
from .checkpoints import gather_rng, load_checkpoint, save_checkpoint, set_rng_state, unwrap
from .io import atomic_path

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


def _convert_trained_bn(module: nn.Module) -> None:
    """Replace BatchNorm layers that are in training mode by SyncBatchNorm; frozen (eval) ones stay as they are."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.training:
            setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _convert_trained_bn(child)


def _wrap(model: nn.Module, info: DistInfo, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    if not info.distributed:
        return model
    if device.type == "cuda":  # SyncBatchNorm has no CPU kernel; on gloo/CPU each rank keeps its own batch stats
        model.train()  # lets the model's own train() put frozen BN layers in eval before we look
        _convert_trained_bn(model)
        return DistributedDataParallel(model, device_ids=[device.index],
                                       find_unused_parameters=find_unused_parameters)
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def _check_losses(unread: list[tuple[int, torch.Tensor, float]], info: DistInfo, epoch: int, last_path: Path) -> float:
    """Read the (step, loss, lr) entries not checked yet; StageError at the first loss that is not finite on any
    rank (all ranks agree). Returns this rank's latest loss value."""
    losses = torch.stack([loss.float() for _, loss, _ in unread])
    order = torch.arange(len(unread), device=losses.device)
    first = torch.where(torch.isfinite(losses), len(unread), order).min().reshape(1)
    if info.distributed:
        torch_dist.all_reduce(first, op=torch_dist.ReduceOp.MIN)
    values = losses.tolist()
    i = int(first.item())
    if i < len(unread):
        step, _, lr = unread[i]
        kept = f"last good checkpoint kept at {last_path}" if last_path.is_file() else \
            "no checkpoint was written yet (one is written after each epoch)"
        what = "NaN" if not np.isinf(values[i]) else "infinite"
        raise StageError(f"loss became {what} at epoch {epoch} step {step}; {kept}; lower the "
                         f"learning rate (now {lr:.3g}) and re-run")
    return values[-1]


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


def fit(model: nn.Module, loss_fn: Callable, dataset, *, optimizer: torch.optim.Optimizer, epochs: int,
        batch_size: int, ckpt_dir, device, poly_power: float = 0.9, dist_info: DistInfo | None = None,
        seed: int = 0, num_workers: int = 0, progress: bool = False, log_every: int = 20,
        log: logging.Logger | None = None, validate: Callable | None = None, config: dict | None = None,
        collate_fn: Callable | None = None, find_unused_parameters: bool = False,
        accel: AccelOptions | None = None) -> dict:
    """Train ``model`` for ``epochs`` with ``loss_fn(model, batch, device) -> (scalar loss, {name: scalar})``.

    Resumes from ``ckpt_dir/last.pt`` when present, writes it after every epoch (rank 0), appends to
    ``ckpt_dir/history.jsonl``, writes ``ckpt_dir/final.pt`` and returns a summary dict. ``loss_fn`` must run
    the network through ``model(...)`` (it receives the DDP wrapper when the job has several processes).
    ``validate(model) -> {name: value}`` runs after each epoch on rank 0 with the unwrapped model under
    ``torch.no_grad()``; it calls ``model.eval()`` itself, ``fit`` switches back to ``train()``.
    A non-finite loss raises StageError and leaves ``last.pt`` as it was.
    ``accel`` (``affinitynet.accel``): mixed precision, channels-last, DataLoader pinning and prefetch, and
    whether losses (scalars or 0-dim tensors) are read every step or only every ``log_every`` steps.
    """
    info = dist_info or DistInfo()
    accel = accel or AccelOptions()
    log = log or logging.getLogger("affinitynet.engine")
    device = torch.device(device)
    ckpt_dir = Path(ckpt_dir)
    last_path, final_path, history = ckpt_dir / "last.pt", ckpt_dir / "final.pt", ckpt_dir / "history.jsonl"
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    model.to(device)
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    scaler = accel.grad_scaler(device)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    steps_per_epoch = len(sampler) // batch_size
    if steps_per_epoch == 0:
        raise StageError(f"{len(dataset)} training samples make no full batch of {batch_size} "
                         f"on each of {info.world_size} process(es); lower batch_size")
    scheduler = PolyLR(optimizer, steps_per_epoch * epochs, poly_power)
    if info.distributed:
        log.info("%d processes x batch %d = effective batch %d; %d iterations per epoch",
                 info.world_size, batch_size, info.world_size * batch_size, steps_per_epoch)

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
    net = accel.wrap(train_model, device)  # what loss_fn calls: autocast and channels-last inputs when asked
    if rng_states:
        set_rng_state(rng_states[info.rank] if len(rng_states) == info.world_size else rng_states[0])

    t0 = time.time()
    for epoch in range(start_epoch + 1, epochs + 1):
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(derive_seed(seed, epoch)),
                            **accel.loader_kwargs(device, num_workers))
        train_model.train()
        sums: dict[str, torch.Tensor | float] = {}  # float64 tensors stay on the device: no synchronisation
        count = 0
        unread: list[tuple[int, torch.Tensor, float]] = []  # (step, loss, lr) not yet checked for NaN
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", leave=False,
                   disable=not (progress and info.is_main), dynamic_ncols=True)
        for batch in bar:
            loss, logs = loss_fn(net, batch, device)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
            unread.append((step + 1, loss.detach(), optimizer.param_groups[0]["lr"]))
            logged = log_every > 0 and (step + 1) % log_every == 0
            if accel.step_sync or logged or count + 1 == steps_per_epoch:  # the only host-device syncs
                loss_value = _check_losses(unread, info, epoch, last_path)
                unread.clear()
                bar.set_postfix(loss=f"{loss_value:.4f}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]  # the rate this iteration used
            scheduler.step()
            step += 1
            values = {"loss": loss.detach(), **(logs or {})}
            for k, v in values.items():  # tensors stay on their device; 0.0 + x is x exactly
                sums[k] = sums.get(k, 0.0) + (v.detach().to(torch.float64) if torch.is_tensor(v) else float(v))
            count += 1
            if info.is_main and logged:
                row = {k: float(v) for k, v in values.items()}
                _append_jsonl(history, {"kind": "step", "epoch": epoch, "step": step, "lr": lr, **row})
                log.info("epoch %d/%d iteration %d/%d loss %.4f lr %.3g", epoch, epochs, step,
                         scheduler.max_step, row["loss"], lr)
        bar.close()

        means = _mean_over_ranks({k: float(v) for k, v in sums.items()}, count, info, device)
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
