"""``random_walk.choose_alpha``: the walk chooses its background power alpha label-free, image by image and then
over the training set, by the criterion of ``affinitynet calibrate`` (docs/calibration.md).

Pass 1 walks every candidate of each image once: the walk is linear in its scores, so the backgrounds
(1 - max CAM)^alpha of all candidates walk beside the CAMs in one propagation, and candidate t's walk is its
background with the walked CAMs. Each image's file (``random_walk/candidates/``) keeps those walked scores and each
candidate's border affinity: the mean affinity of the grid pairs that its labels put in different regions. The
candidate with the lowest mean over the images is chosen (``random_walk/alpha.json``, with the share of bootstrap
resamples of the images that choose it too). Pass 2 writes the chosen candidate's scores and labels, which are those
of a walk at that alpha; pass 1's files then go. Both passes resume image by image.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..dist import barrier
from ..errors import DataError
from ..io import load_cam, load_npz, read_json, save_label_png, write_json
from ..layout import RunLayout
from ..ops.cam import background_score
from ..ops.criteria import boundary_affinity, choose_by_cut, grid_labels, stability, walk_graph
from ..ops.randomwalk import STENCIL_MAX_CHANNELS, propagate_with_affinity
from .random_walk import (WalkGrid, at_scale, Walker, affinities, grid_to_image, save_affinity, save_walk,
                          walk_label)


def choice_path(layout: RunLayout):
    """``random_walk/alpha.json``: the chosen alpha, every candidate's criterion, how many images chose."""
    return layout.folder("random_walk") / "alpha.json"


def walk_settings(cfg, layout: RunLayout):
    """The run's ``random_walk`` section as its walk used it: with ``choose_alpha``, ``alpha`` is the chosen value
    (``random_walk/alpha.json``) once the walk has chosen it."""
    rw = cfg.random_walk
    path = choice_path(layout)
    if rw.choose_alpha and rw.background == "power" and path.is_file():
        return dataclasses.replace(rw, alpha=float(read_json(path)["alpha"]))
    return rw


def walk_candidates(g: WalkGrid, maps: np.ndarray, aff: torch.Tensor, cfg, device, alphas,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """(C', H, W) CAMs, (1, P) affinities -> (1, T + C', gh, gw) walked [(1 - max CAM)^alpha for each of the T
    ``alphas``, CAMs]: the walk is linear in its scores, so candidate t's walk is channels [t, T:] (as
    ``walk_from_affinity`` at that alpha). Walked in groups of at most ``STENCIL_MAX_CHANNELS`` channels."""
    cams = torch.from_numpy(maps)
    dtype = cams.dtype if cams.shape[0] else torch.float32
    stack = torch.cat([torch.stack([background_score(cams, a).to(dtype) for a in alphas]), cams.to(dtype)])
    with torch.inference_mode():
        scores = F.avg_pool2d(at_scale(g, stack), g.stride, g.stride).to(device)
        if weight is not None:
            scores = scores * weight.to(device, scores.dtype)
        groups = [scores[:, i:i + STENCIL_MAX_CHANNELS] for i in range(0, scores.shape[1], STENCIL_MAX_CHANNELS)]
        out = torch.cat([propagate_with_affinity(x.contiguous(), aff.to(device), *g.grid, cfg.radius, beta=cfg.beta,
                                                 logt=cfg.logt, reference_pairs=cfg.reference_pairs)
                         for x in groups], dim=1)
    return out.cpu()


def candidate(out: torch.Tensor, t: int, count: int) -> torch.Tensor:
    """Candidate ``t`` of ``count`` from ``walk_candidates``' output: (1, 1 + C', gh, gw) as the walk at its alpha."""
    return torch.cat([out[:, t:t + 1], out[:, count:]], dim=1)


def border_affinities(g: WalkGrid, out: torch.Tensor, keys: np.ndarray, aff: torch.Tensor, count: int,
                      cfg) -> np.ndarray:
    """(T,) the mean affinity of the grid pairs that each candidate's labels put in different regions (lower: the
    labels' borders follow the network's boundaries better; ``ops.criteria.boundary_affinity``)."""
    idx_from, idx_to, weights = walk_graph(aff, g.grid, cfg.radius, cfg.reference_pairs)
    return np.array([boundary_affinity(grid_labels(candidate(out, t, count), keys), weights, idx_from, idx_to)
                     for t in range(count)])


@dataclass
class _CandidateWalker(Walker):
    """Pass 1 of ``choose_alpha``: every candidate alpha's walk of one image and its border affinity."""

    def __call__(self, name: str) -> None:
        image = self.dataset.load_image(name)
        keys, maps = load_cam(self.layout.cam(name))
        cfg = self.cfg.random_walk
        alphas = cfg.alpha_candidates
        g, aff, weight = affinities(self.source(), image, cfg, self.device)
        out = walk_candidates(g, maps, aff, cfg, self.device, alphas, weight)
        if cfg.cache_affinity:
            save_affinity(self.layout.walk_affinity(name), g, aff, weight)
        save_walk(self.layout.walk_candidates(name), g, keys, out, alphas=np.asarray(alphas, dtype=np.float64),
                  border=border_affinities(g, out, keys, aff, len(alphas), cfg))


@dataclass
class _ChosenWalker:
    """Pass 2 of ``choose_alpha``: the chosen candidate's scores and pseudo label of one image."""

    dataset: object
    layout: RunLayout
    crf: bool
    index: int

    def __call__(self, name: str) -> None:
        z = load_npz(self.layout.walk_candidates(name))
        keys, count = z["keys"].astype(np.int64), len(z["alphas"])
        out = candidate(torch.from_numpy(z["scores"]).unsqueeze(0), self.index, count)
        g = WalkGrid(tuple(z["size"].tolist()), tuple(z["scaled"].tolist()), tuple(out.shape[-2:]), int(z["stride"]),
                     (0, 0, 0, 0), False)  # what saving and upsampling read; the padding is not needed again
        save_walk(self.layout.walk_scores(name), g, keys, out)
        scores = grid_to_image(out, g.size, g.scaled, g.stride)
        image = self.dataset.load_image(name) if self.crf else None  # only the CRF reads the image
        save_label_png(self.layout.pseudo_label(name), walk_label(scores, keys, image, self.crf))


def choose_alpha(layout: RunLayout, names, alphas, seed: int) -> dict:
    """The candidate with the lowest mean border affinity over ``names`` (their pass-1 files), with the share of
    bootstrap resamples of the images that choose it too."""
    border = []
    for name in names:
        z = load_npz(layout.walk_candidates(name), keys=("alphas", "border"))  # not the walked scores
        if z["alphas"].tolist() != list(alphas):
            raise DataError(layout.walk_candidates(name), f"made for candidates {z['alphas'].tolist()}, the config "
                                                          f"gives {list(alphas)}: delete random_walk/ and re-run")
        border.append(z["border"])
    border = np.stack(border)
    best = choose_by_cut(border)
    return {"alpha": float(alphas[best]), "index": best, "candidates": [float(a) for a in alphas],
            "border_affinity": [round(float(b), 6) for b in border.mean(0)], "images": len(border),
            "stability": round(stability(border, choose_by_cut, best, seed), 3),
            "criterion": "mean affinity of the grid pairs across the labels' borders (lower is better)"}


def run_choosing(ctx, workers: int) -> tuple[dict, dict]:
    """``choose_alpha``: walk every candidate (pass 1), choose, write the chosen labels (pass 2), drop pass 1's files."""
    ds, layout, rw = ctx.train_set, ctx.layout, ctx.cfg.random_walk
    path = choice_path(layout)
    if path.is_file() and all(layout.pseudo_label(n).is_file() for n in ds.names):
        choice, counts = read_json(path), {"done": 0}  # finished before; only the stage record was missing
    else:
        ctx.map_images(ds.names, layout.walk_candidates, _CandidateWalker(ds, layout, ctx.cfg, ctx.device),
                       desc="random_walk (every alpha)", workers=workers, image_of=ds.image_path,
                       memory_key="random_walk.max_long_side")
        choice = choose_alpha(layout, ds.names, rw.alpha_candidates, ctx.cfg.runtime.seed)
        if ctx.is_main:
            write_json(path, choice)
            ctx.log.info(f"  random_walk: alpha {choice['alpha']:g} chosen label-free ({choice['stability']:.0%} of "
                         f"the bootstrap resamples agree)")
        counts = ctx.map_images(ds.names, layout.pseudo_label, _ChosenWalker(ds, layout, rw.crf, choice["index"]),
                                desc=f"random_walk (alpha {choice['alpha']:g})", workers=workers)
    barrier()
    if ctx.is_main:
        shutil.rmtree(layout.folder("random_walk") / "candidates", ignore_errors=True)
    return choice, counts
