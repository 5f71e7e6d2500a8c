"""Segmentation metrics: confusion matrices (bincount, 255 ignored), IoU / mIoU, CAM labels and threshold sweeps.

A confusion matrix here is (K, K + 1) int64 over K = C + 1 classes: row = ground-truth class, column =
predicted class, and a last column for pixels whose prediction is not a class (255 or >= K). That column
keeps such pixels as false negatives of their ground-truth class without crediting any class with a false
positive. Pure functions: arrays or tensors in, arrays or numbers out, no files.
"""
from __future__ import annotations

import numpy as np
import torch

from ..conventions import IGNORE


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred, gt, num_classes: int) -> np.ndarray:
    """(...) pred, (...) gt ids -> (K, K + 1) int64 counts [gt, pred]; gt 255 ignored, pred 255 / >= K in column K."""
    pred, gt = _np(pred), _np(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth {gt.shape}")
    k = int(num_classes)
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    valid = gt != IGNORE
    gt, pred = gt[valid], pred[valid]
    if gt.size and (gt.min() < 0 or gt.max() >= k):
        bad = sorted(set(np.unique(gt[(gt < 0) | (gt >= k)]).tolist()))
        raise ValueError(f"ground truth holds ids {bad} outside 0..{k - 1} and 255")
    pred = np.where((pred < 0) | (pred >= k), k, pred)
    return np.bincount(gt * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)


def mean_iou(conf) -> float:
    """mIoU (%) of a (K, K + 1) or (K, K) confusion over the classes present in ground truth or prediction (0.0 when
    none is); ``scores`` gives it with the per-class figures."""
    conf = _np(conf)
    k = conf.shape[0]
    tp = np.diag(conf[:, :k]).astype(np.float64)
    union = conf.sum(1) + conf[:, :k].sum(0) - tp
    present = union > 0
    return float(100.0 * np.mean(tp[present] / union[present])) if present.any() else 0.0


def scores(conf, names: list[str]) -> dict:
    """(K, K + 1) or (K, K) confusion -> dict(miou, iou, precision, recall, pixel_accuracy, pixels, confusion).

    Percentages; ``confusion`` is the matrix itself as nested lists of pixel counts [gt][pred] (the report
    draws it).

    IoU = TP / (TP + FP + FN); per-class values are None for classes absent from both ground truth and
    prediction, and the mean runs over the others (0.0 when there are none).
    """
    conf = _np(conf).astype(np.int64)
    k = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (k, k + 1):
        raise ValueError(f"confusion matrix must be (K, K) or (K, K + 1), got {conf.shape}")
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(conf[:, :k]).astype(np.float64)
    gt_total = conf.sum(1).astype(np.float64)
    pred_total = conf[:, :k].sum(0).astype(np.float64)
    union = gt_total + pred_total - tp
    present = union > 0

    def pct(num, den, ok):
        return {n: (float(100.0 * a / b) if o else None) for n, a, b, o in zip(names, num, den, ok)}

    iou = pct(tp, union, present)
    total = float(gt_total.sum())
    return {
        "miou": mean_iou(conf),
        "iou": iou,
        "precision": pct(tp, pred_total, pred_total > 0),
        "recall": pct(tp, gt_total, gt_total > 0),
        "pixel_accuracy": float(100.0 * tp.sum() / total) if total > 0 else 0.0,
        "pixels": int(total),
        "confusion": conf.tolist(),
    }


def format_table(result: dict) -> str:
    """A console table of ``scores(...)``: class, IoU, precision, recall, then mIoU and pixel accuracy."""
    names = list(result["iou"])
    width = max([len("class"), len("mIoU")] + [len(n) for n in names])

    def cell(v):
        return f"{v:9.2f}" if v is not None else f"{'-':>9}"

    lines = [f"{'class':<{width}} {'IoU':>9} {'precision':>9} {'recall':>9}"]
    lines.append("-" * len(lines[0]))
    for n in names:
        lines.append(f"{n:<{width}} {cell(result['iou'][n])} {cell(result['precision'][n])} "
                     f"{cell(result['recall'][n])}")
    lines.append("-" * len(lines[0]))
    lines.append(f"{'mIoU':<{width}} {cell(result['miou'])}   pixel accuracy {result['pixel_accuracy']:.2f}")
    return "\n".join(lines)


def cam_labels(cam_scores, keys, bg_threshold: float) -> np.ndarray:
    """(C', H, W) CAMs in [0, 1], (C',) class ids -> (H, W) uint8 argmax of [bg_threshold, CAMs]; ties go to bg."""
    cams = _np(cam_scores).astype(np.float32)
    keys = _np(keys).astype(np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != keys.size:
        raise ValueError(f"expected (C', H, W) CAMs with C' = {keys.size} keys, got {cams.shape}")
    if keys.size == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    stack = np.concatenate([np.full((1,) + cams.shape[1:], bg_threshold, dtype=np.float32), cams])
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    return lut[stack.argmax(0)]


def cam_sweep(cams, keys, gt, thresholds, num_classes: int) -> np.ndarray:
    """(C', H, W) CAMs, (C',) ids, (H, W) gt, (T,) thresholds -> (T, K, K + 1): ``cam_labels`` confusions.

    One pass over the pixels: a pixel is foreground (its argmax class) exactly for the thresholds below its
    CAM maximum, so per-pixel counts by (number of thresholds below the max, gt, class) give every threshold
    by cumulative sums.
    """
    cams = _np(cams).astype(np.float32)
    keys = _np(keys).astype(np.int64).reshape(-1)
    gt = _np(gt)
    thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    k = int(num_classes)
    t = thr.size
    if keys.size == 0:
        conf = confusion_matrix(np.zeros(gt.shape, dtype=np.int64), gt, k)
        return np.broadcast_to(conf, (t, k, k + 1)).copy()
    if cams.shape != (keys.size,) + gt.shape:
        raise ValueError(f"CAMs {cams.shape} do not match {keys.size} keys and ground truth {gt.shape}")
    fg_class = keys[cams.argmax(0)].reshape(-1)
    peak = cams.max(0).reshape(-1)
    g = gt.reshape(-1).astype(np.int64)
    valid = g != IGNORE
    fg_class, peak, g = fg_class[valid], peak[valid], g[valid]
    if g.size and (g.min() < 0 or g.max() >= k):
        raise ValueError(f"ground truth holds ids outside 0..{k - 1} and 255")
    fg_class = np.where((fg_class < 0) | (fg_class >= k), k, fg_class)
    order = np.argsort(thr, kind="stable")
    below = np.searchsorted(thr[order], peak, side="left")  # thresholds strictly below the peak: 0..T
    counts = np.bincount((below * k + g) * (k + 1) + fg_class,
                         minlength=(t + 1) * k * (k + 1)).reshape(t + 1, k, k + 1)
    # sorted threshold i: foreground where below > i, background where below <= i
    fg = np.cumsum(counts[::-1], axis=0)[::-1][1:]  # fg[i] = sum_{j > i} counts[j]
    bg = np.cumsum(counts, axis=0)[:-1].sum(axis=2)  # bg[i, gt] = sum_{j <= i} counts[j, gt, :]
    out_sorted = fg.copy()
    out_sorted[:, :, 0] += bg
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


def average_precision(scores, positive) -> float:
    """AP of ``scores`` (N,) ranking ``positive`` (N,) bool items first; ties form one step (as sklearn)."""
    s = _np(scores).reshape(-1).astype(np.float64)
    p = _np(positive).reshape(-1).astype(np.float64)
    if s.size != p.size:
        raise ValueError(f"{s.size} scores for {p.size} labels")
    n_pos = p.sum()
    if n_pos == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    s, p = s[order], p[order]
    tp = np.cumsum(p)
    seen = np.arange(1, s.size + 1, dtype=np.float64)
    last_of_group = np.ones(s.size, dtype=bool)
    last_of_group[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last_of_group], seen[last_of_group]
    recall_step = np.diff(tp / n_pos, prepend=0.0)
    return float((recall_step * tp / seen).sum())
