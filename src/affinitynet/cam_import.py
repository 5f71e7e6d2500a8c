"""CAMs written by another method, read from its ``{name}.npy`` files and checked against the image.

Two layouts, both ``np.save`` of a dict (read by ``safe_pickle.read_npy``, never with ``allow_pickle``):

- **irn** (jiwoon-ahn/irn, ``step/make_cam.py``): ``keys`` (C',) 0-based foreground class indices,
  ``cam`` (C', h, w) maps at stride 4, ``high_res`` (C', H, W) maps at image size, each normalised by its
  maximum. ``high_res`` is used.
- **psa** (jiwoon-ahn/psa, ``infer_cls.py``): {0-based class index: (H, W) map at image size, normalised}.

Either becomes (keys (C',) class ids 1..C, maps (C', H, W) float32 in [0, 1]), the form ``make_cam`` stores.
Every problem is one line naming the file: a missing entry, a map whose size differs from the image's, a
class outside the dataset or not among the image's tags, a tag without a map, values outside [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .safe_pickle import read_npy

TOLERANCE = 1e-3  # values this far outside [0, 1] (float rounding of the other method's normalisation) are clipped


def _array(value) -> np.ndarray:
    """A numpy array of ``value`` (ndarray, tensor, list or number)."""
    if hasattr(value, "detach"):  # a torch tensor (irn saves keys and cam as tensors)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def parse_irn(path: Path, obj) -> tuple[np.ndarray, np.ndarray]:
    """irn's dict -> (0-based class indices (C',), maps (C', H, W))."""
    if not isinstance(obj, dict):
        raise DataError(path, f"expected irn's dict with keys 'keys', 'cam', 'high_res', got a {type(obj).__name__}")
    missing = [k for k in ("keys", "high_res") if k not in obj]
    if missing:
        raise DataError(path, f"missing entry {', '.join(repr(m) for m in missing)} (irn's make_cam writes 'keys', "
                              f"'cam', 'high_res'; found {', '.join(repr(k) for k in obj) or 'none'})")
    keys, maps = _array(obj["keys"]), _array(obj["high_res"])
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        raise DataError(path, f"'keys' must be a 1-D array of class indices, got {keys.dtype} of shape {keys.shape}")
    if maps.ndim != 3 or maps.shape[0] != keys.size:
        raise DataError(path, f"'high_res' must be ({keys.size}, H, W) for {keys.size} keys, got shape {maps.shape}")
    return keys.astype(np.int64), maps


def parse_psa(path: Path, obj) -> tuple[np.ndarray, np.ndarray]:
    """psa's dict {class index: (H, W) map} -> (0-based class indices (C',), maps (C', H, W))."""
    if not isinstance(obj, dict):
        raise DataError(path, f"expected psa's dict of class index -> map, got a {type(obj).__name__}")
    keys, maps = [], []
    for k, v in obj.items():
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise DataError(path, f"key {k!r} is not a class index (psa's infer_cls writes class index -> map)")
        m = _array(v)
        if m.ndim != 2:
            raise DataError(path, f"the map of class index {k} must be (H, W), got shape {m.shape}")
        keys.append(int(k))
        maps.append(m)
    if maps and len({m.shape for m in maps}) > 1:
        raise DataError(path, f"maps of different sizes: {sorted({m.shape for m in maps})}")
    order = np.argsort(keys, kind="stable")
    keys_arr = np.asarray(keys, dtype=np.int64)[order]
    shape = maps[0].shape if maps else (0, 0)
    stack = np.stack([maps[i] for i in order]) if maps else np.zeros((0, *shape), np.float32)
    return keys_arr, stack


FORMATS = {"import_irn": parse_irn, "import_psa": parse_psa}


def import_cams(path, fmt: str, size: tuple[int, int], tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's CAM file in format ``fmt`` -> (keys (C',) class ids 1..C, maps (C', H, W) float32 in [0, 1]).

    ``size`` is the image's (H, W); ``tags`` its (C,) multi-hot image-level labels.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown CAM import format {fmt!r} (valid: {', '.join(FORMATS)})")
    if not path.is_file():
        raise DataError(path, "no CAM file for this image in cam.import_dir")
    keys, maps = FORMATS[fmt](path, read_npy(path))
    num_classes = int(np.asarray(tags).size)
    if len(set(keys.tolist())) != keys.size:
        raise DataError(path, f"class indices repeat: {keys.tolist()}")
    outside = [int(k) for k in keys if not 0 <= k < num_classes]
    if outside:
        raise DataError(path, f"class index {outside[0]} outside 0..{num_classes - 1} (0-based foreground classes "
                              f"of this dataset)")
    tagged = set(np.flatnonzero(np.asarray(tags) > 0).tolist())
    untagged = sorted(set(keys.tolist()) - tagged)
    if untagged:
        raise DataError(path, f"a map for class index {untagged[0]}, which is not among the image's tags "
                              f"{sorted(tagged)}")
    unmapped = sorted(tagged - set(keys.tolist()))
    if unmapped:
        raise DataError(path, f"no map for class index {unmapped[0]}, one of the image's tags {sorted(tagged)}")
    if maps.shape[1:] != tuple(size) and keys.size:
        raise DataError(path, f"CAM size {maps.shape[2]}x{maps.shape[1]} differs from the image's {size[1]}x{size[0]}")
    maps = maps.astype(np.float32, copy=False)
    if maps.size and not np.isfinite(maps).all():
        raise DataError(path, "maps hold NaN or infinite values")
    if maps.size and (maps.min() < -TOLERANCE or maps.max() > 1 + TOLERANCE):
        raise DataError(path, f"map values span {maps.min():.4g}..{maps.max():.4g}; expected maps normalised to "
                              f"[0, 1] (each divided by its maximum)")
    return keys + 1, np.clip(maps, 0.0, 1.0).reshape(keys.size, *size)
