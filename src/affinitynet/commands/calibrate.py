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
- no ``--masks``: label-free; no mask is read. The walk's background from the walk's own affinity graph, where each
  image's labels split the walk's grid into regions (background and each tagged class):
  - AffinityNet's affinities: the normalised cut. That of region A is the affinity (A^beta, as the walk weighs
    pairs) of the pairs that leave A over that of all pairs that touch A (Shi & Malik, 2000). Labels whose borders
    run where the network sees a boundary cut little; a region that spills over its object, or shrinks into it,
    cuts through high affinities. A tagged class (or the background) with no cell counts 1, the most a region can
    cut. The chosen value has the lowest mean cut over the images.
  - IRN's boundary affinities (near 1 except across a detected boundary, where the cut favours large regions): the
    mean affinity of the pairs across the labels' borders, lowest where the borders follow the boundaries.
  The CAM threshold then by agreement: the threshold whose CAM labels have the best mIoU against the walk's labels
  at the walk's own label-free background, which stand in for the masks (the cut alone favours large foregrounds on
  coarse CAMs: docs/calibration.md).

Either way the choice is repeated on bootstrap resamples of the images used: the share that picks the same value
is the measure of how sure it is. ``--apply`` rewrites the stage's outputs at the chosen value from the saved files
(no network runs where the affinities are cached) and records it in the run's config and manifest, so that the
stages after it redo on the next ``affinitynet run`` with the printed ``--set``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, StageError
from ..io import load_cam, load_npz, write_json

CANDIDATES = {
    ("cam", "bg_threshold"): (0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5),
    ("random_walk", "alpha"): (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    ("random_walk", "bg_threshold"): (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6),
}
CONFIG_KEYS = {("cam", "bg_threshold"): "eval.cam_bg_threshold", ("random_walk", "alpha"): "random_walk.alpha",
               ("random_walk", "bg_threshold"): "random_walk.bg_threshold"}
BOOTSTRAP = 200  # resamples of the images for the stability of a choice
# The walk's label-free criterion per affinity source (docs/calibration.md): AffinityNet's graded pair similarities
# -> the normalised cut; IRN's boundary affinities, near 1 but at the detected boundaries, under which the cut
# favours large regions -> how little affinity the labels' borders cross (how well they follow the boundaries).
LABEL_FREE = {"affinitynet": "cut", "boundary": "border"}


# ----------------------------------------------------------------------------- the criterion

def grid_labels(stack: torch.Tensor, keys: np.ndarray) -> np.ndarray:
    """(1, 1 + C', gh, gw) scores on the walk's grid -> (gh * gw,) int64 class ids (0 background, then ``keys``)."""
    ids = np.concatenate([[0], np.asarray(keys, dtype=np.int64)])
    return ids[stack[0].argmax(0).reshape(-1).numpy()]


def normalized_cut(labels: np.ndarray, weights: np.ndarray, idx_from: np.ndarray, idx_to: np.ndarray,
                   regions, valid: np.ndarray | None = None) -> float:
    """Mean normalised cut of ``regions`` (class ids) in the partition ``labels`` (N,) of a graph's nodes.

    ``weights`` (P,) are the symmetric pair weights of the pairs (``idx_from``, ``idx_to``); pairs with an end
    outside ``valid`` (N,) bool are left out. cut(A) / assoc(A): the weight of the pairs with exactly one end in A
    over the weight of the pairs with at least one end in A, counted from both ends (each node's degree). A region
    with no node, or whose nodes touch no weight, counts 1.
    """
    keep = np.ones(len(weights), bool) if valid is None else valid[idx_from] & valid[idx_to]
    w, a, b = weights[keep], labels[idx_from[keep]], labels[idx_to[keep]]
    terms = []
    for r in regions:
        in_a, in_b = a == r, b == r
        cut = float(w[in_a != in_b].sum())
        assoc = float(w[in_a].sum() + w[in_b].sum())  # the degrees of A's nodes: inside pairs twice, cut pairs once
        terms.append(cut / assoc if assoc > 0 else 1.0)
    return float(np.mean(terms)) if terms else 0.0


def boundary_affinity(labels: np.ndarray, weights: np.ndarray, idx_from: np.ndarray, idx_to: np.ndarray) -> float:
    """Mean weight of the pairs whose two ends have different labels (1, the most, where no pair crosses a border)."""
    crossing = labels[idx_from] != labels[idx_to]
    return float(weights[crossing].mean()) if crossing.any() else 1.0


# ----------------------------------------------------------------------------- one image, every candidate

@dataclass
class Candidates:
    """One image's labels at every candidate value: label maps at image size, and the normalised cut of each."""

    labels: list  # (H, W) uint8 per value
    cut: np.ndarray | None  # (T,) mean normalised cut per value, None where no affinities were at hand
    border: np.ndarray | None = None  # (T,) mean affinity of the pairs across the labels' borders


class Relabeller:
    """Labels of a run's training images at each value of one parameter, from the run's saved files."""

    def __init__(self, ctx, stage: str, param: str, values, *, need_cut: bool, cut_beta: float | None = None,
                 border_beta: float = 1.0):
        from ..stages.affinity_sources import AFFINITY_SOURCES

        self.ctx, self.stage, self.param, self.values, self.need_cut = ctx, stage, param, list(values), need_cut
        self.rw = ctx.cfg.random_walk
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
        from ..stages.affinity_sources import affinity_source
        from ..stages.random_walk import affinities, load_affinity, walk_grid

        cached = self.ctx.layout.walk_affinity(name)
        if cached.is_file():
            g = walk_grid(*image.shape[:2], self.rw, int(load_npz(cached)["stride"]))
            return (g, *load_affinity(cached, g))
        if self._source is None:
            self._source = affinity_source(self.ctx.cfg, self.ctx.layout, self.ctx.device)
        self.computed += 1
        return affinities(self._source, image, self.rw, self.ctx.device)

    def __call__(self, name: str) -> Candidates:
        from ..ops.cam import class_lut
        from ..ops.pairs import pair_indices
        from ..stages.random_walk import (grid_scores, grid_to_image, threshold_background, walk_from_affinity,
                                          walk_label)

        image = self.ds.load_image(name)
        keys, maps = load_cam(self.ctx.layout.cam(name))
        need_affinity = self.need_cut or self.stage == "random_walk" and self.param == "alpha"
        g = aff = weight = None
        if need_affinity:
            g, aff, weight = self._affinity(name, image)
        labels, grids = [], []
        if self.stage == "cam":
            lut = class_lut(keys).numpy().astype(np.uint8)
            pooled = grid_scores(g, maps, 1.0, "threshold") if g is not None else None
            peak, arg = (maps.max(0), maps.argmax(0)) if len(keys) else (np.zeros(image.shape[:2]), None)
            for t in self.values:
                fg = peak > t
                labels.append(np.where(fg, lut[1:][arg] if arg is not None else 0, 0).astype(np.uint8)
                              if len(keys) else np.zeros(image.shape[:2], np.uint8))
                if pooled is not None:
                    stack = pooled.clone()
                    stack[:, 0] = t
                    grids.append(grid_labels(stack, keys))
        else:
            if self.param == "alpha":
                outs = [walk_from_affinity(g, maps, aff, dataclasses.replace(self.rw, alpha=v), self.ctx.device, weight)
                        for v in self.values]
            else:
                from ..stages.common import require
                from ..stages.random_walk import walk_grid

                z = load_npz(require(self.ctx.layout.walk_scores(name), "random_walk"))
                saved = torch.from_numpy(z["scores"]).unsqueeze(0)
                sg = walk_grid(*z["size"].tolist(), self.rw, int(z["stride"]))
                g = g or sg
                outs = [threshold_background(sg, saved, v) for v in self.values]
            for out in outs:
                scores = grid_to_image(out, g.size, g.scaled, g.stride)
                labels.append(walk_label(scores, keys, image, self.rw.crf))
                grids.append(grid_labels(out, keys))
        cut = None
        if self.need_cut:
            gh, gw = g.grid
            idx_from, idx_to = (t.numpy() for t in pair_indices(gh, gw, self.rw.radius,
                                                                reference=self.rw.reference_pairs))
            raw = aff.reshape(-1).double().clamp_min(0).numpy()
            weights = raw ** self.cut_beta
            regions = [0] + [int(k) for k in keys]
            cut = np.array([normalized_cut(lab, weights, idx_from, idx_to, regions) for lab in grids])
            border = np.array([boundary_affinity(lab, raw ** self.border_beta, idx_from, idx_to) for lab in grids])
            return Candidates(labels, cut, border)
        return Candidates(labels, cut)


# ----------------------------------------------------------------------------- choosing

def miou_of(conf: np.ndarray) -> float:
    """mIoU (%) of a (K, K + 1) confusion, over the classes present in ground truth or prediction."""
    k = conf.shape[0]
    tp = np.diag(conf[:, :k]).astype(np.float64)
    union = conf.sum(1) + conf[:, :k].sum(0) - tp
    present = union > 0
    return float(100.0 * (tp[present] / union[present]).mean()) if present.any() else 0.0


def choose_by_masks(conf: np.ndarray) -> int:
    """(n, T, K, K + 1) per-image confusions -> index of the value with the best mIoU over the n images."""
    total = conf.sum(0)
    return int(np.argmax([miou_of(c) for c in total]))


def choose_by_cut(cut: np.ndarray) -> int:
    """(n, T) per-image normalised cuts -> index of the value with the lowest mean."""
    return int(np.argmin(cut.mean(0)))


def stability(per_image: np.ndarray, choose, chosen: int, seed: int, resamples: int = BOOTSTRAP) -> float:
    """Share (0..1) of bootstrap resamples of the images (rows of ``per_image``) for which ``choose`` gives ``chosen``."""
    rng = np.random.default_rng(seed)
    n = per_image.shape[0]
    if n < 2:
        return 1.0
    same = sum(choose(per_image[rng.integers(0, n, n)]) == chosen for _ in range(resamples))
    return same / resamples


def draw_masked(ds, n: int, seed: int) -> list[str]:
    """``n`` names drawn with ``seed`` from the split's images that have masks (ConfigError if fewer have)."""
    have = ds.mask_names()
    if n < 1:
        raise ConfigError(f"--masks {n}: at least 1 image")
    if n > len(have):
        raise ConfigError(f"--masks {n}: only {len(have)} of the {len(ds)} training images have masks")
    rng = np.random.default_rng(seed)
    return sorted(have[i] for i in rng.choice(len(have), n, replace=False))


def walk_param(ctx) -> str:
    """The walk's background setting of this run: ``alpha`` (power background) or ``bg_threshold`` (IRN's)."""
    return "alpha" if ctx.cfg.random_walk.background == "power" else "bg_threshold"


def agreement(ctx, values, names, walk_value, *, progress_desc: str) -> np.ndarray:
    """(n, T, K, K + 1) confusions of the CAM labels at each threshold against the walk's labels at ``walk_value`` of
    its background setting (``walk_param``): the walk's labels stand in for the masks. No mask is read."""
    from ..ops.metrics import confusion_matrix

    cams = Relabeller(ctx, "cam", "bg_threshold", values, need_cut=False)
    walk = Relabeller(ctx, "random_walk", walk_param(ctx), [walk_value], need_cut=False)
    k = cams.ds.num_classes + 1
    out = []
    for name in ctx.progress(list(names), desc=progress_desc):
        ref = walk(name).labels[0]
        out.append(np.stack([confusion_matrix(lab, ref, k) for lab in cams(name).labels]))
    return np.stack(out)


def evaluate(ctx, stage: str, param: str, values, names, *, masked=(), need_cut: bool, progress_desc: str,
             cut_beta: float | None = None, return_border: bool = False, border_beta: float = 1.0):
    """Per-image confusions (for the ``masked`` names) and normalised cuts of every value over ``names``.

    Returns (conf (n_masked, T, K, K + 1) or None, cut (n, T) or None, images whose affinities were computed).
    """
    from ..ops.metrics import confusion_matrix

    relabel = Relabeller(ctx, stage, param, values, need_cut=need_cut, cut_beta=cut_beta, border_beta=border_beta)
    ds = relabel.ds
    k = ds.num_classes + 1
    masked = set(masked)
    confs, cuts, borders = [], [], []
    for name in ctx.progress(list(names), desc=progress_desc):
        got = relabel(name)
        if name in masked:
            gt = ds.load_mask(name)
            confs.append(np.stack([confusion_matrix(lab, gt, k) for lab in got.labels]))
        if got.cut is not None:
            cuts.append(got.cut)
            borders.append(got.border)
    conf = np.stack(confs) if confs else None
    cut = np.stack(cuts) if cuts else None
    if return_border:
        return conf, cut, (np.stack(borders) if borders else None), relabel.computed
    return conf, cut, relabel.computed


# ----------------------------------------------------------------------------- applying

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
    key = CONFIG_KEYS[(stage, param)]
    cfg = config_mod.load(layout.config, [f"{key}={value}"])
    ctx.cfg = cfg
    if stage == "random_walk":
        from ..stages.random_walk import (grid_to_image, save_walk, threshold_background, walk_from_affinity,
                                          walk_grid, walk_label)
        from ..stages.common import require

        rw = cfg.random_walk
        relabel = Relabeller(ctx, stage, param, [value], need_cut=False)
        ds = ctx.train_set
        for name in ctx.progress(ds.names, desc=f"apply {key}={value}"):
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

    if (stage, param) not in CANDIDATES:
        valid = ", ".join(f"--stage {s} --param {p}" for s, p in CANDIDATES)
        raise ConfigError(f"--stage {stage} --param {param}: calibrate chooses {valid}")
    require(ctx.layout.folder("make_cam"), "make_cam")
    if stage == "random_walk" or masks is None:
        require(ctx.layout.folder("random_walk"), "random_walk")
    key = CONFIG_KEYS[(stage, param)]
    current = ctx.cfg.eval.cam_bg_threshold if stage == "cam" else getattr(ctx.cfg.random_walk, param)
    values = sorted(set(values or CANDIDATES[(stage, param)]) | {current})
    ds = ctx.train_set
    t0 = time.perf_counter()
    extra = {}
    if masks is not None:
        names = draw_masked(ds, masks, seed)
        conf, _, computed = evaluate(ctx, stage, param, values, names, masked=names, need_cut=False,
                                     progress_desc=f"calibrate {key} ({masks} masks)")
        best = choose_by_masks(conf)
        sure = stability(conf, choose_by_masks, best, seed)
        score = [round(miou_of(c), 3) for c in conf.sum(0)]
        method, used, measure = "masks", len(names), "mIoU on the drawn images (%)"
    else:
        names = list(ds.names)
        if 0 < images < len(names):
            rng = np.random.default_rng(seed)
            names = sorted(names[i] for i in rng.choice(len(names), images, replace=False))
        method, used = "label-free", 0
        if stage == "cam":
            walk = calibrate(ctx, "random_walk", walk_param(ctx), seed=seed, images=images)
            conf = agreement(ctx, values, names, walk["value"], progress_desc=f"calibrate {key} (label-free)")
            best = choose_by_masks(conf)
            sure = stability(conf, choose_by_masks, best, seed)
            score = [round(miou_of(c), 3) for c in conf.sum(0)]
            computed = walk["affinities_computed"]
            measure = (f"mIoU (%) against the walk's labels at its label-free {walk['config_key']}={walk['value']:g} "
                       f"(higher is better)")
            extra = {"walk": {k: walk[k] for k in ("param", "value", "stability", "values", "score")}}
        else:
            _, cut, border, computed = evaluate(ctx, stage, param, values, names, need_cut=True, return_border=True,
                                                progress_desc=f"calibrate {key} (label-free)")
            if LABEL_FREE[ctx.cfg.random_walk.affinity] == "border":
                cut, measure = border, "mean affinity across the labels' borders (lower is better)"
            else:
                measure = "mean normalised cut of the walk's affinity graph (lower is better)"
            best = choose_by_cut(cut)
            sure = stability(cut, choose_by_cut, best, seed)
            score = [round(float(c), 5) for c in cut.mean(0)]
    value = values[best]
    return {"stage": stage, "param": param, "value": value, "method": method, "masks_used": used,
            "images": len(names), "stability": round(sure, 3), "config_key": key, "current": current,
            "values": values, "score": score, "measure": measure, "seconds": round(time.perf_counter() - t0, 2),
            "affinities_computed": computed, "set": f"--set {key}={value:g}", **extra}


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
