"""Scoring label maps on disk against a dataset's masks (used by stages, ``affinitynet eval`` and the report)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .io import load_label_png, write_json
from .ops.metrics import confusion_matrix, format_table, scores


def accumulate(dataset, names, predict, *, progress=lambda it, **kw: it, desc: str = "scoring") -> np.ndarray:
    """Sum of confusion matrices over ``names``; ``predict(name) -> (H, W) uint8`` label map."""
    k = dataset.num_classes + 1
    conf = np.zeros((k, k + 1), dtype=np.int64)  # last column: predictions of 255 (misses)
    for name in progress(names, desc=desc, total=len(names)):
        gt = dataset.load_mask(name)
        if gt is None:
            raise DataError(dataset.image_path(name), "no ground-truth mask to evaluate against")
        pred = predict(name)
        if pred.shape != gt.shape:
            raise DataError(name, f"prediction size {pred.shape[1]}x{pred.shape[0]} differs from the mask's "
                                  f"{gt.shape[1]}x{gt.shape[0]}")
        conf += confusion_matrix(pred, gt, k)
    return conf


def score_label_dir(pred_dir: Path, dataset, names=None, **kw) -> dict:
    """mIoU etc. of the palette PNGs ``pred_dir/{name}.png`` for every image of ``dataset`` (missing -> error)."""
    pred_dir = Path(pred_dir)
    names = list(dataset.names if names is None else names)
    missing = [n for n in names if not (pred_dir / f"{n}.png").exists()]
    if missing:
        raise DataError(pred_dir / f"{missing[0]}.png",
                        f"prediction missing ({len(missing)} of {len(names)} images have none)")
    conf = accumulate(dataset, names, lambda n: load_label_png(pred_dir / f"{n}.png"), **kw)
    return dict(scores(conf, dataset.label_names), images=len(names))


def evaluate_command(pred_dir: Path, data: str, split: str | None, out: Path | None, overrides=()) -> dict:
    """``affinitynet eval``: score a prediction folder, print a table, write ``metrics.json``."""
    from . import config as config_mod
    from .cli import resolve_config_path
    from .data import build_dataset
    from .runs import progress

    root = Path(data)
    if root.is_dir():
        cfg = config_mod.Config()
        cfg.data.kind = "voc"
        cfg.data.root = str(root)
        config_mod.apply_overrides(cfg, overrides)
    else:
        cfg = config_mod.load(resolve_config_path(data), overrides)
    split = split or cfg.data.val_split
    dataset = build_dataset(cfg.data, split)
    result = score_label_dir(pred_dir, dataset, progress=progress, desc=f"scoring {split}")
    print(format_table(result))
    out = out or Path(pred_dir) / "metrics.json"
    write_json(out, result)
    print(f"mIoU {result['miou']:.2f} on {len(dataset)} images of '{split}'; wrote {out}")
    return result
