"""Scoring label maps on disk against a dataset's masks (used by the stages and ``affinitynet eval``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError
from .io import load_label_png
from .ops.metrics import confusion_matrix, scores


def accumulate(dataset, names, predict, *, progress=lambda it, **kw: it, desc: str = "scoring",
               target: Callable[[str], np.ndarray] | None = None) -> np.ndarray:
    """Sum of confusion matrices over ``names``; ``predict(name) -> (H, W) uint8`` label map.

    Scored against the dataset's masks, or against ``target(name) -> (H, W) uint8`` when given (e.g. the
    labels a network was trained on).
    """
    k = dataset.num_classes + 1
    conf = np.zeros((k, k + 1), dtype=np.int64)  # last column: predictions of 255 (misses)
    for name in progress(names, desc=desc, total=len(names)):
        gt = dataset.load_mask(name) if target is None else target(name)
        if gt is None:
            raise DataError(dataset.image_path(name), "no ground-truth mask to evaluate against")
        pred = predict(name)
        if pred.shape != gt.shape:
            raise DataError(name, f"prediction size {pred.shape[1]}x{pred.shape[0]} differs from the mask's "
                                  f"{gt.shape[1]}x{gt.shape[0]}")
        conf += confusion_matrix(pred, gt, k)
    return conf


def accumulate_shared(dataset, names, predict, *, rank: int = 0, world: int = 1, **kw) -> np.ndarray:
    """``accumulate`` over process ``rank``'s share of ``names`` (``dist.shard``), summed over the ``world``
    processes of the job, which all call it: each process scores its own share, every one gets the sum."""
    from .dist import all_gather_object, shard

    conf = accumulate(dataset, shard(list(names), rank, world), predict, **kw)
    return sum(all_gather_object(conf)) if world > 1 else conf


def score_labels(path_of: Callable[[str], Path], dataset, names=None, *, rank: int = 0, world: int = 1,
                 **kw) -> dict:
    """mIoU etc. of the label PNGs ``path_of(name)`` for every image of ``dataset`` that has a mask (a missing
    prediction -> DataError); ``images`` is how many were scored, ``unmasked`` how many were left out for want of
    a mask. With ``world`` > 1 every process of the job calls it and scores its share (``accumulate_shared``)."""
    asked = list(dataset.names if names is None else names)
    names = dataset.mask_names(asked)
    missing = [n for n in names if not path_of(n).exists()]
    if missing:
        raise DataError(path_of(missing[0]), f"prediction missing ({len(missing)} of {len(names)} images have none)")
    conf = accumulate_shared(dataset, names, lambda n: load_label_png(path_of(n)), rank=rank, world=world, **kw)
    return dict(scores(conf, dataset.label_names), images=len(names), unmasked=len(asked) - len(names))


def score_label_dir(pred_dir: Path, dataset, names=None, **kw) -> dict:
    """``score_labels`` of the PNGs ``pred_dir/{name}.png``."""
    pred_dir = Path(pred_dir)
    return score_labels(lambda n: pred_dir / f"{n}.png", dataset, names, **kw)
