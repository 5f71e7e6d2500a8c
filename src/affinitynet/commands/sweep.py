"""``affinitynet sweep RUN_DIR --stage STAGE --param NAME=V1,V2,...``: mIoU of a stage's labels per parameter value,
from what the run already holds, never re-running a network.

- ``cam``: ``bg_threshold``, the constant background score of the CAM labels (one pass over the CAM files
  gives every threshold, ``ops.metrics.cam_sweep``).
- ``random_walk``: ``bg_threshold`` (``random_walk.background: threshold``): the walk does not depend on it, so
  each image's saved scores (``random_walk/scores/``) are relabelled; nothing is walked again.
- ``random_walk``: ``alpha``, ``beta``, ``logt``. Each image's pair affinities are read from
  ``random_walk/affinity/`` (``random_walk.cache_affinity``) or, without that cache, computed once per image
  by the affinity source; every value then runs only the walk (``stages.random_walk.walk_from_affinity``),
  exactly as the stage would at that value.

Writes ``sweeps/{stage}_{param}.json`` (values, mIoU, split, seconds) and a PNG plot; the report shows them.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from .. import config as config_mod
from ..context import StageContext
from ..dist import resolve_device
from ..errors import ConfigError, StageError
from ..io import load_cam, write_json
from ..layout import RunLayout
from ..ops.metrics import cam_sweep, confusion_matrix, scores
from ..report.png_chart import line_chart_png
from ..visualize import save_rgb

PARAMS = {"cam": {"bg_threshold": float},
          "random_walk": {"alpha": float, "beta": float, "logt": int, "bg_threshold": float}}
STAGE_ALIASES = {"make_cam": "cam"}


def parse_param(stage: str, text: str) -> tuple[str, list]:
    """``NAME=V1,V2,...`` -> (NAME, values), checked against the stage's sweepable parameters."""
    stage = STAGE_ALIASES.get(stage, stage)
    if stage not in PARAMS:
        raise ConfigError(f"--stage {stage}: sweeps run on {', '.join(PARAMS)}")
    if "=" not in text:
        raise ConfigError(f"--param {text}: expected NAME=V1,V2,... (e.g. alpha=4,8,16,24)")
    name, raw = (t.strip() for t in text.split("=", 1))
    if name not in PARAMS[stage]:
        raise ConfigError(f"--param {name}: {stage} sweeps {', '.join(PARAMS[stage])}")
    kind = PARAMS[stage][name]
    try:
        values = [kind(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--param {text}: values must be {'integers' if kind is int else 'numbers'}") from None
    if not values:
        raise ConfigError(f"--param {text}: no values")
    bad = [v for v in values if (v < 0 if name == "logt" else not v > 0) or (stage == "cam" and v >= 1)]
    if bad:
        rule = ">= 0" if name == "logt" else ("in (0, 1)" if stage == "cam" else "> 0")
        raise ConfigError(f"--param {name}: values must be {rule}, got {bad[0]}")
    return name, list(dict.fromkeys(values))


def run_context(run_dir: Path, device: str = "auto") -> StageContext:
    """A stage context for a finished run directory (its saved config), for commands that read its outputs."""
    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        raise StageError(f"{run_dir} is not a run directory ({layout.config.name} not found)")
    cfg = config_mod.load(layout.config)
    cfg.runtime.device = device
    if cfg.runtime.threads > 0:  # as the run did (runtime.threads)
        torch.set_num_threads(cfg.runtime.threads)
    return StageContext(cfg=cfg, run_dir=Path(run_dir), device=resolve_device(device))


def sweep_cam(ctx, values, names) -> list[np.ndarray]:
    """(K, K + 1) confusion of the CAM labels at each background threshold, over ``names`` of the scoring split."""
    from ..stages.common import scoring_set

    ds = scoring_set(ctx)
    k = ds.num_classes + 1
    conf = np.zeros((len(values), k, k + 1), dtype=np.int64)
    for name in ctx.progress(names, desc="sweep cam"):
        keys, maps = load_cam(ctx.layout.cam(name))
        conf += cam_sweep(maps, keys, ds.load_mask(name), values, k)
    return list(conf)


def relabel_walk(ctx, values, names) -> list[np.ndarray]:
    """(K, K + 1) confusion of the pseudo labels at each background threshold, from the walk's saved scores."""
    from ..io import load_npz
    from ..stages.common import require, scoring_set
    from ..stages.random_walk import grid_to_image, threshold_background, walk_grid, walk_label

    rw = ctx.cfg.random_walk
    if rw.background != "threshold":
        raise ConfigError(f"--param bg_threshold: this run's random_walk.background is {rw.background}; "
                          f"its background comes from alpha (sweep alpha)")
    ds = scoring_set(ctx)
    k = ds.num_classes + 1
    conf = np.zeros((len(values), k, k + 1), dtype=np.int64)
    for name in ctx.progress(names, desc="sweep random_walk bg_threshold"):
        z = load_npz(require(ctx.layout.walk_scores(name), "random_walk"))
        out = torch.from_numpy(z["scores"]).unsqueeze(0)
        g = walk_grid(*z["size"].tolist(), rw, int(z["stride"]))
        image, keys, gt = ds.load_image(name), z["keys"].astype(np.int64), ds.load_mask(name)
        for i, v in enumerate(values):
            scores = grid_to_image(threshold_background(g, out, v), g.size, g.scaled, g.stride)
            conf[i] += confusion_matrix(walk_label(scores, keys, image, rw.crf), gt, k)
    return list(conf)


def sweep_walk(ctx, param: str, values, names) -> tuple[list[np.ndarray], str]:
    """(K, K + 1) confusion of the pseudo labels at each value of ``param`` (alpha, beta, logt), and where the affinities came from."""
    from ..stages.affinity_sources import AFFINITY_SOURCES, affinity_source
    from ..stages.common import scoring_set
    from ..stages.random_walk import affinities, grid_to_image, load_affinity, walk_from_affinity, walk_grid, walk_label
    from ..stages.walk_alpha import walk_settings

    cfg, layout = ctx.cfg, ctx.layout
    rw = walk_settings(cfg, layout)  # with random_walk.choose_alpha: the alpha the walk chose
    if rw.affinity not in AFFINITY_SOURCES:
        raise ConfigError(f"unknown random_walk.affinity '{rw.affinity}' (valid: {', '.join(AFFINITY_SOURCES)})")
    stride = AFFINITY_SOURCES[rw.affinity].stride
    if param == "alpha" and getattr(rw, "background", "power") != "power":
        raise ConfigError(f"--param alpha: this run's random_walk.background is {rw.background}, which does not use "
                          f"alpha; sweep bg_threshold")
    ds = scoring_set(ctx)
    k = ds.num_classes + 1
    conf = np.zeros((len(values), k, k + 1), dtype=np.int64)
    settings = [dataclasses.replace(rw, **{param: v}) for v in values]
    source, computed = None, 0
    for name in ctx.progress(names, desc=f"sweep random_walk {param}"):
        image = ds.load_image(name)
        keys, maps = load_cam(layout.cam(name))
        cached = layout.walk_affinity(name)
        if cached.is_file():
            g = walk_grid(*image.shape[:2], rw, stride)
            aff, weight = load_affinity(cached, g)
        else:
            source = source or affinity_source(cfg, layout, ctx.device)
            g, aff, weight = affinities(source, image, rw, ctx.device)
            computed += 1
        gt = ds.load_mask(name)
        for i, s in enumerate(settings):
            out = walk_from_affinity(g, maps, aff, s, ctx.device, weight)
            label = walk_label(grid_to_image(out, g.size, g.scaled, g.stride), keys, image, s.crf)
            conf[i] += confusion_matrix(label, gt, k)
    where = "cached" if computed == 0 else f"computed for {computed} of {len(names)} images (no cache)"
    return list(conf), where


def format_sweep(result: dict) -> str:
    """The sweep as a console table: value, mIoU, the best marked, the config's own value noted."""
    left_out = f", {result['unmasked']} without masks left out" if result.get("unmasked") else ""
    lines = [f"{result['stage']} {result['param']}  ({result['split']}, {result['images']} images{left_out}, "
             f"{result['seconds']:.1f} s)", f"{result['param']:>12}  {'mIoU':>7}"]
    best = int(np.argmax(result["miou"]))
    for i, (v, m) in enumerate(zip(result["values"], result["miou"])):
        note = ("  best" if i == best else "") + ("  (config)" if v == result["current"] else "")
        lines.append(f"{v:>12g}  {m:7.2f}{note}")
    return "\n".join(lines)


def sweep_command(run_dir: Path, stage: str, param_text: str, *, device: str = "auto") -> dict:
    """Run one sweep on a finished run, print its table, write ``sweeps/{stage}_{param}.json`` and ``.png``."""
    stage = STAGE_ALIASES.get(stage, stage)
    param, values = parse_param(stage, param_text)
    ctx = run_context(Path(run_dir), device)
    from ..stages.common import require, scoring_set, scoring_split
    from ..stages.walk_alpha import walk_settings

    ds = scoring_set(ctx)
    if not ds.has_masks:
        raise StageError(f"the scoring split {scoring_split(ctx)} has no masks: nothing to score a sweep against")
    producer = "make_cam" if stage == "cam" else "random_walk"
    require(ctx.layout.folder(producer), producer)
    names = ds.mask_names()  # the images scored: those that have masks
    t0 = time.perf_counter()
    with torch.inference_mode():
        if stage == "cam":
            confs, where = sweep_cam(ctx, values, names), "CAM files"
            current = ctx.cfg.eval.cam_bg_threshold
        else:
            confs, where = (relabel_walk(ctx, values, names), "saved scores") if param == "bg_threshold" else \
                sweep_walk(ctx, param, values, names)
            current = getattr(walk_settings(ctx.cfg, ctx.layout), param)  # choose_alpha: the alpha the walk chose
    seconds = time.perf_counter() - t0
    per = [scores(c, ds.label_names) for c in confs]
    result = {"stage": stage, "param": param, "values": values, "miou": [round(p["miou"], 4) for p in per],
              "current": current, "split": scoring_split(ctx), "images": len(names),
              "unmasked": len(ds) - len(names), "seconds": round(seconds, 3),
              "inputs": where}
    layout = ctx.layout
    write_json(layout.sweep(stage, param), result)
    title = f"{stage}: mIoU over {param} ({result['split']}, {result['images']} images)"
    save_rgb(layout.sweep(stage, param, ".png"), line_chart_png(list(zip(values, result["miou"])), title=title,
                                                                xlabel=param, ylabel="mIoU (%)", mark=current))
    if layout.report.is_file():
        from ..report import write_report

        write_report(layout.root, ctx.cfg)
    print(format_sweep(result))
    print(f"wrote {layout.sweep(stage, param)} and {layout.sweep(stage, param, '.png')}")
    return result
