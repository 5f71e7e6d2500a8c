"""segment: the trained segmentation network on an evaluation split (multi-scale + flip, optional CRF).

Also the first ``eval.report_images`` training images (``segmentation/preview/``), which the report shows
beside their CAM and pseudo label.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..conventions import normalize_image
from ..io import save_label_png, write_json
from ..models import build_deeplab
from ..ops.bound import shrink_image, upsample_to
from ..ops.inference import multiscale_predict
from ..scoring import score_labels
from ..accel import AccelOptions
from .common import build_trained


def predict_scores(model, image: np.ndarray, device, *, scales=(1.0,), flip=False,
                   max_long_side: int = 0) -> torch.Tensor:
    """(H, W, 3) uint8 image -> (K, H, W) float32 class scores on the CPU from the segmentation network.

    An image whose largest scale would exceed ``max_long_side`` (0: no bound) is shrunk first; the scores
    are upsampled back to its size.
    """
    small = shrink_image(image, max_long_side, max(scales))
    x = normalize_image(small, model.backbone.mean, model.backbone.std).to(device)
    with torch.inference_mode():
        return upsample_to(multiscale_predict(model, x, scales, flip).float().cpu(), image.shape[:2])


def predict_label(model, image: np.ndarray, device, *, scales=(1.0,), flip=False, crf=False,
                  max_long_side: int = 0, prob: torch.Tensor | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image -> (H, W) uint8 class ids (``predict_scores``, or ``prob`` when given; a dense CRF if ``crf``)."""
    if prob is None:
        prob = predict_scores(model, image, device, scales=scales, flip=flip, max_long_side=max_long_side)
    if crf:
        from ..ops.crf import dense_crf

        prob = torch.from_numpy(dense_crf(image, prob.numpy()))
    return prob.argmax(0).numpy().astype(np.uint8)


def eval_split(ctx) -> str:
    """The dataset split ``segmentation.split`` names: ``val``/``train`` mean the data section's splits."""
    s = ctx.cfg.segmentation.split
    return {"val": ctx.cfg.data.val_split, "train": ctx.cfg.data.train_split}.get(s, s)


@dataclass
class _Segmenter:
    dataset: object
    output_of: object  # name -> Path
    model_path: Path
    cfg: object  # Config
    device: torch.device
    crf_of: object = None  # name -> Path of its CRF label (eval.crf_rows), or None
    _model: object = field(default=None, repr=False)

    def __call__(self, name: str) -> None:
        c = self.cfg.segmentation
        if self._model is None:
            self._model = build_trained(build_deeplab, c, self.dataset.num_classes + 1, path=self.model_path,
                                        device=self.device, stage="train_segmentation",
                                        accel=AccelOptions.from_runtime(self.cfg.runtime))
        image = self.dataset.load_image(name)
        prob = predict_scores(self._model, image, self.device, scales=c.test_scales, flip=c.test_flip,
                              max_long_side=c.test_max_long_side)
        if self.crf_of is not None:  # eval.crf_rows: the same scores after a dense CRF, scored as segmentation_crf
            save_label_png(self.crf_of(name), predict_label(self._model, image, self.device, crf=True, prob=prob))
        save_label_png(self.output_of(name), predict_label(self._model, image, self.device, crf=c.crf, prob=prob))


def run(ctx) -> dict:
    """Write ``segmentation/{name}.png`` for the evaluation split (and the report's previews); score them."""
    split = eval_split(ctx)
    ds = ctx.dataset(split)
    layout = ctx.layout
    network = layout.network("train_segmentation")
    crf_of = layout.prediction_crf if ctx.cfg.eval.crf_rows and not ctx.cfg.segmentation.crf else None
    work = _Segmenter(ds, layout.prediction, network, ctx.cfg, ctx.device, crf_of)
    counts = ctx.map_images(ds.names, layout.prediction, work, desc=f"segment {split}",
                            image_of=ds.image_path, memory_key="segmentation.test_max_long_side")
    summary = {"split": split, "images": len(ds), "computed": counts["done"]}
    if ctx.is_main and ctx.cfg.eval.report_images > 0:
        train = ctx.train_set
        preview = _Segmenter(train, layout.preview, network, ctx.cfg, ctx.device)
        for name in train.names[:ctx.cfg.eval.report_images]:
            if not layout.preview(name).exists():
                preview(name)
    if ctx.is_main and ds.has_masks:
        result = score_labels(layout.prediction, ds, progress=ctx.progress, desc="segmentation mIoU")
        result["split"] = split
        write_json(layout.stage_metrics(ctx.stage), result)
        summary["miou"] = round(result["miou"], 2)
    return summary
