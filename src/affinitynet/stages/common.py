"""Pieces several stages share: where per-image files live, loading CAMs and trained networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import StageError
from ..io import load_npz, save_npz


def cam_file(run_dir: Path, name: str) -> Path:
    """``RUN_DIR/cam/{name}.npz``: keys (C',) int16 class ids, cams (C', H, W) float16 in [0, 1]."""
    return Path(run_dir) / "cam" / f"{name}.npz"


def save_cam(path: Path, keys: torch.Tensor, maps: torch.Tensor) -> None:
    """Write one image's normalised CAMs (present classes only) at image size as float16."""
    save_npz(path, keys=keys.cpu().numpy().astype(np.int16), cams=maps.cpu().numpy().astype(np.float16))


def load_cam(run_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys (C',) int64 class ids 1..C, maps (C', H, W) float32) of one image."""
    z = load_npz(cam_file(run_dir, name))
    return z["keys"].astype(np.int64), z["cams"].astype(np.float32)


def require(path: Path, stage: str) -> Path:
    """``path`` if it exists, else a StageError saying which stage makes it."""
    if not Path(path).exists():
        raise StageError(f"{path} is missing: run the '{stage}' stage first")
    return Path(path)


def load_trained(model: torch.nn.Module, path: Path, device: torch.device, stage: str) -> torch.nn.Module:
    """Load the weights a training stage saved at ``path`` into ``model``, move it to ``device``, eval mode."""
    from ..models import load_checkpoint_into

    load_checkpoint_into(model, require(path, stage))
    return model.to(device).eval()
