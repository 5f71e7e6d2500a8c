"""The pipeline's stages, in order: what each reads from the config and the run directory, and what it writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class StageSpec:
    """One pipeline step: its config inputs, upstream stages and outputs (paths relative to the run directory)."""

    name: str
    help: str
    sections: tuple[str, ...]  # config sections (or section.key entries) its outputs depend on
    upstream: tuple[str, ...] = ()  # stages whose outputs it reads
    outputs: tuple[str, ...] = ()  # must exist for the stage to count as finished
    exclude: tuple[str, ...] = ()  # section.key entries that do not change its outputs
    files: Callable | None = None  # config -> paths of input files whose bytes (sha256) enter the stage's identity
    needed: Callable | None = None  # config -> False when the stage has nothing to do (e.g. a given checkpoint)


def _given(section: str):
    """The stage's input file: ``section.checkpoint`` when set (a trained network used instead of training)."""
    return lambda cfg: tuple(p for p in (cfg.section(section).checkpoint,) if p)


# make_cam / segment settings only change inference, never the trained networks.
_CAM_INFERENCE = ("cam.scales", "cam.flip", "cam.batch_scales", "cam.overlays")
_SEG_INFERENCE = ("segmentation.test_scales", "segmentation.test_flip", "segmentation.crf", "segmentation.split")
_WORKERS = ("affinity_labels.workers", "random_walk.workers")
# Bounds on the networks' input size: like worker counts they never invalidate finished work, so lowering one
# after an out-of-memory error resumes the stage (an image within both bounds comes out the same either way).
_SIZE_BOUNDS = ("cam.max_long_side", "random_walk.max_long_side", "segmentation.test_max_long_side")

STAGES: tuple[StageSpec, ...] = (
    StageSpec("train_cam", "train the classification network (multi-label soft margin)",
              ("data", "cam"), outputs=("classifier/final.pt",), exclude=_CAM_INFERENCE + _SIZE_BOUNDS,
              files=_given("cam")),
    StageSpec("make_cam", "class activation maps of the training images (multi-scale + flip)",
              _CAM_INFERENCE, upstream=("train_cam",), outputs=("cam",)),
    StageSpec("make_affinity_labels", "confident fg/bg regions (dense CRF) -> affinity label maps",
              ("affinity_labels",), upstream=("make_cam",), outputs=("affinity_labels",), exclude=_WORKERS,
              needed=lambda cfg: not cfg.affinitynet.checkpoint),
    StageSpec("train_affinitynet", "train AffinityNet on pairs of confident pixels",
              ("affinitynet", "affinity_labels.grid_labels"), upstream=("make_affinity_labels",),
              outputs=("affinitynet/final.pt",), files=_given("affinitynet")),
    StageSpec("random_walk", "propagate CAMs with AffinityNet affinities -> pseudo labels",
              ("random_walk",), upstream=("make_cam", "train_affinitynet"), outputs=("pseudo_labels",),
              exclude=_WORKERS + _SIZE_BOUNDS),
    StageSpec("train_segmentation", "train the segmentation network on the pseudo labels",
              ("segmentation",), upstream=("train_cam", "random_walk"), outputs=("segmentation/final.pt",),
              exclude=_SEG_INFERENCE + _SIZE_BOUNDS),
    StageSpec("segment", "predict the evaluation split with the segmentation network",
              _SEG_INFERENCE, upstream=("train_segmentation",), outputs=("predictions",)),
    StageSpec("evaluate", "mIoU of every stage's labels -> metrics.json and report.html",
              ("eval",), upstream=("make_cam", "make_affinity_labels", "random_walk", "segment"),
              outputs=("metrics.json",)),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_spec(name: str) -> StageSpec:
    """The spec of a stage by name (ConfigError listing valid names otherwise)."""
    from .errors import ConfigError

    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage '{name}' (valid: {', '.join(STAGE_NAMES)})")
