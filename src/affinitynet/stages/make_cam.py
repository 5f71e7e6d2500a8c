"""make_cam: multi-scale + flip class activation maps of every training image, one ``.npz`` per image.

Storage: ``cam/{name}.npz`` with fixed keys ``keys`` (C',) int16 class ids of the image's tags and
``cams`` (C', H, W) float16 maps at image size, normalised to [0, 1]. Only present classes are stored
(1-3 maps per VOC image), so full resolution costs ~0.4 MB per VOC image and no later stage has to
resample; float16 keeps 3 significant digits, far below the CRF's and the argmax's sensitivity.
An image whose largest scale would exceed ``cam.max_long_side`` is shrunk first; its CAMs are upsampled back.
"""
from __future__ import annotations

import numpy as np
import torch

from ..io import write_json
from ..models import build_classifier
from ..ops.bound import shrink_image, upsample_to
from ..ops.cam import multiscale_cam, normalize_cams, normalize_image, scaled_images
from ..ops.metrics import cam_sweep, scores
from .common import build_trained, cam_file, load_cam, save_cam, scoring_set


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
        keys, maps = load_cam(ctx.run_dir, name)
        conf += cam_sweep(maps, keys, ds.load_mask(name), thresholds, k)
    per = [scores(c, ds.label_names) for c in conf]
    best = int(np.argmax([p["miou"] for p in per]))
    default = thresholds.index(ctx.cfg.eval.cam_bg_threshold)
    result = dict(per[default])
    result.update(threshold=thresholds[default], best_threshold=thresholds[best], miou_best=per[best]["miou"],
                  images=len(names), sweep={f"{t:g}": round(p["miou"], 2) for t, p in zip(thresholds, per)})
    return result


def image_cams(model, raw: np.ndarray, labels: np.ndarray, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 image, (C,) tags -> (keys (C',) class ids, maps (C', H, W) on the CPU): one image's CAMs.

    ``cfg`` is the ``cam`` section: scales, flip, batching, resampling and the size bound.
    """
    mean, std = model.backbone.mean, model.backbone.std
    size = raw.shape[:2]
    raw = shrink_image(raw, cfg.max_long_side, max(cfg.scales))
    image = normalize_image(raw, mean, std)
    scaled = scaled_images(raw, cfg.scales, mean, std, cfg.resample) if cfg.resample != "bilinear" else None
    cams = multiscale_cam(model, image, cfg.scales, cfg.flip, batched=cfg.batch_scales, scaled=scaled)
    keys, maps = normalize_cams(cams, torch.from_numpy(labels))
    return keys, upsample_to(maps.cpu(), size)  # stored at image size


def run(ctx) -> dict:
    """Write ``cam/{name}.npz`` for every training image; score CAM labels when masks exist."""
    cfg = ctx.cfg.cam
    ds = ctx.train_set
    model = build_trained(build_classifier, cfg, ds.num_classes, path=ctx.path("classifier", "final.pt"),
                          device=ctx.device, stage="train_cam")

    def work(name: str) -> None:
        save_cam(cam_file(ctx.run_dir, name), *image_cams(model, ds.load_image(name), ds.load_labels(name), cfg))

    counts = ctx.map_images(ds.names, lambda n: cam_file(ctx.run_dir, n), work, desc="make_cam",
                            image_of=ds.image_path, memory_key="cam.max_long_side")
    summary = {"images": len(ds), "computed": counts["done"]}
    if ctx.is_main and cfg.overlays > 0:
        from ..visualize import save_cam_overlays

        save_cam_overlays(ctx, ds.names[:cfg.overlays])
    if ctx.is_main and ds.has_masks:
        result = evaluate_cams(ctx)
        write_json(ctx.path("cam", "metrics.json"), result)
        summary.update(miou=round(result["miou"], 2), threshold=result["threshold"])
    return summary
