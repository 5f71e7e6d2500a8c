"""train_cam: the classification network whose class activation maps seed everything else.

Multi-label soft margin loss, SGD with poly decay and the x1/x2/x10/x20 learning-rate groups,
augmentation: random resize of the long side, flip, colour jitter, random crop. Validation loss and
classification mAP are logged after every epoch.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import ClassificationSet, TrainTransform
from ..io import write_json
from ..models import build_classifier
from ..ops.bound import shrink_image
from ..conventions import normalize_image
from ..ops.metrics import average_precision
from .common import train_network, use_given_checkpoint

VAL_IMAGES = 500  # validation after each epoch looks at no more than this many images


def classification_loss(model, batch, device):
    """Multi-label soft margin loss of one batch: images (B, 3, S, S), tags (B, C)."""
    x, y = batch
    loss = F.multilabel_soft_margin_loss(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
    return loss, {}


@torch.no_grad()
def classification_metrics(model, dataset, device, limit: int = VAL_IMAGES, *, max_long_side: int = 0) -> dict:
    """Validation loss and mAP (%) over up to ``limit`` images at full size (shrunk to ``max_long_side`` when
    larger), one image at a time."""
    model.eval()
    names = dataset.names[:limit]
    logits, tags = [], []
    for name in names:
        x = normalize_image(shrink_image(dataset.load_image(name), max_long_side), model.backbone.mean,
                            model.backbone.std)
        logits.append(model(x.unsqueeze(0).to(device))[0].float().cpu())
        tags.append(torch.from_numpy(dataset.load_labels(name)))
    logits, tags = torch.stack(logits), torch.stack(tags)
    loss = F.multilabel_soft_margin_loss(logits, tags).item()
    aps = [average_precision(logits[:, c].numpy(), tags[:, c].numpy() > 0)
           for c in range(tags.shape[1]) if tags[:, c].any()]
    return {"val_loss": loss, "map": 100.0 * float(np.mean(aps)) if aps else float("nan")}


def run(ctx) -> dict:
    """Train the classifier into ``classifier/`` (resumes from its ``last.pt``), or adopt ``cam.checkpoint``."""
    cfg = ctx.cfg.cam
    ds = ctx.train_set
    if cfg.checkpoint:
        import dataclasses

        model = build_classifier(dataclasses.replace(cfg, pretrained=""), ds.num_classes).to(ctx.device)
        summary = use_given_checkpoint(ctx, model, cfg.checkpoint)
        if ctx.is_main and len(ctx.val_set):
            metrics = classification_metrics(model, ctx.val_set, ctx.device, max_long_side=cfg.max_long_side)
            write_json(ctx.layout.stage_metrics(ctx.stage), metrics)
            summary["map"] = round(metrics["map"], 2)
        return summary
    model = build_classifier(cfg, ds.num_classes)
    data = ClassificationSet(ds, TrainTransform("cls", cfg, model.backbone.mean, model.backbone.std),
                             seed=ctx.cfg.runtime.seed)
    val = ctx.val_set
    validate = (functools.partial(classification_metrics, dataset=val, device=ctx.device,
                                  max_long_side=cfg.max_long_side) if len(val) else None)
    result = train_network(ctx, model, cfg, data, classification_loss, validate=validate)
    summary = {"loss": round(result["final_loss"], 4)}
    if ctx.is_main and validate is not None:
        metrics = validate(model)
        write_json(ctx.layout.stage_metrics(ctx.stage), metrics)
        summary["map"] = round(metrics["map"], 2)
    return summary
