"""make_affinity_labels: confident foreground / background regions from the CAMs, one palette PNG per image.

``affinity_labels/{name}.png`` holds class ids where the foreground is confident, 0 where the background
is confident and 255 elsewhere, at image size; AffinityNet training pools them to its feature grid after
cropping (``affinity_labels.grid_labels: pixels``). With ``grid_labels: scores`` the CRF-refined score
stacks are kept as well, ``affinity_labels/{name}.npz`` (keys ``keys`` (C',) int16 class ids, ``la`` and
``ha`` (1 + C', H, W) float16, background first), and training averages them over each 8x8 cell of the
crop before taking the argmax, as the AffinityNet release does. The dense CRF is CPU-bound, so images
are spread over ``affinity_labels.workers`` processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch

from ..io import load_cam, load_label_png, load_npz, save_label_png, save_npz, write_json
from ..ops.cam import class_lut
from ..ops.confident import confident_labels, confident_scores, labels_from_scores
from ..layout import RunLayout


def load_scores(path: Path) -> np.ndarray:
    """(H, W, 2K) float32 from a score file (``RunLayout.affinity_scores``): la's K channels, then ha's (bg first)."""
    z = load_npz(path)
    return np.concatenate([z["la"], z["ha"]], axis=0).astype(np.float32).transpose(1, 2, 0)


@dataclass
class _Labeller:
    """Picklable per-image work for the worker processes."""

    dataset: object
    layout: RunLayout
    cfg: object  # AffinityLabelConfig

    def __call__(self, name: str) -> None:
        c = self.cfg
        keys, maps = load_cam(self.layout.cam(name))
        image = self.dataset.load_image(name)
        crf_params = dict(iters=c.crf_iters, gauss_sxy=c.crf_gauss_sxy, gauss_compat=c.crf_gauss_compat,
                          bilateral_sxy=c.crf_bilateral_sxy, bilateral_srgb=c.crf_bilateral_srgb,
                          bilateral_compat=c.crf_bilateral_compat, unary=c.crf_unary)
        if c.grid_labels == "scores":
            la, ha = confident_scores(image, maps, alpha_low=c.alpha_low, alpha_high=c.alpha_high,
                                      crf_params=crf_params)
            save_npz(self.layout.affinity_scores(name), compressed=True, keys=keys.astype(np.int16),
                     la=la.numpy().astype(np.float16), ha=ha.numpy().astype(np.float16))
            label = labels_from_scores(la, ha, class_lut(keys)).to(torch.uint8).numpy()
        else:
            label = confident_labels(image, keys, maps, alpha_low=c.alpha_low, alpha_high=c.alpha_high,
                                     crf=c.crf, crf_params=crf_params, fg_threshold=c.fg_threshold,
                                     bg_threshold=c.bg_threshold)
        save_label_png(self.layout.affinity_label(name), label)  # written last: it marks the image as done


def confident_region_quality(dataset, names, label_of) -> dict:
    """Precision of the confident foreground and background against the masks, and the ignored fraction (%)."""
    fg_right = fg_all = bg_right = bg_all = ignored = total = 0
    for name in names:
        gt = dataset.load_mask(name)
        pred = label_of(name)
        valid = gt != 255
        p, g = pred[valid], gt[valid]
        fg = (p != 0) & (p != 255)
        fg_all += int(fg.sum())
        fg_right += int((fg & (p == g)).sum())
        bg_all += int((p == 0).sum())
        bg_right += int(((p == 0) & (g == 0)).sum())
        ignored += int((p == 255).sum())
        total += int(p.size)

    def pct(a, b):
        return 100.0 * a / b if b else None

    return {"fg_precision": pct(fg_right, fg_all), "bg_precision": pct(bg_right, bg_all),
            "ignored": pct(ignored, total), "fg_fraction": pct(fg_all, total), "bg_fraction": pct(bg_all, total),
            "images": len(names)}


def run(ctx) -> dict:
    """Write ``affinity_labels/{name}.png`` for every training image; measure their precision when masks exist."""
    ds = ctx.train_set
    cfg = ctx.cfg.affinity_labels
    if cfg.grid_labels == "scores" and not cfg.crf:
        from ..errors import ConfigError

        raise ConfigError("affinity_labels.grid_labels=scores averages CRF scores: it needs affinity_labels.crf=true")
    if cfg.crf:
        from ..ops.crf import _densecrf

        _densecrf()  # fail now, with the install hint, rather than inside a worker
    layout = ctx.layout
    work = _Labeller(ds, layout, cfg)
    counts = ctx.map_images(ds.names, layout.affinity_label, work, desc="make_affinity_labels", workers=cfg.workers)
    summary = {"images": len(ds), "computed": counts["done"]}
    if ctx.is_main and ds.has_masks:
        q = confident_region_quality(ds, ds.mask_names(), lambda n: load_label_png(layout.affinity_label(n)))
        write_json(layout.stage_metrics(ctx.stage), q)
        summary.update({k: round(v, 2) for k, v in q.items() if v is not None and k not in ("fg_fraction",
                                                                                           "bg_fraction", "images")})
    return summary
