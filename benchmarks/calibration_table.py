"""How well each way of choosing a threshold does on finished runs: the preset's value, the best with every mask, the
choice with a few masks (several random draws), and the label-free choice (``affinitynet calibrate``).

    python benchmarks/calibration_table.py RUN_DIR [RUN_DIR ...] [--masks 10] [--draws 20] [--json PATH]

For each run and each parameter its walk allows (``cam bg_threshold``; ``random_walk alpha`` or ``bg_threshold``),
one pass over the training images gives every candidate's per-image confusion and normalised cut; the draws of
masks, the bootstrap and the label-free choice then only add them up. Every mIoU is on all the run's masks (the
figure a user gets), whichever images chose the value. Also printed: the label-free criteria that were tried
beside the one ``calibrate`` uses (the cut on the raw affinities, beta 1; Otsu's threshold of the CAM peaks).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from affinitynet.calibration import choose_by_masks, evaluate
from affinitynet.ops.criteria import choose_by_cut
from affinitynet.commands.calibrate import CANDIDATES
from affinitynet.ops.metrics import mean_iou
from affinitynet.commands.sweep import run_context
from affinitynet.io import load_cam


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of samples in [0, 1]: the split that maximises the between-class variance."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0, 1))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[1:][np.argmax(between)])


def cam_peaks(ctx, names, per_image: int = 4000, seed: int = 0) -> np.ndarray:
    """Samples of the per-pixel CAM maximum over the images (at most ``per_image`` pixels each)."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        _, maps = load_cam(ctx.layout.cam(name))
        peak = maps.max(0).reshape(-1) if len(maps) else np.zeros(1)
        out.append(peak[rng.choice(peak.size, min(per_image, peak.size), replace=False)])
    return np.concatenate(out)


def walk_agreement(ctx, values, names, walk=None) -> np.ndarray:
    """(T,) mIoU of the CAM labels at each threshold against the run's own pseudo labels, or against the walk's labels
    at ``walk`` = (param, value) (no mask read)."""
    from affinitynet.calibration import Relabeller
    from affinitynet.io import load_label_png
    from affinitynet.ops.metrics import confusion_matrix

    relabel = Relabeller(ctx, "cam", "bg_threshold", values)
    walker = Relabeller(ctx, "random_walk", walk[0], [walk[1]]) if walk else None
    k = ctx.train_set.num_classes + 1
    total = np.zeros((len(values), k, k + 1), np.int64)
    for name in names:
        ref = walker(name).labels[0] if walker else load_label_png(ctx.layout.pseudo_label(name))
        for i, lab in enumerate(relabel(name).labels):
            total[i] += confusion_matrix(lab, ref, k)
    return np.array([mean_iou(c) for c in total])


def table_for(run_dir, stage, param, masks: int, draws: int, seed: int, walk_free=None, full=False) -> dict:
    ctx = run_context(run_dir, "cpu")
    cfg = ctx.cfg
    current = cfg.eval.cam_bg_threshold if stage == "cam" else getattr(cfg.random_walk, param)
    values = sorted(set(CANDIDATES[(stage, param)]) | {current})
    ds = ctx.train_set
    names = list(ds.names)
    masked = ds.mask_names()
    with torch.inference_mode():
        conf, border, cut, _ = evaluate(ctx, stage, param, values, names, masked=masked, graph=True, cut=True,
                                        progress_desc=f"{run_dir} {stage} {param}")
        if full:  # the variants tried: the cut on the raw affinities, the border on the walk's A^beta
            _, border_beta, cut_raw, _ = evaluate(ctx, stage, param, values, names, cut=True, cut_beta=1.0,
                                                  border_beta=cfg.random_walk.beta,
                                                  progress_desc=f"{run_dir} {stage} {param} (variants)")
        else:
            cut_raw, border_beta = cut, border
    miou = [mean_iou(c) for c in conf.sum(0)]
    best = int(np.argmax(miou))
    rng = np.random.default_rng(seed)
    index = {n: i for i, n in enumerate(masked)}
    picks, picks_img, picks_bag = [], [], []
    per_img = per_image_miou(conf)  # (n, T)
    for d in range(draws):
        drawn = [index[n] for n in rng.choice(masked, masks, replace=False)]
        picks.append(choose_by_masks(conf[drawn]))
        picks_img.append(int(np.argmax(per_img[drawn].mean(0))))
        boot = np.random.default_rng(d)
        votes = np.bincount([choose_by_masks(conf[drawn][boot.integers(0, masks, masks)]) for _ in range(50)],
                            minlength=len(values))
        picks_bag.append(int(np.argmax(votes)))
    few = np.array([miou[i] for i in picks])
    few_img = np.array([miou[i] for i in picks_img])
    few_bag = np.array([miou[i] for i in picks_bag])
    free_cut, free_raw = choose_by_cut(cut), choose_by_cut(cut_raw)
    fb_raw, fb = choose_by_cut(border), choose_by_cut(border_beta)
    free = fb_raw  # what calibrate uses: the border affinity
    row = {"run": str(run_dir), "stage": stage, "param": param, "images": len(names), "masked": len(masked),
           "values": values, "miou": [round(m, 2) for m in miou], "cut": [round(float(c), 5) for c in cut.mean(0)],
           "default": current, "default_miou": miou[values.index(current)],
           "best": values[best], "best_miou": miou[best],
           "few_values": [values[i] for i in picks], "few_mean": float(few.mean()), "few_std": float(few.std()),
           "few_img_mean": float(few_img.mean()), "few_img_std": float(few_img.std()),
           "few_bag_mean": float(few_bag.mean()), "few_bag_std": float(few_bag.std()),
           "free": values[free], "free_miou": miou[free], "cut_choice": values[free_cut],
           "cut_miou": miou[free_cut], "free_raw": values[free_raw], "free_raw_miou": miou[free_raw],
           "border": values[fb], "border_miou": miou[fb], "border_raw": values[fb_raw], "border_raw_miou": miou[fb_raw],
           "border_curve": [round(float(c), 5) for c in border.mean(0)]}
    if stage == "cam":
        t = otsu(cam_peaks(ctx, names, seed=seed))
        near = int(np.argmin([abs(v - t) for v in values]))
        agree = walk_agreement(ctx, values, names)
        fa = int(np.argmax(agree))
        row.update(otsu=round(t, 3), otsu_miou=miou[near], agree=values[fa], agree_miou=miou[fa])
        if walk_free:
            agree = walk_agreement(ctx, values, names, walk_free)
            fw = int(np.argmax(agree))
            row.update(agree_free=values[fw], agree_free_miou=miou[fw], agree_free_walk=list(walk_free))
    return row


def per_image_miou(conf: np.ndarray) -> np.ndarray:
    """(n, T, K, K + 1) confusions -> (n, T) each image's own mIoU (its classes in ground truth or prediction)."""
    n, t = conf.shape[:2]
    return np.array([[mean_iou(conf[i, j]) for j in range(t)] for i in range(n)])


def params_of(run_dir) -> list[tuple[str, str]]:
    ctx = run_context(run_dir, "cpu")
    walk = ("random_walk", "alpha") if ctx.cfg.random_walk.background == "power" else ("random_walk", "bg_threshold")
    return [("cam", "bg_threshold"), walk]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--masks", type=int, default=10)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    p.add_argument("--variants", action="store_true", help="also the cut at beta 1 and the border at the walk's beta")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for r in a.runs:
        (cs, cp), (ws, wp) = params_of(r)
        walk = table_for(r, ws, wp, a.masks, a.draws, a.seed, full=a.variants)
        rows += [table_for(r, cs, cp, a.masks, a.draws, a.seed, walk_free=(wp, walk["free"]), full=a.variants), walk]
    print("| run | parameter | default (mIoU) | best, all masks | 10 masks: mIoU mean +- sd (values) | label-free "
          "(loss vs best) | cut at beta 1 | border at the walk's beta | normalised cut | border | Otsu | agreement "
          "with the run's walk |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vals = ",".join(f"{v:g}" for v in sorted(set(r["few_values"])))
        otsu_cell = (f"{r['otsu']:g} ({r['otsu_miou']:.1f}) | {r['agree']:g} ({r['agree_miou']:.1f})" if "otsu" in r
                     else "- | -")
        print(f"| {r['run']} | {r['stage']} {r['param']} | {r['default']:g} ({r['default_miou']:.1f}) | "
              f"{r['best']:g} ({r['best_miou']:.1f}) | {r['few_mean']:.1f} +- {r['few_std']:.1f} ({vals}) | "
              f"{r['free']:g} ({r['free_miou']:.1f}, {r['free_miou'] - r['best_miou']:+.1f}) | "
              f"{r['free_raw']:g} ({r['free_raw_miou']:.1f}) | {r['border']:g} ({r['border_miou']:.1f}) | "
              f"{r['cut_choice']:g} ({r['cut_miou']:.1f}) | {r['border_raw']:g} ({r['border_raw_miou']:.1f}) | "
              f"{otsu_cell} |")
    for r in rows:
        if "agree_free" in r:
            print(f"{r['run']} cam bg_threshold: agreement with the walk at its label-free {r['agree_free_walk'][0]}="
                  f"{r['agree_free_walk'][1]:g}: {r['agree_free']:g} ({r['agree_free_miou']:.1f}, "
                  f"{r['agree_free_miou'] - r['best_miou']:+.1f} vs best, {r['agree_free_miou'] - r['default_miou']:+.1f} "
                  f"vs default)")
    for r in rows:
        print(f"{r['run']} {r['stage']} {r['param']}: 10 masks pooled {r['few_mean']:.1f} +- {r['few_std']:.1f}, "
              f"per-image mean {r['few_img_mean']:.1f} +- {r['few_img_std']:.1f}, bagged {r['few_bag_mean']:.1f} "
              f"+- {r['few_bag_std']:.1f}")
    for r in rows:
        print(f"{r['run']} {r['stage']} {r['param']}: " + "  ".join(
            f"{v:g}:{m:.1f}/{c:.4f}/{b:.4f}" for v, m, c, b in zip(r["values"], r["miou"], r["cut"],
                                                                   r["border_curve"])))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
