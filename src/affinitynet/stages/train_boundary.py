"""train_boundary: learn IRN's class boundary map from the inter-pixel relation labels (docs/irn.md).

Each batch: rescale, flip and crop image and relation label map jointly, take each stride-4 cell's label
(``cell_labels``), label every pair within ``boundary.radius`` as background-positive / foreground-positive /
negative, turn the predicted boundary map into pair affinities (1 - the largest boundary value on the path
between the two cells, ``path_max_affinity``) and minimise bg/4 + fg/4 + neg/2 of -log a, -log a,
-log(1 - a): IRN's edge loss. The backbone is frozen. After each epoch the average precision of the walk's
pair affinities on held-out images (pairs labelled from their masks) says how well the boundaries separate
same-class from different-class pairs.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import normalize_image
from ..data.transforms import LabelMapSet, TrainTransform
from ..io import load_label_png, write_json
from ..models import build_boundary
from ..models.boundary import STRIDE
from ..global_batch import MeanLoss
from ..ops.affinity import AFFINITY_TERMS, AFFINITY_WEIGHTS, affinity_counts, affinity_sums, pair_ap
from ..ops.bound import shrink_image, shrink_mask
from ..ops.pairs import pair_indices, pair_labels, reference_subset
from ..ops.paths import path_max_affinity
from ..ops.relations import cell_labels
from .common import build_pretrained, require, stride_grid, train_network, use_given_checkpoint

VAL_IMAGES = 200  # held-out images scored after each epoch


def _ir_label(layout, name: str) -> np.ndarray:
    return load_label_png(layout.ir_label(name))


class BoundaryLoss(MeanLoss):
    """IRN's edge loss over a batch: images (B, 3, S, S), relation labels (B, S/4, S/4) on the stride-4 grid, 255 ignore.

    Pair affinities are 1 - the largest boundary value on the path between the two cells; bg/4 + fg/4 + neg/2
    of the means of -log a, -log a, -log(1 - a), each over its pairs in the whole batch.
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
        logits = model(x.to(device, non_blocking=True))
        grid = grid.to(device, non_blocking=True)
        h, w = logits.shape[-2:]
        if grid.shape[-2:] != (h, w):
            raise ValueError(f"labels on a {tuple(grid.shape[-2:])} grid, the boundary map on {(h, w)}")
        aff = path_max_affinity(torch.sigmoid(logits.float()), self.radius)
        if self.reference_pairs:
            aff = aff[:, reference_subset(h, w, self.radius, device=aff.device)]
        return affinity_sums(aff, *self.pair_masks(grid)), {}


@torch.no_grad()
def boundary_ap(model, dataset, device, radius: int, limit: int = VAL_IMAGES, *, max_long_side: int = 0,
                flip: bool = True, min_size: int = 0) -> dict:
    """AP (%) of boundary affinities for same-label vs different-label pairs, labels from the masks' cell centres.

    Images (and masks) larger than ``max_long_side`` are shrunk first, as the random walk shrinks them.
    """
    model.eval()
    per_image = []
    for name in dataset.mask_names()[:limit]:
        image = shrink_image(dataset.load_image(name), max_long_side)
        h, w = image.shape[:2]
        _, pad = stride_grid(h, w, STRIDE)
        x = F.pad(normalize_image(image, model.backbone.mean, model.backbone.std), pad).unsqueeze(0)
        edge = model.boundary_map(x.to(device), flip=flip, min_size=min_size)
        gh, gw = edge.shape[-2:]
        mask = torch.from_numpy(shrink_mask(dataset.load_mask(name), (h, w)).astype(np.int64))
        grid = cell_labels(mask, STRIDE)
        bg_pos, fg_pos, neg = pair_labels(grid.to(device), *pair_indices(gh, gw, radius, device=device))
        per_image.append((path_max_affinity(edge[:, 0], radius), bg_pos, fg_pos, neg))
    return pair_ap(per_image)


def build_network(ctx):
    """The boundary network with ``boundary.pretrained`` in its backbone (``classifier``: this run's classifier's)."""
    return build_pretrained(ctx, ctx.cfg.boundary, "boundary", build_boundary)


def run(ctx) -> dict:
    """Train the boundary network into ``boundary/`` (resumes from ``last.pt``), or adopt ``boundary.checkpoint``."""
    cfg = ctx.cfg.boundary
    ds = ctx.train_set
    val = ctx.val_set
    walk = ctx.cfg.random_walk  # validation: the walk's radius, images shrunk as the walk shrinks them
    validate = None
    if val.has_masks and len(val):
        validate = functools.partial(boundary_ap, dataset=val, device=ctx.device, radius=walk.radius,
                                     max_long_side=walk.max_long_side, flip=cfg.test_flip,
                                     min_size=cfg.crop_size if cfg.test_pad else 0)
    if cfg.checkpoint:
        import dataclasses

        model = build_boundary(dataclasses.replace(cfg, pretrained="")).to(ctx.device)
        summary = use_given_checkpoint(ctx, model, cfg.checkpoint)
    else:
        layout = ctx.layout
        for name in ds.names[:1]:
            require(layout.ir_label(name), "make_ir_labels")
        model = build_network(ctx)
        transform = TrainTransform("aff", cfg, model.backbone.mean, model.backbone.std)
        data = LabelMapSet(ds, ds.names, functools.partial(_ir_label, layout), transform, seed=ctx.cfg.runtime.seed,
                           reduce=functools.partial(cell_labels, stride=STRIDE))
        loss_fn = BoundaryLoss(cfg.radius, cfg.reference_pairs)
        result = train_network(ctx, model, cfg, data, loss_fn, validate=validate)
        summary = {"loss": round(result["final_loss"], 4)}
    if ctx.is_main and validate is not None:
        metrics = validate(model)
        write_json(ctx.layout.stage_metrics(ctx.stage), metrics)
        summary["ap"] = round(metrics["ap"], 2)
    return summary
