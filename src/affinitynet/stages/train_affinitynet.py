"""train_affinitynet: learn pixel affinities from the confident regions.

Each batch: augment image and affinity label map jointly, crop, pool the labels to the embedding's grid
(``pool_label_map``, in the data loader; with ``affinity_labels.grid_labels: scores`` the CRF score stacks are cropped with
the image and averaged per cell before the argmax, ``grid_labels_from_scores``), label every pair within
the radius as background-positive / foreground-positive / negative (all pairs, or the release's
border-trimmed set with ``affinitynet.reference_pairs``), and minimise bg/4 + fg/4 + neg/2 of -log a,
-log a, -log(1 - a). After each epoch the
average precision of the predicted affinities on held-out images (pairs labelled from their masks)
says how well they separate same-class from different-class pairs.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import LabelMapSet, TrainTransform
from ..io import load_label_png, write_json
from ..models import build_affinitynet
from ..global_batch import MeanLoss
from ..ops.affinity import (AFFINITY_TERMS, AFFINITY_WEIGHTS, affinity_counts, affinity_sums,
                             grid_pair_affinity, pair_ap)
from ..ops.bound import shrink_image, shrink_mask
from ..conventions import STRIDE, normalize_image
from ..ops.confident import grid_labels_from_scores, pool_label_map
from ..ops.pairs import pair_indices, pair_labels, reference_subset
from .common import require, stride_grid, train_network, use_given_checkpoint
from .make_affinity_labels import load_scores

VAL_IMAGES = 200  # held-out images scored after each epoch


def _affinity_label(layout, name: str) -> np.ndarray:
    return load_label_png(layout.affinity_label(name))


def _affinity_scores(layout, name: str) -> np.ndarray:
    return load_scores(layout.affinity_scores(name))


class AffinityLoss(MeanLoss):
    """The AffinityNet loss over a batch: images (B, 3, S, S), labels (B, h, w) on the feature grid (255 ignore).

    Pairs within ``radius`` (all of them, or the release's border-trimmed set with ``reference_pairs``);
    bg/4 + fg/4 + neg/2 of the means of -log a, -log a, -log(1 - a), each over its pairs in the whole batch.
    """

    terms, weights = AFFINITY_TERMS, AFFINITY_WEIGHTS

    def __init__(self, radius: int, reference_pairs: bool = False):
        self.radius, self.reference_pairs = radius, reference_pairs

    def pair_masks(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, h, w) labels -> the (B, P) bg-positive, fg-positive and negative masks of the pair set."""
        h, w = grid.shape[-2:]
        return pair_labels(grid, *pair_indices(h, w, self.radius, reference=self.reference_pairs, device=grid.device))

    def counts(self, batch, device) -> torch.Tensor:
        """(3,) numbers of bg-positive, fg-positive and negative pairs in the batch."""
        return affinity_counts(*self.pair_masks(batch[1].to(device, non_blocking=True)))

    def sums(self, model, batch, device) -> tuple[torch.Tensor, dict]:
        """(3,) sums of the three terms over the batch's pairs."""
        x, grid = batch
        feat = model(x.to(device, non_blocking=True))
        grid = grid.to(device, non_blocking=True)
        if grid.shape[-2:] != feat.shape[-2:]:
            raise ValueError(f"labels on a {tuple(grid.shape[-2:])} grid, the embedding on {tuple(feat.shape[-2:])}")
        aff = grid_pair_affinity(feat, self.radius)
        if self.reference_pairs:
            h, w = feat.shape[-2:]
            aff = aff[:, reference_subset(h, w, self.radius, device=aff.device)]
        return affinity_sums(aff, *self.pair_masks(grid)), {}


@torch.no_grad()
def affinity_ap(model, dataset, device, radius: int, limit: int = VAL_IMAGES, *, max_long_side: int = 0,
                stride: int = STRIDE) -> dict:
    """AP (%) of predicted affinities for same-label vs different-label pairs, labels pooled from the masks.

    Images (and masks) larger than ``max_long_side`` are shrunk first, as the random walk shrinks them.
    """
    model.eval()
    per_image = []
    for name in dataset.mask_names()[:limit]:
        image = shrink_image(dataset.load_image(name), max_long_side)
        h, w = image.shape[:2]
        (gh, gw), pad = stride_grid(h, w, stride)
        x = F.pad(normalize_image(image, model.backbone.mean, model.backbone.std), pad).unsqueeze(0)
        feat = model(x.to(device))
        mask = torch.from_numpy(np.pad(shrink_mask(dataset.load_mask(name), (h, w)), ((0, pad[3]), (0, pad[1])),
                                       constant_values=255))
        grid = pool_label_map(mask.long(), dataset.num_classes + 1, stride)
        idx_from, idx_to = pair_indices(gh, gw, radius, device=feat.device)
        bg_pos, fg_pos, neg = pair_labels(grid.to(feat.device), idx_from, idx_to)
        per_image.append((grid_pair_affinity(feat, radius), bg_pos, fg_pos, neg))
    return pair_ap(per_image)


def run(ctx) -> dict:
    """Train AffinityNet into ``affinitynet/`` (resumes from its ``last.pt``), or adopt ``affinitynet.checkpoint``."""
    cfg = ctx.cfg.affinitynet
    ds = ctx.train_set
    bound = ctx.cfg.random_walk.max_long_side  # validation images: shrunk as the walk shrinks them
    if cfg.checkpoint:
        import dataclasses

        model = build_affinitynet(dataclasses.replace(cfg, pretrained="")).to(ctx.device)
        summary = use_given_checkpoint(ctx, model, cfg.checkpoint)
        val = ctx.val_set
        if ctx.is_main and val.has_masks and len(val):
            metrics = affinity_ap(model, val, ctx.device, cfg.radius, max_long_side=bound, stride=model.stride)
            write_json(ctx.layout.stage_metrics(ctx.stage), metrics)
            summary["ap"] = round(metrics["ap"], 2)
        return summary
    from_scores = ctx.cfg.affinity_labels.grid_labels == "scores"
    layout = ctx.layout
    for name in ds.names[:1]:
        require(layout.affinity_scores(name) if from_scores else layout.affinity_label(name), "make_affinity_labels")
    model = build_affinitynet(cfg)
    transform = TrainTransform("aff", cfg, model.backbone.mean, model.backbone.std)
    # the labels reach the loss on the feature grid: the CRF scores averaged per cell, or the label map's vote
    if from_scores:
        data = LabelMapSet(ds, ds.names, functools.partial(_affinity_scores, layout), transform,
                           seed=ctx.cfg.runtime.seed, reduce=functools.partial(grid_labels_from_scores, stride=model.stride))
    else:
        data = LabelMapSet(ds, ds.names, functools.partial(_affinity_label, layout), transform,
                           seed=ctx.cfg.runtime.seed,
                           reduce=functools.partial(pool_label_map, num_classes=ds.num_classes + 1, stride=model.stride))
    loss_fn = AffinityLoss(cfg.radius, cfg.reference_pairs)
    val = ctx.val_set
    validate = (functools.partial(affinity_ap, dataset=val, device=ctx.device, radius=cfg.radius, max_long_side=bound,
                                  stride=model.stride)
                if val.has_masks and len(val) else None)
    result = train_network(ctx, model, cfg, data, loss_fn, validate=validate)
    summary = {"loss": round(result["final_loss"], 4)}
    if ctx.is_main and validate is not None:
        metrics = validate(model)
        write_json(layout.stage_metrics(ctx.stage), metrics)
        summary["ap"] = round(metrics["ap"], 2)
    return summary
