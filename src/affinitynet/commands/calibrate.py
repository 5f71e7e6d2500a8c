"""``affinitynet calibrate RUN_DIR --stage cam|random_walk --param NAME [--masks N] [--seed S] [--json PATH]``:
choose a threshold of a finished run from its own files, with a few masks or with none (docs/calibration.md).

Parameters:

- ``cam bg_threshold``: the constant background score of the CAM labels (``eval.cam_bg_threshold``).
- ``random_walk alpha``: the walk's background power, [(1 - max CAM)^alpha, CAMs] (``random_walk.background:
  power``, AffinityNet's).
- ``random_walk bg_threshold``: the background set after the walk (``random_walk.background: threshold``, IRN's).

Every candidate value relabels the images from what the run saved, as ``affinitynet sweep`` does: the CAM files,
the walk's saved scores, and its pair affinities (``random_walk.cache_affinity``; without that cache the affinity
source runs once per image). Two ways to choose:

- ``--masks N``: the value with the best mIoU on N images drawn (``--seed``) from those that have masks.
- no ``--masks``: label-free; no mask is read. The walk's background from the walk's own pair affinities (AffinityNet's
  or IRN's boundary affinities): the value whose labels' borders cross the least affinity, i.e. the lowest mean
  affinity of the pairs on the walk's grid whose two cells the labels put in different regions. Borders that run
  where the network sees a boundary cross low affinities; borders inside an object or out in the background cross
  high ones. The CAM threshold then by agreement: the threshold whose CAM labels have the best mIoU against the
  walk's labels at the walk's own label-free background, which stand in for the masks. The normalised cut of the
  same graph (``calibration.normalized_cut``) was tried too and failed on two of the photo-scene sets
  (docs/calibration.md).

Either way the choice is repeated on bootstrap resamples of the images used: the share that picks the same value
is the measure of how sure it is. ``--apply`` rewrites the stage's outputs at the chosen value from the saved files
(no network runs where the affinities are cached) and records it in the run's config and manifest, so that the
stages after it redo on the next ``affinitynet run`` with the printed ``--set``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..calibration import Relabeller, agreement, choose_by_masks, evaluate, walk_param
from ..ops.criteria import BOOTSTRAP, choose_by_cut, stability
from ..errors import ConfigError, StageError
from ..io import load_cam, load_npz, write_json
from ..ops.metrics import mean_iou

CANDIDATES = {
    ("cam", "bg_threshold"): (0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5),
    ("random_walk", "alpha"): (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    ("random_walk", "bg_threshold"): (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6),
}
CONFIG_KEYS = {("cam", "bg_threshold"): "eval.cam_bg_threshold", ("random_walk", "alpha"): "random_walk.alpha",
               ("random_walk", "bg_threshold"): "random_walk.bg_threshold"}


def draw_masked(ds, n: int, seed: int) -> list[str]:
    """``n`` names drawn with ``seed`` from the split's images that have masks (ConfigError if fewer have)."""
    have = ds.mask_names()
    if n < 1:
        raise ConfigError(f"--masks {n}: at least 1 image")
    if n > len(have):
        raise ConfigError(f"--masks {n}: only {len(have)} of the {len(ds)} training images have masks")
    rng = np.random.default_rng(seed)
    return sorted(have[i] for i in rng.choice(len(have), n, replace=False))


# ----------------------------------------------------------------------------- applying

def overrides(cfg, stage: str, param: str, value) -> list[str]:
    """The ``--set`` items that make ``value`` the run's setting (and turn off the walk's own choice of alpha)."""
    items = [f"{CONFIG_KEYS[(stage, param)]}={value:g}"]
    if (stage, param) == ("random_walk", "alpha") and cfg.random_walk.choose_alpha:
        items.append("random_walk.choose_alpha=false")
    return items


def apply_value(ctx, stage: str, param: str, value) -> dict:
    """Rewrite the stage's outputs at ``value`` from the run's saved files, and record it as the run's setting.

    ``cam bg_threshold`` only scores the CAM labels (``eval``): the CAM rows are scored again. The walk's
    ``alpha`` / ``bg_threshold`` rewrite ``random_walk/`` (labels, saved scores; the affinities come from the cache,
    else the affinity source runs). The run's ``config.yaml`` takes the value and the manifest records the stage as
    finished with it, so the stages after it redo on the next ``affinitynet run`` with the same ``--set``.
    """
    from .. import config as config_mod
    from ..io import save_label_png, write_text
    from ..runner import _stage_key, _save_manifest, load_manifest
    from ..stages import stage_spec

    layout = ctx.layout
    cfg = config_mod.load(layout.config, overrides(ctx.cfg, stage, param, value))
    ctx.cfg = cfg
    if stage == "random_walk":
        from ..stages.random_walk import (grid_to_image, save_walk, threshold_background, walk_from_affinity,
                                          walk_grid, walk_label)
        from ..stages.common import require

        rw = cfg.random_walk
        relabel = Relabeller(ctx, stage, param, [value])
        ds = ctx.train_set
        # until every image is rewritten the stage counts as unfinished with no identity: an interrupted apply
        # leaves a mix of values, which the next run then clears and redoes
        manifest = load_manifest(layout.root)
        manifest.setdefault("random_walk", {}).update(status="applying", key="")
        _save_manifest(layout.root, manifest)
        for name in ctx.progress(ds.names, desc=f"apply {CONFIG_KEYS[(stage, param)]}={value}"):
            image = ds.load_image(name)
            keys, maps = load_cam(layout.cam(name))
            if param == "alpha":
                g, aff, weight = relabel._affinity(name, image)
                out = walk_from_affinity(g, maps, aff, rw, ctx.device, weight)
            else:
                z = load_npz(require(layout.walk_scores(name), "random_walk"))
                g = walk_grid(*z["size"].tolist(), rw, int(z["stride"]))
                out = threshold_background(g, torch.from_numpy(z["scores"]).unsqueeze(0), value)
            save_walk(layout.walk_scores(name), g, keys, out)
            save_label_png(layout.pseudo_label(name), walk_label(grid_to_image(out, g.size, g.scaled, g.stride),
                                                                 keys, image, rw.crf))
        producer = "random_walk"
    else:
        producer = None
    write_text(layout.config, config_mod.dump(cfg))
    summary = {}
    if stage == "cam" and ctx.train_set.has_masks:
        from ..stages.make_cam import evaluate_cams

        result = evaluate_cams(ctx)
        write_json(layout.stage_metrics("make_cam"), result)
        summary["miou"] = round(result["miou"], 2)
    if producer is not None:
        if ctx.train_set.has_masks:
            from ..scoring import score_labels
            from ..stages.common import scoring_set, scoring_split

            result = score_labels(layout.pseudo_label, scoring_set(ctx), progress=ctx.progress,
                                  desc="pseudo-label mIoU")
            result.update(split=scoring_split(ctx), affinity=rw.affinity)
            write_json(layout.stage_metrics(producer), result)
            summary["miou"] = round(result["miou"], 2)
        manifest = load_manifest(layout.root)
        rec = manifest.get(producer, {})
        rec.update(status="done", key=_stage_key(cfg, stage_spec(producer), manifest), finished=time.time(),
                   summary={**rec.get("summary", {}), **summary, "calibrated": {param: value}})
        manifest[producer] = rec
        _save_manifest(layout.root, manifest)
    return summary


# ----------------------------------------------------------------------------- the command

def calibrate(ctx, stage: str, param: str, *, masks: int | None = None, seed: int = 0, values=None,
              images: int = 0) -> dict:
    """Choose ``param`` of ``stage`` for the run of ``ctx``: with ``masks`` images' masks, else label-free.

    ``images`` > 0 bounds the images the label-free criterion reads (drawn with ``seed``). Returns the result dict
    (``stage``, ``param``, ``value``, ``method``, ``masks_used``, the candidates and what each scored).
    """
    from ..stages.common import require
    from ..stages.walk_alpha import walk_settings

    if (stage, param) not in CANDIDATES:
        valid = ", ".join(f"--stage {s} --param {p}" for s, p in CANDIDATES)
        raise ConfigError(f"--stage {stage} --param {param}: calibrate chooses {valid}")
    require(ctx.layout.folder("make_cam"), "make_cam")
    if stage == "random_walk" or masks is None:
        require(ctx.layout.folder("random_walk"), "random_walk")
    key = CONFIG_KEYS[(stage, param)]
    current = (ctx.cfg.eval.cam_bg_threshold if stage == "cam"
               else getattr(walk_settings(ctx.cfg, ctx.layout), param))  # choose_alpha: the alpha the walk chose
    values = sorted(set(values or CANDIDATES[(stage, param)]) | {current})
    ds = ctx.train_set
    t0 = time.perf_counter()
    extra = {}
    if masks is not None:
        names = draw_masked(ds, masks, seed)
        conf, _, _, computed = evaluate(ctx, stage, param, values, names, masked=names,
                                        progress_desc=f"calibrate {key} ({masks} masks)")
        best = choose_by_masks(conf)
        sure = stability(conf, choose_by_masks, best, seed)
        score = [round(mean_iou(c), 3) for c in conf.sum(0)]
        method, used, measure = "masks", len(names), "mIoU on the drawn images (%)"
    else:
        names = list(ds.names)
        if 0 < images < len(names):
            rng = np.random.default_rng(seed)
            names = sorted(names[i] for i in rng.choice(len(names), images, replace=False))
        method, used = "label-free", 0
        if stage == "cam":
            walk = calibrate(ctx, "random_walk", walk_param(ctx), seed=seed, images=images)
            conf, walked = agreement(ctx, values, names, walk["value"], progress_desc=f"calibrate {key} (label-free)")
            best = choose_by_masks(conf)
            sure = stability(conf, choose_by_masks, best, seed)
            score = [round(mean_iou(c), 3) for c in conf.sum(0)]
            computed = walk["affinities_computed"] + walked
            measure = (f"mIoU (%) against the walk's labels at its label-free {walk['config_key']}={walk['value']:g} "
                       f"(higher is better)")
            extra = {"walk": {k: walk[k] for k in ("param", "value", "stability", "values", "score")}}
        else:
            _, border, _, computed = evaluate(ctx, stage, param, values, names, graph=True,
                                              progress_desc=f"calibrate {key} (label-free)")
            measure = "mean affinity across the labels' borders (lower is better)"
            best = choose_by_cut(border)
            sure = stability(border, choose_by_cut, best, seed)
            score = [round(float(c), 5) for c in border.mean(0)]
    value = values[best]
    return {"stage": stage, "param": param, "value": value, "method": method, "masks_used": used,
            "images": len(names), "stability": round(sure, 3), "config_key": key, "current": current,
            "values": values, "score": score, "measure": measure, "seconds": round(time.perf_counter() - t0, 2),
            "affinities_computed": computed,
            "set": " ".join(f"--set {item}" for item in overrides(ctx.cfg, stage, param, value)), **extra}


def format_result(r: dict) -> str:
    """The console table: every candidate's score, the choice marked, then the choice in one line."""
    head = "cut" if r["method"] == "label-free" and r["stage"] == "random_walk" else "mIoU"
    lines = [f"calibrate {r['config_key']} ({r['method']}, {r['images']} images"
             + (f" with masks, seed {r.get('seed', 0)}" if r["method"] == "masks" else "") + f", {r['seconds']:.1f} s)",
             f"{r['param']:>12}  {head:>9}"]
    for v, s in zip(r["values"], r["score"]):
        note = ("  chosen" if v == r["value"] else "") + ("  (config)" if v == r["current"] else "")
        lines.append(f"{v:>12g}  {s:9.4g}{note}")
    if "walk" in r:
        lines.append(f"(mIoU against the walk's labels at its label-free {r['walk']['param']}={r['walk']['value']:g}, "
                     f"itself chosen by {100 * r['walk']['stability']:.0f}% of the resamples)")
    lines.append(f"chosen {r['param']}={r['value']:g} ({r['method']}; {100 * r['stability']:.0f}% of {BOOTSTRAP} "
                 f"bootstrap resamples of the images choose it too)")
    lines.append(f"apply: {r['set']}")
    return "\n".join(lines)


def calibrate_command(run_dir: Path, stage: str, param: str, *, masks: int | None = None, seed: int = 0,
                      json_path: Path | None = None, apply: bool = False, device: str = "auto", values=None,
                      images: int = 0) -> dict:
    """Run ``calibrate`` on a finished run, print its table, write ``--json``, and ``--apply`` the value if asked."""
    from .sweep import STAGE_ALIASES, run_context

    stage = STAGE_ALIASES.get(stage, stage)
    ctx = run_context(Path(run_dir), device)
    if masks is not None and not ctx.train_set.mask_names():
        raise StageError(f"--masks {masks}: the training split of {run_dir} has no masks; leave --masks out to "
                         f"choose label-free")
    with torch.inference_mode():
        result = calibrate(ctx, stage, param, masks=masks, seed=seed, values=values, images=images)
        result["seed"] = seed
        print(format_result(result))
        if json_path is not None:
            write_json(Path(json_path), {k: result[k] for k in ("stage", "param", "value", "method", "masks_used")}
                       | {"stability": result["stability"], "images": result["images"], "values": result["values"],
                          "score": result["score"], "measure": result["measure"], "seed": seed})
            print(f"wrote {json_path}")
        write_json(ctx.layout.root / "calibration" / f"{stage}_{param}.json", result)
        if apply:
            summary = apply_value(ctx, stage, param, result["value"])
            print(f"applied {result['config_key']}={result['value']:g} to {run_dir}"
                  + (f" (mIoU {summary['miou']:.2f})" if "miou" in summary else "")
                  + f"; run the later stages with {result['set']}")
    return result
