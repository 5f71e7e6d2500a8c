"""segment: the trained segmentation network on an evaluation split (multi-scale + flip, optional CRF).

The dense CRFs (``segmentation.crf``, ``eval.crf_rows``) run in ``runtime.crf_workers`` processes while the
network goes on with the next images. Also the first ``eval.report_images`` training images
(``segmentation/preview/``), which the report shows beside their CAM and pseudo label.
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
from ..overlap import Behind
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
    return scores_label(prob.numpy(), image, crf)


def scores_label(prob: np.ndarray, image: np.ndarray, crf: bool) -> np.ndarray:
    """(K, H, W) float32 class scores -> (H, W) uint8 class ids, after a dense CRF on the (H, W, 3) image when ``crf``."""
    if crf:
        from ..ops.crf import dense_crf

        prob = dense_crf(image, prob)
    return torch.from_numpy(prob).argmax(0).numpy().astype(np.uint8)


def eval_split(ctx) -> str:
    """The dataset split ``segmentation.split`` names: ``val``/``train`` mean the data section's splits."""
    s = ctx.cfg.segmentation.split
    return {"val": ctx.cfg.data.val_split, "train": ctx.cfg.data.train_split}.get(s, s)


@dataclass
class _Segmenter:
    """segment's per-image work: the network's scores here, the dense CRFs handed to ``crfs`` (a pool of processes
    that works while the network goes on with the next images), each label file written as its labels are ready."""

    dataset: object
    output_of: object  # name -> Path
    model_path: Path
    cfg: object  # Config
    device: torch.device
    crf_of: object = None  # name -> Path of its CRF label (eval.crf_rows), or None
    crfs: Behind = field(default_factory=Behind)  # where the CRFs run (default: here, at once)
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
        out = self.output_of(name)
        if self.crf_of is not None:  # eval.crf_rows: the same scores after a dense CRF, scored as segmentation_crf
            plain = predict_label(self._model, image, self.device, prob=prob)
            crf_path = self.crf_of(name)

            def save_both(label: np.ndarray) -> None:
                save_label_png(crf_path, label)
                save_label_png(out, plain)  # written last: it marks the image as done

            self.crfs.submit(scores_label, prob.numpy(), image, True, then=save_both, path=crf_path)
        elif c.crf:
            self.crfs.submit(scores_label, prob.numpy(), image, True, then=lambda label: save_label_png(out, label),
                             path=out)
        else:
            save_label_png(out, predict_label(self._model, image, self.device, prob=prob))


def run(ctx) -> dict:
    """Write ``segmentation/{name}.png`` for the evaluation split (and the report's previews); score them."""
    split = eval_split(ctx)
    ds = ctx.dataset(split)
    layout = ctx.layout
    network = layout.network("train_segmentation")
    crf_of = layout.prediction_crf if ctx.cfg.eval.crf_rows and not ctx.cfg.segmentation.crf else None
    crfs = Behind.processes(ctx.worker_share(ctx.cfg.runtime.crf_workers, f"segment {split}'s CRFs"))
    work = _Segmenter(ds, layout.prediction, network, ctx.cfg, ctx.device, crf_of, crfs)
    counts = ctx.map_images(ds.names, layout.prediction, work, desc=f"segment {split}",
                            image_of=ds.image_path, memory_key="segmentation.test_max_long_side", around=[crfs])
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
