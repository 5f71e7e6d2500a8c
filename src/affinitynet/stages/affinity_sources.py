"""Where the random walk's pair affinities come from: one small interface, implementations chosen from a dict.

``random_walk`` asks ``AFFINITY_SOURCES[random_walk.affinity]`` for the affinities of every pair of cells
within the radius on the image's feature grid (``pair_indices`` order) and hands them to the one exact
sparse walk. A new source (e.g. affinities from a class-boundary map) is one subclass here plus its entry
in ``AFFINITY_SOURCES``; it says on which grid it works through ``stride``. Sources are built inside the
walk's worker processes, so they take plain, picklable arguments (config, run layout, device).
"""
from __future__ import annotations

import torch

from ..conventions import STRIDE
from ..errors import ConfigError
from ..models import build_affinitynet
from ..ops.affinity import pair_affinity
from ..ops.pairs import pair_indices
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

    def __call__(self, x: torch.Tensor, radius: int, reference: bool) -> torch.Tensor:
        """(1, 3, S*h, S*w) normalised image, zero-padded to the grid -> (1, P) affinities of pair_indices(h, w, radius)."""
        raise NotImplementedError


class AffinityNetAffinity(AffinitySource):
    """AffinityNet's embedding: a_ij = exp(-mean |f_i - f_j|) (Ahn & Kwak, CVPR 2018)."""

    def __init__(self, cfg, layout, device):
        super().__init__(cfg, layout, device)
        self.model = build_trained(build_affinitynet, cfg.affinitynet, path=layout.network("train_affinitynet"),
                                   device=device, stage="train_affinitynet",
                                   accel=AccelOptions.from_runtime(cfg.runtime))

    def mean_std(self):
        return self.model.backbone.mean, self.model.backbone.std

    def __call__(self, x, radius, reference):
        with torch.inference_mode():
            feat = self.model(x.to(self.device))
            h, w = feat.shape[-2:]
            return pair_affinity(feat, *pair_indices(h, w, radius, reference=reference, device=feat.device))


AFFINITY_SOURCES = {"affinitynet": AffinityNetAffinity}


def affinity_source(cfg, layout, device) -> AffinitySource:
    """The configured source (``random_walk.affinity``), built for this process."""
    name = cfg.random_walk.affinity
    if name not in AFFINITY_SOURCES:
        raise ConfigError(f"unknown random_walk.affinity '{name}' (valid: {', '.join(AFFINITY_SOURCES)})")
    return AFFINITY_SOURCES[name](cfg, layout, device)
