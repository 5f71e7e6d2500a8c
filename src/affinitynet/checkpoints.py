"""Training checkpoints that resume to the same weights: model (with the arguments that rebuild it), optimiser,
schedule, epoch, step, config, and every random generator's state."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .dist import DistInfo
from .errors import DataError
from .io import atomic_path

CHECKPOINT_FORMAT = 1



def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model


def save_checkpoint(path, *, model: nn.Module, optimizer=None, scheduler=None, epoch: int = 0, step: int = 0,
                    config: dict | None = None, extra: dict | None = None) -> Path:
    """Write model (unwrapped) with its ``model_args``, optimizer, scheduler, epoch, step, config and extra to
    ``path`` atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap(model).state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "config": dict(config or {}),
        "extra": dict(extra or {}),
        "model_args": dict(getattr(unwrap(model), "model_args", None) or {}),  # rebuilds the network
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint``; a missing, truncated or foreign file raises DataError."""
    from .models.checkpoint import torch_load

    path = Path(path)
    ckpt = torch_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(path, "not an affinitynet checkpoint (no 'model' entry)")
    return ckpt


# ----------------------------------------------------------------------------- RNG state (for exact resume)


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def gather_rng(info: DistInfo) -> list:
    state = rng_state()
    if not info.distributed:
        return [state]
    out = [None] * info.world_size
    torch_dist.all_gather_object(out, state)
    return out
