"""The label-free and mask-based choices of ``affinitynet calibrate`` (``commands/calibrate.py``): every candidate
value's labels of a run's training images from its saved files, with what the walk's graph says of each (the
criteria themselves are in ``ops/criteria.py``), agreement with the walk, and choosing by masks (docs/calibration.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError
from .io import load_cam, load_npz
from .ops.criteria import boundary_affinity, grid_labels, normalized_cut, walk_graph
from .ops.metrics import cam_labels, mean_iou

# ----------------------------------------------------------------------------- one image, every candidate

@dataclass
class Candidates:
    """One image's labels at every candidate value: label maps at image size, and what the walk's graph says of each."""

    labels: list  # (H, W) uint8 per value
    border: np.ndarray | None = None  # (T,) mean affinity of the pairs across the labels' borders (``graph``)
    cut: np.ndarray | None = None  # (T,) mean normalised cut (``cut``: a criterion tried, not calibrate's)


class Relabeller:
    """Labels of a run's training images at each value of one parameter, from the run's saved files."""

    def __init__(self, ctx, stage: str, param: str, values, *, graph: bool = False, cut: bool = False,
                 cut_beta: float | None = None, border_beta: float = 1.0):
        from .stages.affinity_sources import AFFINITY_SOURCES
        from .stages.walk_alpha import walk_settings

        self.ctx, self.stage, self.param, self.values = ctx, stage, param, list(values)
        self.graph, self.cut = graph or cut, cut
        self.rw = walk_settings(ctx.cfg, ctx.layout)  # with random_walk.choose_alpha: the alpha the walk chose
        self.cut_beta = self.rw.beta if cut_beta is None else cut_beta  # the graph's weights: the walk's A^beta
        self.border_beta = border_beta  # the border criterion reads the affinities themselves
        self.ds = ctx.train_set
        self._source = None
        self.computed = 0
        if self.rw.affinity not in AFFINITY_SOURCES:
            raise ConfigError(f"unknown random_walk.affinity '{self.rw.affinity}'")
        if (stage, param) == ("random_walk", "alpha") and self.rw.background != "power":
            raise ConfigError(f"--param alpha: this run's random_walk.background is {self.rw.background}, which does "
                              f"not use alpha; calibrate bg_threshold")
        if (stage, param) == ("random_walk", "bg_threshold") and self.rw.background != "threshold":
            raise ConfigError(f"--param bg_threshold: this run's random_walk.background is {self.rw.background}; its "
                              f"background comes from alpha (calibrate alpha)")

    def _affinity(self, name: str, image: np.ndarray):
        """(grid, (1, P) affinities, weight or None): the walk's cache, else the affinity source once."""
        from .stages.affinity_sources import affinity_source
        from .stages.random_walk import affinities, load_affinity, walk_grid

        cached = self.ctx.layout.walk_affinity(name)
        if cached.is_file():
            g = walk_grid(*image.shape[:2], self.rw, int(load_npz(cached)["stride"]))
            return (g, *load_affinity(cached, g))
        if self._source is None:
            self._source = affinity_source(self.ctx.cfg, self.ctx.layout, self.ctx.device)
        self.computed += 1
        return affinities(self._source, image, self.rw, self.ctx.device)

    def __call__(self, name: str) -> Candidates:
        from .stages.random_walk import (grid_scores, grid_to_image, threshold_background, walk_from_affinity,
                                          walk_label)

        image = self.ds.load_image(name)
        keys, maps = load_cam(self.ctx.layout.cam(name))
        need_affinity = self.graph or self.stage == "random_walk" and self.param == "alpha"
        g = aff = weight = None
        if need_affinity:
            g, aff, weight = self._affinity(name, image)
        labels, grids = [], []
        if self.stage == "cam":
            pooled = grid_scores(g, maps, 1.0, "threshold") if g is not None else None
            for t in self.values:
                labels.append(cam_labels(maps, keys, t))
                if pooled is not None:
                    stack = pooled.clone()
                    stack[:, 0] = t
                    grids.append(grid_labels(stack, keys))
        else:
            if self.param == "alpha":
                outs = [walk_from_affinity(g, maps, aff, dataclasses.replace(self.rw, alpha=v), self.ctx.device, weight)
                        for v in self.values]
            else:
                from .stages.common import require
                from .stages.random_walk import walk_grid

                z = load_npz(require(self.ctx.layout.walk_scores(name), "random_walk"))
                saved = torch.from_numpy(z["scores"]).unsqueeze(0)
                sg = walk_grid(*z["size"].tolist(), self.rw, int(z["stride"]))
                g = g or sg
                outs = [threshold_background(sg, saved, v) for v in self.values]
            for out in outs:
                scores = grid_to_image(out, g.size, g.scaled, g.stride)
                labels.append(walk_label(scores, keys, image, self.rw.crf))
                grids.append(grid_labels(out, keys))
        if not self.graph:
            return Candidates(labels)
        idx_from, idx_to, raw = walk_graph(aff, g.grid, self.rw.radius, self.rw.reference_pairs)
        weights = raw ** self.border_beta
        border = np.array([boundary_affinity(lab, weights, idx_from, idx_to) for lab in grids])
        cut = None
        if self.cut:
            weights, regions = raw ** self.cut_beta, [0] + [int(k) for k in keys]
            cut = np.array([normalized_cut(lab, weights, idx_from, idx_to, regions) for lab in grids])
        return Candidates(labels, border, cut)


# ----------------------------------------------------------------------------- choosing

def choose_by_masks(conf: np.ndarray) -> int:
    """(n, T, K, K + 1) per-image confusions -> index of the value with the best mIoU over the n images."""
    total = conf.sum(0)
    return int(np.argmax([mean_iou(c) for c in total]))


def walk_param(ctx) -> str:
    """The walk's background setting of this run: ``alpha`` (power background) or ``bg_threshold`` (IRN's)."""
    return "alpha" if ctx.cfg.random_walk.background == "power" else "bg_threshold"


def agreement(ctx, values, names, walk_value, *, progress_desc: str) -> tuple[np.ndarray, int]:
    """(n, T, K, K + 1) confusions of the CAM labels at each threshold against the walk's labels at ``walk_value`` of
    its background setting (``walk_param``): the walk's labels stand in for the masks. No mask is read. Also the
    number of images whose affinities had to be computed (no cache)."""
    from .ops.metrics import confusion_matrix

    cams = Relabeller(ctx, "cam", "bg_threshold", values)
    walk = Relabeller(ctx, "random_walk", walk_param(ctx), [walk_value])
    k = cams.ds.num_classes + 1
    out = []
    for name in ctx.progress(list(names), desc=progress_desc):
        ref = walk(name).labels[0]
        out.append(np.stack([confusion_matrix(lab, ref, k) for lab in cams(name).labels]))
    return np.stack(out), walk.computed


def evaluate(ctx, stage: str, param: str, values, names, *, masked=(), graph: bool = False, cut: bool = False,
             progress_desc: str, cut_beta: float | None = None, border_beta: float = 1.0):
    """Per-image confusions (for the ``masked`` names) and, with ``graph``, border affinities (and with ``cut`` the
    normalised cuts) of every value over ``names``.

    Returns (conf (n_masked, T, K, K + 1) or None, border (n, T) or None, cut (n, T) or None, images whose
    affinities were computed).
    """
    from .ops.metrics import confusion_matrix

    relabel = Relabeller(ctx, stage, param, values, graph=graph, cut=cut, cut_beta=cut_beta, border_beta=border_beta)
    ds = relabel.ds
    k = ds.num_classes + 1
    masked = set(masked)
    confs, borders, cuts = [], [], []
    for name in ctx.progress(list(names), desc=progress_desc):
        got = relabel(name)
        if name in masked:
            gt = ds.load_mask(name)
            confs.append(np.stack([confusion_matrix(lab, gt, k) for lab in got.labels]))
        if got.border is not None:
            borders.append(got.border)
        if got.cut is not None:
            cuts.append(got.cut)

    def stacked(rows):
        return np.stack(rows) if rows else None

    return stacked(confs), stacked(borders), stacked(cuts), relabel.computed
