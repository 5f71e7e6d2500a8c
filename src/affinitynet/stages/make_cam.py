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

import numpy as np

from ..accel import SameSizeBatches
from ..io import load_cam, save_cam, write_json
from ..ops.metrics import cam_sweep, scores
from ..visualize import cam_overlay
from .cam_sources import cam_source
from .common import scoring_set, scoring_split


def evaluate_cams(ctx, names=None) -> dict:
    """CAM-label mIoU at the fixed background threshold ``eval.cam_bg_threshold`` (the headline), and the sweep.

    The sweep's best threshold is chosen on the very images it scores, so it is reported beside the
    headline (``best_threshold``, ``miou_best``), never as it.
    """
    ds = scoring_set(ctx)
    names = ds.names if names is None else names
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
                  images=len(names), split=scoring_split(ctx),
                  sweep={f"{t:g}": round(p["miou"], 2) for t, p in zip(thresholds, per)})
    return result


def same_size_batches(ctx, ds, source, output_of) -> SameSizeBatches:
    """make_cam's work when ``runtime.batch_images`` > 1: images of one size share their forward passes."""
    from ..dist import shard

    def load(name):
        return ds.load_image(name), ds.load_labels(name)

    def run(names, inputs):
        images, tags = zip(*inputs)
        for name, (keys, maps) in zip(names, source.batch(names, list(images), list(tags))):
            save_cam(output_of(name), keys, maps)

    return SameSizeBatches(shard(list(ds.names), ctx.rank, ctx.world_size), output_of, load, run,
                           ctx.cfg.runtime.batch_images)


def run(ctx) -> dict:
    """Write ``cam/{name}.npz`` for every training image; score CAM labels when masks exist."""
    cfg = ctx.cfg.cam
    ds = ctx.train_set
    layout = ctx.layout
    source = cam_source(ctx)

    def one_image(name: str) -> None:
        save_cam(layout.cam(name), *source(name, ds.load_image(name), ds.load_labels(name)))

    batched = ctx.cfg.runtime.batch_images > 1 and hasattr(source, "batch")
    work = same_size_batches(ctx, ds, source, layout.cam) if batched else one_image

    counts = ctx.map_images(ds.names, layout.cam, work, desc="make_cam", image_of=ds.image_path,
                            memory_key="cam.max_long_side")
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
