"""random_walk: propagate each training image's CAMs with pair affinities -> pseudo label PNGs.

As in the released code: the image is padded to a multiple of the stride, the affinity source
(``random_walk.affinity``, ``stages/affinity_sources.py``; AffinityNet by default) gives the affinities of
the pairs within the radius, the score stack [(1 - max CAM)^alpha, CAMs] is zero-padded and
average-pooled to the grid, propagated (``affinitynet.randomwalk``), upsampled bilinearly, cropped back
and argmaxed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import normalize_image
from ..scoring import score_labels
from ..io import load_cam, save_label_png, write_json
from ..layout import RunLayout
from ..ops.bound import bound_factor
from ..ops.cam import cam_scores_with_bg, class_lut
from ..randomwalk import propagate_with_affinity
from .affinity_sources import AffinitySource, affinity_source
from .common import scoring_set, scoring_split, stride_grid


def walk_scores(source: AffinitySource, image: np.ndarray, keys: np.ndarray, maps: np.ndarray, cfg,
                device) -> torch.Tensor:
    """(H, W, 3) image, (C',) ids, (C', H, W) CAMs -> (1 + C', H, W) propagated scores (bg first).

    The walk runs at ``cfg.scale``, less for an image whose long side would exceed ``cfg.max_long_side``
    (shrunk with antialiasing); the scores come back at image size.
    """
    h, w = image.shape[:2]
    s = cfg.scale * bound_factor(h, w, cfg.max_long_side, cfg.scale)
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    stride = source.stride
    (gh, gw), pad = stride_grid(sh, sw, stride)

    def at_scale(x):  # (C, H, W) -> (1, C, gh * stride, gw * stride): resized, zero-padded
        x = x.unsqueeze(0)
        if (sh, sw) != (h, w):
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=s < cfg.scale)
        return F.pad(x, pad)

    x = at_scale(normalize_image(image, *source.mean_std())).to(device)
    scores = F.avg_pool2d(at_scale(cam_scores_with_bg(torch.from_numpy(maps), cfg.alpha)), stride, stride).to(device)
    aff = source(x, cfg.radius, cfg.reference_pairs)
    with torch.inference_mode():
        out = propagate_with_affinity(scores, aff, gh, gw, cfg.radius, beta=cfg.beta, logt=cfg.logt,
                                      reference_pairs=cfg.reference_pairs)
        out = F.interpolate(out, size=(gh * stride, gw * stride), mode="bilinear", align_corners=False)
        out = out[:, :, :sh, :sw]
        if (sh, sw) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out[0].cpu()


def scores_to_label(scores: torch.Tensor, keys: np.ndarray) -> np.ndarray:
    """(1 + C', H, W) scores, (C',) class ids -> (H, W) uint8 class-id map."""
    return class_lut(keys).numpy().astype(np.uint8)[scores.argmax(0).numpy()]


@dataclass
class _Walker:
    """Picklable per-image work: builds the affinity source once per process."""

    dataset: object
    layout: RunLayout
    cfg: object  # Config
    device: torch.device
    _source: object = field(default=None, repr=False)

    def source(self) -> AffinitySource:
        if self._source is None:
            self._source = affinity_source(self.cfg, self.layout, self.device)
        return self._source

    def __call__(self, name: str) -> None:
        image = self.dataset.load_image(name)
        keys, maps = load_cam(self.layout.cam(name))
        scores = walk_scores(self.source(), image, keys, maps, self.cfg.random_walk, self.device)
        if self.cfg.random_walk.crf:
            from ..ops.crf import dense_crf

            scores = torch.from_numpy(dense_crf(image, scores.clamp_min(0).numpy()))
        save_label_png(self.layout.pseudo_label(name), scores_to_label(scores, keys))


def run(ctx) -> dict:
    """Write ``random_walk/{name}.png`` for every training image; score them when masks exist."""
    ds = ctx.train_set
    layout = ctx.layout
    walker = _Walker(ds, layout, ctx.cfg, ctx.device)
    workers = ctx.cfg.random_walk.workers if ctx.device.type == "cpu" else 1
    counts = ctx.map_images(ds.names, layout.pseudo_label, walker, desc="random_walk", workers=workers,
                            image_of=ds.image_path, memory_key="random_walk.max_long_side")
    summary = {"images": len(ds), "computed": counts["done"]}
    if ctx.is_main and ds.has_masks:
        result = score_labels(layout.pseudo_label, scoring_set(ctx), progress=ctx.progress,
                                 desc="pseudo-label mIoU")
        result["split"] = scoring_split(ctx)
        write_json(layout.stage_metrics(ctx.stage), result)
        summary["miou"] = round(result["miou"], 2)
    return summary
