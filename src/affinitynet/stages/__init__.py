"""The pipeline: its stages in order, each a plain spec that carries its ``run`` function.

A spec says what a stage reads (config sections, upstream stages, input files) and what it writes
(outputs relative to the run directory, in the folder ``affinitynet.layout`` names for it). The runner
and ``evaluate`` loop over ``STAGES``; the run table and the report loop over ``affinitynet.views``.
Neither names a stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..layout import FOLDERS, idle_stages
from . import (evaluate, make_affinity_labels, make_cam, make_ir_labels, random_walk, segment, train_affinitynet,
               train_boundary, train_cam, train_segmentation)


@dataclass(frozen=True)
class StageSpec:
    """One pipeline step."""

    name: str
    run: Callable  # run(ctx: StageContext) -> summary dict
    help: str
    sections: tuple[str, ...]  # config sections (or section.key entries) its outputs depend on
    upstream: tuple[str, ...] = ()  # stages whose outputs it reads
    outputs: tuple[str, ...] = ()  # must exist for the stage to count as finished
    exclude: tuple[str, ...] = ()  # section.key entries that do not change its outputs
    files: Callable | None = None  # config -> paths of input files whose bytes (sha256) enter its identity
    needed: Callable | None = None  # config -> False when it has nothing to do (e.g. a given checkpoint)
    trains: str = ""  # the config section of the network it trains (its batch_size, accumulation, ...)

    @property
    def folder(self) -> str:
        """Its folder in the run directory, which is also its key in ``metrics.json``."""
        return FOLDERS.get(self.name, "")


def _given(section: str):
    """The stage's input file: ``section.checkpoint`` when set (a trained network used instead of training)."""
    return lambda cfg: tuple(p for p in (cfg.section(section).checkpoint,) if p)


def _classifier_needed(cfg) -> bool:
    """train_cam is needed unless the CAMs come from elsewhere (``cam.method`` import_irn / import_psa)."""
    from .cam_sources import CAM_SOURCES

    source = CAM_SOURCES.get(cfg.cam.method)
    return source is None or source.needs_classifier


def _for_source(stage: str, unless_given: str = ""):
    """A stage of one affinity source (``layout.SOURCE_STAGES``): needed when ``random_walk.affinity`` is that source
    and, for the labels, when no trained network (``unless_given.checkpoint``) replaces the training they feed."""
    return lambda cfg: (stage not in idle_stages(cfg.random_walk.affinity)
                        and not (unless_given and cfg.section(unless_given).checkpoint))


def _out(stage: str, *rest: str) -> str:
    return "/".join((FOLDERS[stage], *rest))


# make_cam / segment settings only change inference, never the trained networks.
_CAM_INFERENCE = ("cam.method", "cam.import_dir", "cam.scales", "cam.flip", "cam.batch_scales", "cam.overlays")
_SEG_INFERENCE = ("segmentation.test_scales", "segmentation.test_flip", "segmentation.crf", "segmentation.split")
_WORKERS = ("affinity_labels.workers", "ir_labels.workers", "random_walk.workers")
_BOUNDARY_INFERENCE = ("boundary.test_flip", "boundary.test_pad")  # the walk's boundary maps, not the training
# Bounds on the networks' input size: like worker counts they never invalidate finished work, so lowering one
# after an out-of-memory error resumes the stage (an image within both bounds comes out the same either way).
_SIZE_BOUNDS = ("cam.max_long_side", "random_walk.max_long_side", "segmentation.test_max_long_side")

STAGES: tuple[StageSpec, ...] = (
    StageSpec("train_cam", train_cam.run, "train the classification network (multi-label soft margin)",
              ("data", "cam"), outputs=(_out("train_cam", "final.pt"),),
              exclude=_CAM_INFERENCE + _SIZE_BOUNDS + ("cam.accumulation",), files=_given("cam"),
              needed=_classifier_needed, trains="cam"),
    StageSpec("make_cam", make_cam.run, "class activation maps of the training images (multi-scale + flip)",
              _CAM_INFERENCE, upstream=("train_cam",), outputs=(_out("make_cam"),)),
    StageSpec("make_affinity_labels", make_affinity_labels.run,
              "confident fg/bg regions (dense CRF) -> affinity label maps",
              ("affinity_labels",), upstream=("make_cam",), outputs=(_out("make_affinity_labels"),),
              exclude=_WORKERS, needed=_for_source("make_affinity_labels", unless_given="affinitynet")),
    StageSpec("train_affinitynet", train_affinitynet.run, "train AffinityNet on pairs of confident pixels",
              ("affinitynet", "affinity_labels.grid_labels"), upstream=("make_affinity_labels",),
              outputs=(_out("train_affinitynet", "final.pt"),), exclude=("affinitynet.accumulation",),
              files=_given("affinitynet"), needed=_for_source("train_affinitynet"), trains="affinitynet"),
    StageSpec("make_ir_labels", make_ir_labels.run,
              "confident fg/bg by thresholds (dense CRF) -> inter-pixel relation labels (IRN)",
              ("ir_labels",), upstream=("make_cam",), outputs=(_out("make_ir_labels"),),
              exclude=_WORKERS, needed=_for_source("make_ir_labels", unless_given="boundary")),
    StageSpec("train_boundary", train_boundary.run, "train the class boundary network on relation pairs (IRN)",
              ("boundary",), upstream=("train_cam", "make_ir_labels"), outputs=(_out("train_boundary", "final.pt"),),
              exclude=_BOUNDARY_INFERENCE + ("boundary.accumulation",), files=_given("boundary"),
              needed=_for_source("train_boundary"), trains="boundary"),
    StageSpec("random_walk", random_walk.run, "propagate CAMs with pair affinities -> pseudo labels",
              ("random_walk",) + _BOUNDARY_INFERENCE, upstream=("make_cam", "train_affinitynet", "train_boundary"),
              outputs=(_out("random_walk"),), exclude=_WORKERS + _SIZE_BOUNDS),
    StageSpec("train_segmentation", train_segmentation.run, "train the segmentation network on the pseudo labels",
              ("segmentation",), upstream=("train_cam", "random_walk"),
              outputs=(_out("train_segmentation", "final.pt"),),
              exclude=_SEG_INFERENCE + _SIZE_BOUNDS + ("segmentation.accumulation",), trains="segmentation"),
    StageSpec("segment", segment.run, "predict the evaluation split with the segmentation network",
              _SEG_INFERENCE + ("eval.report_images", "eval.crf_rows"), upstream=("train_segmentation",),
              outputs=(_out("segment"),)),
    StageSpec("evaluate", evaluate.run, "mIoU of every stage's labels -> metrics.json and report.html",
              ("eval",), upstream=("make_cam", "make_affinity_labels", "make_ir_labels", "random_walk", "segment"),
              outputs=("metrics.json",)),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def trained_sections(cfg) -> list[str]:
    """The config sections of the networks this config trains (a given checkpoint or an idle stage trains none)."""
    return [s.trains for s in STAGES if s.trains and (s.needed is None or s.needed(cfg))
            and not getattr(cfg.section(s.trains), "checkpoint", "")]


def stage_spec(name: str) -> StageSpec:
    """The spec of a stage by name (ConfigError listing valid names otherwise)."""
    from ..errors import ConfigError

    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage '{name}' (valid: {', '.join(STAGE_NAMES)})")
