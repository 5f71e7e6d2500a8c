"""``affinitynet eval``: score a folder of label PNGs against a dataset's masks, print and save the table."""
from __future__ import annotations

from pathlib import Path

from .. import config as config_mod
from ..data import build_dataset
from ..io import write_json
from ..logs import progress
from ..ops.metrics import format_table
from ..scoring import score_label_dir


def evaluate_command(pred_dir: Path, data: str, split: str | None, out: Path | None, overrides=()) -> dict:
    """``affinitynet eval``: score a prediction folder, print a table, write ``metrics.json``."""

    root = Path(data)
    if root.is_dir():
        cfg = config_mod.Config()
        cfg.data.kind = "voc"
        cfg.data.root = str(root)
        config_mod.apply_overrides(cfg, overrides)
    else:
        cfg = config_mod.load(config_mod.resolve_config_path(data), overrides)
    split = split or cfg.data.val_split
    dataset = build_dataset(cfg.data, split)
    result = score_label_dir(pred_dir, dataset, progress=progress, desc=f"scoring {split}")
    print(format_table(result))
    out = out or Path(pred_dir) / "metrics.json"
    write_json(out, result)
    print(f"mIoU {result['miou']:.2f} on {len(dataset)} images of '{split}'; wrote {out}")
    return result
