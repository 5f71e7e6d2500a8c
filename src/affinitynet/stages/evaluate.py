"""evaluate: gather every stage's scores into ``RUN_DIR/metrics.json`` and draw ``RUN_DIR/report.html``.

Each stage scores its own output when the split has masks (``cam/metrics.json``,
``random_walk/metrics.json``, ...); this stage puts them side by side, keyed by the stage's folder.
With ``eval.crf_rows`` it adds the rows papers report after a dense CRF (the paper's kernels,
``ops.crf``), each under its own key: ``cam_crf`` (the CAM stack [bg threshold, CAMs]), ``random_walk_crf``
(the walk's saved scores) on the scoring split, and ``segmentation_crf`` (labels ``segment`` wrote).
A row whose stage already applies the CRF (``random_walk.crf``, ``segmentation.crf``) is not repeated.
Under torchrun every process scores its share of the images (``dist.shard``) and the confusion matrices
are summed; rank 0 writes the files.
"""
from __future__ import annotations

import numpy as np
import torch

from ..io import load_cam, read_json, write_json
from ..layout import FOLDERS, RunLayout
from ..ops.cam import class_lut
from ..ops.metrics import format_table, scores
from ..scoring import accumulate_shared, score_labels
from .common import scoring_set, scoring_split


def collect(run_dir) -> dict:
    """{folder: metrics} for every stage that has written its scores, in pipeline order."""
    from . import STAGES

    layout = RunLayout(run_dir)
    out = {}
    for spec in STAGES:
        p = layout.stage_metrics(spec.name) if spec.folder else None
        if p is not None and p.exists():
            out[spec.folder] = read_json(p)
    return out


def cam_crf_label(image: np.ndarray, keys: np.ndarray, maps: np.ndarray, bg_threshold: float) -> np.ndarray:
    """(H, W, 3) image, (C',) ids, (C', H, W) CAMs -> (H, W) uint8 argmax of the CRF of [bg_threshold, CAMs]."""
    from ..ops.crf import dense_crf

    stack = np.concatenate([np.full((1,) + maps.shape[1:], bg_threshold, np.float32), maps.astype(np.float32)])
    return class_lut(keys).numpy().astype(np.uint8)[dense_crf(image, stack).argmax(0)]


def _score_with(ctx, predict, desc: str) -> dict:
    ds = scoring_set(ctx)
    names = ds.mask_names()
    conf = accumulate_shared(ds, names, predict, rank=ctx.rank, world=ctx.world_size, progress=ctx.progress,
                             desc=desc)
    return dict(scores(conf, ds.label_names), images=len(names), unmasked=len(ds) - len(names),
                split=scoring_split(ctx), crf=True)


def crf_plan(ctx, metrics: dict) -> list[str]:
    """The ``*_crf`` rows this run can add: those whose stage has scores and outputs and applies no CRF itself."""
    layout, cfg, rows = ctx.layout, ctx.cfg, []
    names = scoring_set(ctx).mask_names() if ("cam" in metrics or "random_walk" in metrics) else []
    if "cam" in metrics and all(layout.cam(n).is_file() for n in names):
        rows.append("cam_crf")
    if "random_walk" in metrics and not cfg.random_walk.crf and all(layout.walk_scores(n).is_file() for n in names):
        rows.append("random_walk_crf")
    seg = metrics.get("segmentation")
    if seg and not cfg.segmentation.crf:
        ds = ctx.dataset(seg.get("split", cfg.data.val_split))
        if ds.names and layout.prediction_crf(ds.names[0]).is_file():
            rows.append("segmentation_crf")
    return rows


def crf_rows(ctx, metrics: dict, plan: list[str] | None = None) -> dict:
    """The ``*_crf`` rows of ``plan`` (default ``crf_plan``); every process of the job calls it for its share."""
    from .random_walk import load_walk_scores, walk_label

    layout, cfg, rows = ctx.layout, ctx.cfg, {}
    plan = crf_plan(ctx, metrics) if plan is None else plan
    image = scoring_set(ctx).load_image if {"cam_crf", "random_walk_crf"} & set(plan) else None
    if "cam_crf" in plan:
        thr = cfg.eval.cam_bg_threshold

        def cam_crf(name):
            keys, maps = load_cam(layout.cam(name))
            return cam_crf_label(image(name), keys, maps, thr)

        rows["cam_crf"] = dict(_score_with(ctx, cam_crf, "CAM + CRF mIoU"), threshold=thr)
    if "random_walk_crf" in plan:
        def walk_crf(name):
            keys, s = load_walk_scores(layout.walk_scores(name))
            return walk_label(s, keys, image(name), crf=True)

        rows["random_walk_crf"] = _score_with(ctx, walk_crf, "random walk + CRF mIoU")
    if "segmentation_crf" in plan:
        split = metrics["segmentation"].get("split", cfg.data.val_split)
        ds = ctx.dataset(split)
        rows["segmentation_crf"] = dict(score_labels(layout.prediction_crf, ds, rank=ctx.rank, world=ctx.world_size,
                                                     progress=ctx.progress, desc="segmentation + CRF mIoU"),
                                        split=split, crf=True)
    return rows


def _ordered(metrics: dict, extra: dict) -> dict:
    """``metrics`` with each ``{key}_crf`` row right after ``key``."""
    out = {}
    for key, m in metrics.items():
        out[key] = m
        if f"{key}_crf" in extra:
            out[f"{key}_crf"] = extra[f"{key}_crf"]
    return out


def _cam_scores_current(ctx, cam: dict) -> bool:
    """Whether ``cam/metrics.json`` was scored with this config's threshold, sweep and split."""
    e = ctx.cfg.eval
    sweep = {f"{t:g}" for t in set(e.cam_sweep) | {e.cam_bg_threshold}}
    return (cam.get("threshold") == e.cam_bg_threshold and set(cam.get("sweep", {})) == sweep
            and cam.get("split") == scoring_split(ctx))


def run(ctx) -> dict:
    """Write ``metrics.json`` (and the report) from the stages' own scores, and the CRF rows when asked.

    The CAM rows are scored again from the CAM files when ``eval`` asks for another threshold, sweep or
    split than ``make_cam`` scored with (changing ``eval`` never recomputes the CAMs).
    """
    from ..dist import broadcast_object

    metrics = collect(ctx.run_dir)
    summary = {}
    if ctx.is_main:
        cam_key = FOLDERS["make_cam"]
        if cam_key in metrics and not _cam_scores_current(ctx, metrics[cam_key]):
            from .make_cam import evaluate_cams

            metrics[cam_key] = evaluate_cams(ctx)
            write_json(ctx.layout.stage_metrics("make_cam"), metrics[cam_key])
    # rank 0 decides which rows exist; every process then scores its share of each
    metrics, plan = broadcast_object((metrics, crf_plan(ctx, metrics) if ctx.cfg.eval.crf_rows and ctx.is_main
                                      else []))
    if plan:
        with torch.inference_mode():
            metrics = _ordered(metrics, crf_rows(ctx, metrics, plan))
    if ctx.is_main:
        write_json(ctx.layout.metrics, metrics)
        for key, m in metrics.items():
            if isinstance(m, dict) and "miou" in m and "iou" in m:
                summary[f"{key}_miou"] = round(m["miou"], 2)
                ctx.log.info(f"\n{key}:\n{format_table(m)}")
        from ..report import write_report

        write_report(ctx.run_dir, ctx.cfg)
    return summary
