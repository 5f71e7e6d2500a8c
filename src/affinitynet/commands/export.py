"""``affinitynet export RUN_DIR --format FORMAT --out DIR``: a run's labels in the layouts other tools read
(docs/exports.md).

Formats: ``index`` (single-channel PNGs of class ids, 255 ignored), ``palette`` (VOC palette PNGs),
``voc-aug`` (``SegmentationClassAug/`` plus the split's list files for mmsegmentation and deeplab-pytorch),
``voc-test`` (the VOC evaluation server's ``results/VOC2012/Segmentation/comp6_test_cls/`` and a ``.tar.gz``
of it), ``coco`` (index PNGs of a COCO run and ``classes.json``: index -> name and COCO category id).
``--confidence T`` (random walk labels) turns pixels whose share of the walk's scores, max_c s_c / sum_c s_c,
is below T into 255.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..conventions import IGNORE
from ..errors import ConfigError, StageError
from ..io import atomic_path, load_label_png, save_label_png, write_text
from .sweep import run_context

FORMATS = ("index", "palette", "voc-aug", "voc-test", "coco")
STAGES = ("random_walk", "segment")
VOC_TEST_DIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def confidence_of(scores: torch.Tensor) -> np.ndarray:
    """(K, H, W) non-negative scores -> (H, W) float32 share of the winning class (0 where all are 0)."""
    s = scores.clamp_min(0)
    total = s.sum(0)
    share = torch.where(total > 0, s.amax(0) / total.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(total))
    return share.numpy().astype(np.float32)


def _labels(ctx, stage: str):
    """(names, name -> Path of its label PNG, split name) of the stage's labels."""
    layout = ctx.layout
    if stage == "random_walk":
        return ctx.train_set.names, layout.pseudo_label, ctx.cfg.data.train_split
    from ..stages.segment import eval_split

    split = eval_split(ctx)
    return ctx.dataset(split).names, layout.prediction, split


def _list_name(split: str) -> str:
    return Path(split).stem if ("/" in split or split.endswith(".txt")) else split


def export_labels(run_dir: Path, fmt: str, out: Path, *, stage: str = "random_walk",
                  confidence: float | None = None) -> dict:
    """Write the stage's labels of a finished run to ``out`` in format ``fmt``; returns what was written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: valid formats are {', '.join(FORMATS)}")
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage}: exports take the labels of {', '.join(STAGES)}")
    if confidence is not None and not 0 <= confidence <= 1:
        raise ConfigError(f"--confidence {confidence}: must lie in [0, 1]")
    if confidence is not None and stage != "random_walk":
        raise ConfigError("--confidence needs the random walk's saved scores: use it with --stage random_walk")
    ctx = run_context(Path(run_dir))
    if fmt == "coco" and ctx.cfg.data.kind != "coco":
        raise ConfigError(f"--format coco exports a COCO run; this run's data.kind is {ctx.cfg.data.kind} "
                          f"(use index or palette)")
    names, label_of, split = _labels(ctx, stage)
    missing = [n for n in names if not label_of(n).is_file()]
    if missing:
        raise StageError(f"{label_of(missing[0])} is missing ({len(missing)} of {len(names)} labels): "
                         f"run the '{stage}' stage first")
    out = Path(out)
    folder = {"voc-aug": out / "SegmentationClassAug", "voc-test": out / VOC_TEST_DIR}.get(fmt, out)
    palette = fmt in ("palette", "voc-test")
    from ..stages.random_walk import load_walk_scores

    unsure = total = 0
    for name in ctx.progress(names, desc=f"export {fmt}"):
        label = load_label_png(label_of(name))
        if confidence is not None:
            path = ctx.layout.walk_scores(name)
            if not path.is_file():
                raise StageError(f"{path} is missing: --confidence needs the scores random_walk saves (re-run it)")
            low = (confidence_of(load_walk_scores(path)[1]) < confidence) & (label != IGNORE)
            label = np.where(low, IGNORE, label).astype(np.uint8)
            unsure += int(low.sum())
        total += label.size
        save_label_png(folder / f"{Path(name).name}.png", label, palette=palette)
    written = {"format": fmt, "stage": stage, "images": len(names), "folder": str(folder)}
    if confidence is not None:
        written.update(confidence=confidence, unsure_percent=round(100.0 * unsure / max(total, 1), 2))
    if fmt == "voc-aug":
        written["lists"] = _voc_lists(out, [Path(n).name for n in names], _list_name(split))
    if fmt == "voc-test":
        written["archive"] = str(_tar(out, VOC_TEST_DIR.parts[0]))
    if fmt == "coco":
        written["classes"] = str(_classes_json(out, ctx.dataset(split)))
    print(f"wrote {len(names)} {fmt} labels of {stage} to {folder}"
          + (f" ({written['unsure_percent']}% of pixels below confidence {confidence} set to 255)"
             if confidence is not None else ""))
    return written


def _voc_lists(out: Path, names: list[str], list_name: str) -> list[str]:
    """The split's list files: mmsegmentation's (one name a line) and deeplab-pytorch's (image and label paths)."""
    mmseg = out / "ImageSets" / "Segmentation" / f"{list_name}.txt"
    deeplab = out / "ImageSets" / "SegmentationAug" / f"{list_name}.txt"
    write_text(mmseg, "".join(f"{n}\n" for n in names))
    write_text(deeplab, "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in names))
    return [str(mmseg), str(deeplab)]


def _tar(out: Path, top: str) -> Path:
    """``out/results.tar.gz`` holding ``out/results/`` (the archive the VOC server takes)."""
    archive = out / f"{top}.tar.gz"
    with atomic_path(archive) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(out / top, arcname=top)
    return archive


def _classes_json(out: Path, dataset) -> Path:
    """``out/classes.json``: [{index, name, category_id}] (category_id: the COCO id of index >= 1)."""
    cat_of = dict(enumerate(getattr(dataset, "category_ids", []), start=1))
    rows = [{"index": i, "name": n, "category_id": cat_of.get(i)} for i, n in enumerate(dataset.label_names)]
    path = out / "classes.json"
    write_text(path, json.dumps(rows, indent=1) + "\n")
    return path
