"""random_walk: propagate each training image's CAMs with AffinityNet affinities -> pseudo label PNGs.

As in the released code: the image is padded to a multiple of the stride, AffinityNet embeds it, the
score stack [(1 - max CAM)^alpha, CAMs] is zero-padded and average-pooled to the feature grid,
propagated (``affinitynet.randomwalk``), upsampled bilinearly, cropped back and argmaxed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import score_label_dir
from ..io import save_label_png, write_json
from ..models import build_affinitynet
from ..ops.bound import bound_factor
from ..ops.cam import cam_scores_with_bg, normalize_image
from ..randomwalk import pair_affinity, pair_indices, propagate_with_affinity
from .common import build_trained, load_cam, scoring_set, stride_grid

STRIDE = 8


def pseudo_label_file(run_dir: Path, name: str) -> Path:
    """``RUN_DIR/pseudo_labels/{name}.png``."""
    return Path(run_dir) / "pseudo_labels" / f"{name}.png"


def walk_scores(model, image: np.ndarray, keys: np.ndarray, maps: np.ndarray, cfg, device) -> torch.Tensor:
    """(H, W, 3) image, (C',) ids, (C', H, W) CAMs -> (1 + C', H, W) propagated scores (bg first).

    The walk runs at ``cfg.scale``, less for an image whose long side would exceed ``cfg.max_long_side``
    (shrunk with antialiasing); the scores come back at image size.
    """
    h, w = image.shape[:2]
    s = cfg.scale * bound_factor(h, w, cfg.max_long_side, cfg.scale)
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    (gh, gw), pad = stride_grid(sh, sw, STRIDE)

    def at_scale(x):  # (C, H, W) -> (1, C, gh * STRIDE, gw * STRIDE): resized, zero-padded
        x = x.unsqueeze(0)
        if (sh, sw) != (h, w):
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=s < cfg.scale)
        return F.pad(x, pad)

    x = at_scale(normalize_image(image, model.backbone.mean, model.backbone.std)).to(device)
    scores = F.avg_pool2d(at_scale(cam_scores_with_bg(torch.from_numpy(maps), cfg.alpha)), STRIDE, STRIDE).to(device)
    with torch.inference_mode():
        feat = model(x)
        idx_from, idx_to = pair_indices(gh, gw, cfg.radius, reference=cfg.reference_pairs, device=device)
        aff = pair_affinity(feat, idx_from, idx_to)
        out = propagate_with_affinity(scores, aff, gh, gw, cfg.radius, beta=cfg.beta, logt=cfg.logt,
                                      reference_pairs=cfg.reference_pairs)
        out = F.interpolate(out, size=(gh * STRIDE, gw * STRIDE), mode="bilinear", align_corners=False)
        out = out[:, :, :sh, :sw]
        if (sh, sw) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out[0].cpu()


def scores_to_label(scores: torch.Tensor, keys: np.ndarray) -> np.ndarray:
    """(1 + C', H, W) scores, (C',) class ids -> (H, W) uint8 class-id map."""
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    return lut[scores.argmax(0).numpy()]


@dataclass
class _Walker:
    """Picklable per-image work: loads AffinityNet once per process."""

    dataset: object
    run_dir: Path
    cfg: object  # Config
    device: torch.device
    _model: object = field(default=None, repr=False)

    def model(self):
        if self._model is None:
            self._model = build_trained(build_affinitynet, self.cfg.affinitynet,
                                        path=self.run_dir / "affinitynet" / "final.pt", device=self.device,
                                        stage="train_affinitynet")
        return self._model

    def __call__(self, name: str) -> None:
        image = self.dataset.load_image(name)
        keys, maps = load_cam(self.run_dir, name)
        scores = walk_scores(self.model(), image, keys, maps, self.cfg.random_walk, self.device)
        if self.cfg.random_walk.crf:
            from ..ops.crf import dense_crf

            scores = torch.from_numpy(dense_crf(image, scores.clamp_min(0).numpy()))
        save_label_png(pseudo_label_file(self.run_dir, name), scores_to_label(scores, keys))


def run(ctx) -> dict:
    """Write ``pseudo_labels/{name}.png`` for every training image; score them when masks exist."""
    ds = ctx.train_set
    walker = _Walker(ds, ctx.run_dir, ctx.cfg, ctx.device)
    workers = ctx.cfg.random_walk.workers if ctx.device.type == "cpu" else 1
    counts = ctx.map_images(ds.names, lambda n: pseudo_label_file(ctx.run_dir, n), walker,
                            desc="random_walk", workers=workers, image_of=ds.image_path,
                            memory_key="random_walk.max_long_side")
    summary = {"images": len(ds), "computed": counts["done"]}
    if ctx.is_main and ds.has_masks:
        result = score_label_dir(ctx.path("pseudo_labels"), scoring_set(ctx), progress=ctx.progress,
                                 desc="pseudo-label mIoU")
        write_json(ctx.path("pseudo_labels", "metrics.json"), result)
        summary["miou"] = round(result["miou"], 2)
    return summary
