"""train_segmentation: the DeepLab-style network trained on this run's pseudo labels (or any label folder).

``segmentation.labels``: ``pseudo`` (``RUN_DIR/pseudo_labels``), ``gt`` (the dataset's masks: the fully
supervised upper bound), or a folder of palette PNGs. Cross-entropy ignoring 255; poly LR with the head
at x10; random scale, flip, crop. Validation mIoU (single scale) after each epoch.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import IGNORE
from ..data.transforms import LabelMapSet, TrainTransform
from ..global_batch import MeanLoss
from ..errors import ConfigError
from ..scoring import accumulate
from ..io import load_label_png, write_json
from ..models import build_deeplab
from ..ops.metrics import scores
from .common import build_pretrained, require, train_network

VAL_IMAGES = 500


class SegmentationLoss(MeanLoss):
    """Cross-entropy (255 ignored) of logits upsampled to the crop, averaged over the labelled pixels of the whole
    batch: images (B, 3, S, S), labels (B, S, S)."""

    def counts(self, batch, device) -> torch.Tensor:
        """(1,) number of labelled pixels."""
        return (batch[1].to(device, non_blocking=True) != IGNORE).sum().reshape(1)

    def sums(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        """(1,) sum of the pixels' cross-entropy."""
        x, label = batch
        logits = model(x.to(device, non_blocking=True))
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, label.to(device, non_blocking=True), ignore_index=IGNORE, reduction="sum")
        return loss.reshape(1), {}


segmentation_loss = SegmentationLoss()


def _label_from_dir(folder: Path, name: str) -> np.ndarray:
    return load_label_png(Path(folder) / f"{name}.png")


def _label_from_mask(dataset, name: str) -> np.ndarray:
    return dataset.load_mask(name)


def label_source(ctx, dataset):
    """``label_fn(name) -> (H, W) uint8`` for the configured training labels."""
    choice = ctx.cfg.segmentation.labels
    if choice == "gt":
        if not dataset.has_masks:
            raise ConfigError("segmentation.labels=gt needs ground-truth masks, and the training split has none")
        return functools.partial(_label_from_mask, dataset)
    folder = ctx.layout.folder("random_walk") if choice == "pseudo" else Path(choice)
    if not folder.is_dir():
        raise ConfigError(f"segmentation.labels: {folder} is not a folder of label PNGs"
                          + (" (run the random_walk stage first)" if choice == "pseudo" else ""))
    for name in dataset.names[:1]:
        require(folder / f"{name}.png", "random_walk")
    return functools.partial(_label_from_dir, folder)


def segmentation_miou(model, dataset, device, *, scales=(1.0,), flip=False, limit: int = VAL_IMAGES,
                      max_long_side: int = 0, target=None) -> dict:
    """mIoU (%) of the network's predictions on up to ``limit`` images of ``dataset``.

    Against the dataset's masks, or against ``target(name) -> (H, W) uint8`` (e.g. its own training labels).
    """
    from .segment import predict_label

    model.eval()

    def predict(name: str):
        return predict_label(model, dataset.load_image(name), device, scales=scales, flip=flip,
                             max_long_side=max_long_side)

    names = dataset.names if target is not None else dataset.mask_names()
    return scores(accumulate(dataset, names[:limit], predict, target=target), dataset.label_names)


def build_network(ctx, num_classes: int):
    """DeepLab with ``segmentation.pretrained`` loaded into its backbone (``classifier``: this run's classifier)."""
    return build_pretrained(ctx, ctx.cfg.segmentation, "segmentation", build_deeplab, num_classes)


def run(ctx) -> dict:
    """Train the segmentation network into ``deeplab/`` (resumes from its ``last.pt``)."""
    cfg = ctx.cfg.segmentation
    ds = ctx.train_set
    model = build_network(ctx, ds.num_classes + 1)
    labels = label_source(ctx, ds)
    data = LabelMapSet(ds, ds.names, labels,
                       TrainTransform("seg", cfg, model.backbone.mean, model.backbone.std,
                                      max_long_side=cfg.max_long_side), seed=ctx.cfg.runtime.seed)
    val = ctx.val_set
    validate = None
    if val.has_masks and len(val):
        validate = lambda m: {"miou": segmentation_miou(m, val, ctx.device,  # noqa: E731
                                                        max_long_side=cfg.test_max_long_side)["miou"]}
    result = train_network(ctx, model, cfg, data, segmentation_loss, validate=validate)
    summary = {"loss": round(result["final_loss"], 4)}
    if not ctx.is_main:
        return summary
    # How well the network fits the labels it was trained on: a network far below its own training labels
    # underfits them (schedule, noise), which no amount of label quality fixes.
    fit = segmentation_miou(model, ds, ctx.device, limit=VAL_IMAGES, max_long_side=cfg.test_max_long_side,
                            target=labels)
    metrics = {**summary, "train_fit_miou": round(fit["miou"], 2), "train_fit": fit, "labels": cfg.labels}
    if validate is not None:
        summary["val_miou_single_scale"] = metrics["val_miou_single_scale"] = round(validate(model)["miou"], 2)
    summary["train_fit_miou"] = metrics["train_fit_miou"]
    write_json(ctx.layout.stage_metrics(ctx.stage), metrics)
    return summary
