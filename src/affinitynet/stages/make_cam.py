"""make_cam: class activation maps of every training image from the configured CAM method, one ``.npz`` each.

The method (``cam.method``, ``stages/cam_sources.py``) is the trained classifier's multi-scale + flip CAM
unless configured otherwise.

Storage: ``cam/{name}.npz`` with fixed keys ``keys`` (C',) int16 class ids of the image's tags and
``cams`` (C', H, W) float16 maps at image size, normalised to [0, 1]. Only present classes are stored
(1-3 maps per VOC image), so full resolution costs ~0.4 MB per VOC image and no later stage has to
resample; float16 keeps 3 significant digits, far below the CRF's and the argmax's sensitivity.
An image whose largest scale would exceed ``cam.max_long_side`` is shrunk first; its CAMs are upsampled back.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..accel import SameSizeBatches
from ..dist import shard
from ..io import load_cam, save_cam, write_json
from ..ops.metrics import cam_sweep, scores
from ..visualize import cam_overlay
from ..overlap import Behind
from .cam_sources import cam_source
from .common import scoring_set, scoring_split


def evaluate_cams(ctx, names=None) -> dict:
    """CAM-label mIoU at the fixed background threshold ``eval.cam_bg_threshold`` (the headline), and the sweep.

    The sweep's best threshold is chosen on the very images it scores, so it is reported beside the
    headline (``best_threshold``, ``miou_best``), never as it.
    """
    ds = scoring_set(ctx)
    asked = ds.names if names is None else names
    names = ds.mask_names(asked)  # images without a mask are left out (``unmasked`` counts them)
    thresholds = sorted(set(ctx.cfg.eval.cam_sweep) | {ctx.cfg.eval.cam_bg_threshold})
    k = ds.num_classes + 1
    conf = np.zeros((len(thresholds), k, k + 1), dtype=np.int64)
    for name in ctx.progress(names, desc="CAM mIoU sweep"):
        keys, maps = load_cam(ctx.layout.cam(name))
        conf += cam_sweep(maps, keys, ds.load_mask(name), thresholds, k)
    per = [scores(c, ds.label_names) for c in conf]
    best = int(np.argmax([p["miou"] for p in per]))
    default = thresholds.index(ctx.cfg.eval.cam_bg_threshold)
    result = dict(per[default])
    result.update(threshold=thresholds[default], best_threshold=thresholds[best], miou_best=per[best]["miou"],
                  images=len(names), unmasked=len(asked) - len(names), split=scoring_split(ctx),
                  sweep={f"{t:g}": round(p["miou"], 2) for t, p in zip(thresholds, per)})
    return result


@dataclass
class _Inputs:
    """One image's inputs for the CAM source: ``inputs`` of its decoded pixels, and its tags (DataLoader workers run it)."""

    dataset: object
    inputs: Callable

    def __call__(self, name: str):
        return self.inputs(self.dataset.load_image(name)), self.dataset.load_labels(name)


def run(ctx) -> dict:
    """Write ``cam/{name}.npz`` for every training image; score CAM labels when masks exist.

    Images are decoded and prepared ahead (``runtime.num_workers`` DataLoader workers), and the files are
    written by a thread while the network goes on with the next images.
    """
    cfg = ctx.cfg.cam
    ds = ctx.train_set
    layout = ctx.layout
    source = cam_source(ctx)
    writer = Behind.writer()

    def save(name: str, keys, maps) -> None:
        writer.submit(save_cam, layout.cam(name), keys, maps, path=layout.cam(name))

    def one_image(name: str, item) -> None:
        image, tags = item
        save(name, *source(name, image, tags))

    def group(names, items) -> None:
        images, tags = zip(*items)
        for name, (keys, maps) in zip(names, source.batch(names, list(images), list(tags))):
            save(name, keys, maps)

    around = [writer]
    work = one_image
    if ctx.cfg.runtime.batch_images > 1 and hasattr(source, "batch"):
        run_group = ctx.memory_report(group, "make_cam", "cam.max_long_side", ds.image_path)
        work = SameSizeBatches(shard(list(ds.names), ctx.rank, ctx.world_size), run_group,
                               ctx.cfg.runtime.batch_images, key=lambda item: tuple(item[0].size))
        around.append(work)  # exits first: its last groups go to the writer before the writer finishes
    counts = ctx.map_images(ds.names, layout.cam, work, desc="make_cam", image_of=ds.image_path,
                            memory_key="cam.max_long_side", inputs=_Inputs(ds, source.inputs()), around=around)
    summary = {"images": len(ds), "computed": counts["done"]}
    if ctx.is_main and cfg.overlays > 0:
        from ..visualize import save_rgb

        for name in ds.names[:cfg.overlays]:
            image = ds.load_image(name)
            overlay = cam_overlay(image, load_cam(layout.cam(name))[1])
            save_rgb(layout.cam_overlay(name), np.concatenate([image, overlay], 1))
    if ctx.is_main and ds.has_masks:
        result = evaluate_cams(ctx)
        write_json(layout.stage_metrics(ctx.stage), result)
        summary.update(miou=round(result["miou"], 2), threshold=result["threshold"])
    return summary
