"""How each stage's result is shown: its line in the run table and its column in the report's pictures.

Read from the files the stages wrote (``metrics.json`` entries, label PNGs, CAM files); nothing here
runs a network, so the report and the demo table import no model code. Keyed by stage name; a stage
without an entry is left out of the table and the pictures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .io import load_cam, load_label_png
from .layout import RunLayout
from .visualize import cam_overlay, confident_colours, label_colours


@dataclass(frozen=True)
class View:
    """``rows(metrics) -> [(measure, value)]``, headline first; ``picture(layout, name, image) -> (rgb, nearest)``."""

    title: str
    rows: Callable[[dict], list[tuple[str, object]]]
    picture: Callable[[RunLayout, str, np.ndarray], tuple[np.ndarray, bool] | None] | None = None


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _label_picture(path_of, colours):
    def picture(layout: RunLayout, name: str, image: np.ndarray):
        path = path_of(layout, name)
        return (colours(load_label_png(path)), True) if path.is_file() else None
    return picture


def _cam_picture(layout: RunLayout, name: str, image: np.ndarray):
    path = layout.cam(name)
    return (cam_overlay(image, load_cam(path)[1]), False) if path.is_file() else None


def _cam_rows(m: dict):
    rows = [(f"{m.get('split', 'train')} mIoU, bg threshold {m.get('threshold', '-')}", m.get("miou"))]
    if "miou_best" in m:
        rows.append((f"best of the sweep (threshold {m.get('best_threshold')}, chosen on these images)",
                     m["miou_best"]))
    return rows


def _confident_rows(m: dict):
    """Confident fg / bg labels (AffinityNet's or IRN's): their precision against the masks, the share ignored."""
    return [("fg / bg precision, ignored (%)",
             f"{_pct(m.get('fg_precision'))} / {_pct(m.get('bg_precision'))}, {_pct(m.get('ignored'))}")]


def _crf_rows(m: dict):
    """A ``*_crf`` row of ``evaluate`` (eval.crf_rows): the dense CRF on the stage's soft scores."""
    return [(f"{m.get('split', 'train')} mIoU, dense CRF", m.get("miou"))]


def _segmentation_network_rows(m: dict):
    """Its val mIoU beside how well it fits its own training labels (a gap between them is underfitting)."""
    rows = []
    if "val_miou_single_scale" in m:
        rows.append(("val mIoU, single scale", m["val_miou_single_scale"]))
    if "train_fit_miou" in m:
        labels = {"pseudo": "its pseudo labels", "gt": "the ground truth"}.get(m.get("labels"), "its training labels")
        rows.append((f"train mIoU vs {labels}, single scale", m["train_fit_miou"]))
    return rows


# Keys that are no stage (cam_crf, random_walk_crf, segmentation_crf) are rows evaluate adds to metrics.json.
VIEWS = {
    "train_cam": View("classifier", lambda m: [("val mAP (%)", m.get("map"))]),
    "make_cam": View("CAM labels", _cam_rows, _cam_picture),
    "cam_crf": View("CAM labels + CRF", _crf_rows),
    "make_affinity_labels": View("confident regions", _confident_rows,
                                 _label_picture(RunLayout.affinity_label, confident_colours)),
    "train_affinitynet": View("AffinityNet", lambda m: [("val pair AP (%)", m.get("ap"))]),
    "make_ir_labels": View("relation labels", _confident_rows, _label_picture(RunLayout.ir_label, confident_colours)),
    "train_boundary": View("boundary network", lambda m: [("val pair AP (%)", m.get("ap"))]),
    "random_walk": View("random walk", lambda m: [(f"{m.get('split', 'train')} mIoU"
                                                   + (", class-boundary affinities" if m.get("affinity") == "boundary"
                                                      else ""), m.get("miou"))],
                        _label_picture(RunLayout.pseudo_label, label_colours)),
    "random_walk_crf": View("random walk + CRF", _crf_rows),
    "train_segmentation": View("segmentation network", _segmentation_network_rows),
    "segment": View("segmentation", lambda m: [(f"{m.get('split', 'val')} mIoU", m.get("miou"))],
                    _label_picture(RunLayout.preview, label_colours)),
    "segmentation_crf": View("segmentation + CRF", _crf_rows),
}
