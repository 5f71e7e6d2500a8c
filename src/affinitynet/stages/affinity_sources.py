"""Where the random walk's pair affinities come from: one small interface, implementations chosen from a dict.

``random_walk`` asks ``AFFINITY_SOURCES[random_walk.affinity]`` for the affinities of every pair of cells
within the radius on the image's feature grid (``pair_indices`` order) and hands them to the one exact
sparse walk. Two exist: AffinityNet's embedding (stride 8) and IRN's class-boundary map (stride 4, which also
weights the CAMs before the walk; docs/irn.md). A new source is one subclass here plus its entry in
``AFFINITY_SOURCES``; it says on which grid it works through ``stride``. Sources are built inside the
walk's worker processes, so they take plain, picklable arguments (config, run layout, device).
"""
from __future__ import annotations

import torch

from ..conventions import STRIDE
from ..errors import ConfigError
from ..models import build_affinitynet, build_boundary
from ..models.boundary import STRIDE as BOUNDARY_STRIDE
from ..ops.affinity import radius_pair_affinity
from ..ops.pairs import reference_subset
from ..ops.paths import path_max_affinity
from ..accel import AccelOptions
from .common import build_trained


class AffinitySource:
    """Pair affinities of one image on a grid of ``stride`` pixels per cell."""

    stride: int = STRIDE

    def __init__(self, cfg, layout, device: torch.device):
        self.cfg, self.layout, self.device = cfg, layout, device

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The image normalisation its network expects."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, radius: int, reference: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, 3, S*h, S*w) normalised image, zero-padded to the grid -> (1, P) affinities of pair_indices(h, w, radius)
        and a (1, 1, h, w) weight of the CAMs before the walk (None: unweighted)."""
        raise NotImplementedError


class AffinityNetAffinity(AffinitySource):
    """AffinityNet's embedding: a_ij = exp(-mean |f_i - f_j|) (Ahn & Kwak, CVPR 2018)."""

    def __init__(self, cfg, layout, device):
        super().__init__(cfg, layout, device)
        self.model = build_trained(build_affinitynet, cfg.affinitynet, path=layout.network("train_affinitynet"),
                                   device=device, stage="train_affinitynet",
                                   accel=AccelOptions.from_runtime(cfg.runtime))
        self.stride = getattr(self.model, "stride", cfg.affinitynet.embed_stride or cfg.affinitynet.output_stride)

    def mean_std(self):
        return self.model.backbone.mean, self.model.backbone.std

    def __call__(self, x, radius, reference):
        with torch.inference_mode():
            return radius_pair_affinity(self.model(x.to(self.device)), radius, reference=reference), None


class BoundaryAffinity(AffinitySource):
    """IRN's class boundary map B on the stride-4 grid: a_ij = 1 - max B on the path from i to j, and the CAMs
    weighted by 1 - B before the walk (Ahn, Cho & Kwak, CVPR 2019; docs/irn.md)."""

    stride = BOUNDARY_STRIDE

    def __init__(self, cfg, layout, device):
        super().__init__(cfg, layout, device)
        self.model = build_trained(build_boundary, cfg.boundary, path=layout.network("train_boundary"),
                                   device=device, stage="train_boundary",
                                   accel=AccelOptions.from_runtime(cfg.runtime))
        self.min_size = cfg.boundary.crop_size if cfg.boundary.test_pad else 0

    def mean_std(self):
        return self.model.backbone.mean, self.model.backbone.std

    def __call__(self, x, radius, reference):
        with torch.inference_mode():
            edge = self.model.boundary_map(x.to(self.device), flip=self.cfg.boundary.test_flip,
                                           min_size=self.min_size).float()
            aff = path_max_affinity(edge, radius)
            if reference:
                h, w = edge.shape[-2:]
                aff = aff[:, reference_subset(h, w, radius, device=aff.device)]
            return aff, 1.0 - edge


AFFINITY_SOURCES = {"affinitynet": AffinityNetAffinity, "boundary": BoundaryAffinity}


def affinity_source(cfg, layout, device) -> AffinitySource:
    """The configured source (``random_walk.affinity``), built for this process."""
    name = cfg.random_walk.affinity
    if name not in AFFINITY_SOURCES:
        raise ConfigError(f"unknown random_walk.affinity '{name}' (valid: {', '.join(AFFINITY_SOURCES)})")
    return AFFINITY_SOURCES[name](cfg, layout, device)
