"""make_ir_labels: inter-pixel relation labels for the boundary network (IRN), one palette PNG per image.

``ir_labels/{name}.png`` holds the class where the CAMs beat a constant background of
``ir_labels.fg_threshold``, background where no class beats ``ir_labels.bg_threshold``, 255 between; each
thresholded argmax is refined by a dense CRF on hard labels first (``ops.relations``, docs/irn.md). Labels stay
at image size; train_boundary reduces its crops to the stride-4 grid. The CRF is CPU-bound, so images are
spread over ``ir_labels.workers`` processes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..io import load_cam, load_label_png, save_label_png, write_json
from ..layout import RunLayout
from ..ops.relations import relation_labels
from .make_affinity_labels import confident_region_quality


@dataclass
class _Labeller:
    """Picklable per-image work for the worker processes."""

    dataset: object
    layout: RunLayout
    cfg: object  # RelationLabelConfig

    def __call__(self, name: str) -> None:
        c = self.cfg
        keys, maps = load_cam(self.layout.cam(name))
        crf_params = dict(gt_prob=c.crf_gt_prob, iters=c.crf_iters, gauss_sxy=c.crf_gauss_sxy,
                          gauss_compat=c.crf_gauss_compat, bilateral_sxy=c.crf_bilateral_sxy,
                          bilateral_srgb=c.crf_bilateral_srgb, bilateral_compat=c.crf_bilateral_compat)
        label = relation_labels(self.dataset.load_image(name), keys, maps, fg_threshold=c.fg_threshold,
                                bg_threshold=c.bg_threshold, crf=c.crf, crf_params=crf_params)
        save_label_png(self.layout.ir_label(name), label)


def run(ctx) -> dict:
    """Write ``ir_labels/{name}.png`` for every training image; measure their precision when masks exist."""
    ds = ctx.train_set
    cfg = ctx.cfg.ir_labels
    if cfg.crf:
        from ..ops.crf import _densecrf

        _densecrf()  # fail now, with the install hint, rather than inside a worker
    layout = ctx.layout
    counts = ctx.map_images(ds.names, layout.ir_label, _Labeller(ds, layout, cfg), desc="make_ir_labels",
                            workers=cfg.workers)
    summary = {"images": len(ds), "computed": counts["done"]}
    if ctx.is_main and ds.has_masks:
        q = confident_region_quality(ds, ds.mask_names(), lambda n: load_label_png(layout.ir_label(n)))
        write_json(layout.stage_metrics(ctx.stage), q)
        summary.update({k: round(v, 2) for k, v in q.items() if v is not None and k not in ("fg_fraction",
                                                                                           "bg_fraction", "images")})
    return summary
