"""``RUN_DIR/report.html``: one self-contained page about a run (inline CSS, SVG charts, base64 PNG images).

The page shows the per-stage results, per-class IoU, the CAM threshold sweep, the loss curves of the three
training stages and a few training images beside their CAM, confident regions, pseudo label, prediction
and ground truth. Whatever a run has not produced is left out with a note; nothing is made up.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io as _io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import Config
from .io import load_label_png, read_json, write_text
from .runs import load_manifest
from .visualize import cam_overlay, confident_colours, label_colours, thumbnail

THUMB = 160  # thumbnail width (px)
COLOURS = ["#3b6fb6", "#e07b39", "#4a9d5b", "#c0504d", "#8064a2", "#4bacc6", "#9b8b3e", "#7f7f7f"]

# metrics.json key -> (title, which split it is measured on)
STAGE_TITLES = {
    "cam": "CAM",
    "cam_crf": "CAM + CRF",
    "random_walk": "random walk",
    "random_walk_crf": "random walk + CRF",
    "segmentation": "segmentation",
    "upper_bound": "fully supervised",
}
# training stages with a history.jsonl: (folder, title)
TRAINING = [("classifier", "classification network"), ("affinitynet", "AffinityNet"),
            ("segmentation", "segmentation network")]


# ----------------------------------------------------------------------------- small helpers

def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v) -> str:
    return f"{v:.1f}" if _finite(v) else "–"


def _num(v) -> str:
    """A number for a table cell: integers as such, small floats with 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _e(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return "–"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def _seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def png_data_uri(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 image -> ``data:image/png;base64,...`` string."""
    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_history(path: Path) -> list[dict]:
    """Rows of a ``history.jsonl`` written by ``engine.fit`` (a line cut short at the end is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# ----------------------------------------------------------------------------- SVG charts

def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (steps 1, 2, 2.5, 5 x 10^k) covering [lo, hi] with about ``n`` intervals."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag * (1 + 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    count = int(round((end - start) / step))
    return [round(start + i * step, 12) for i in range(count + 1)]


def _tick_label(v: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / 10 ** math.floor(math.log10(step) + 1e-9) - 2.5) < 1e-6:
        decimals += 1
    if max(abs(t) for t in ticks) >= 10000:
        return f"{v / 1000:g}k" if step >= 1000 else f"{v:.4g}"
    return f"{v:.{decimals}f}"


@dataclass
class Series:
    """One line of a chart: (x, y) points; dashed and/or with point markers."""

    name: str
    points: list[tuple[float, float]]
    colour: str = ""
    dashed: bool = False
    markers: bool = False


def svg_line_chart(series: list[Series], *, width: int = 520, height: int = 240, xlabel: str = "",
                   ylabel: str = "", y_range: tuple[float, float] | None = None,
                   vlines: tuple[tuple[float, str], ...] = ()) -> str:
    """Inline SVG line chart of ``series`` (non-finite points dropped); ``vlines`` are (x, label) markers."""
    series = [dataclasses.replace(s, points=[(float(x), float(y)) for x, y in s.points
                                             if _finite(x) and _finite(y)],
                                  colour=s.colour or COLOURS[i % len(COLOURS)]) for i, s in enumerate(series)]
    series = [s for s in series if s.points]
    if not series:
        return ""
    xs = [x for s in series for x, _ in s.points] + [x for x, _ in vlines]
    ys = [y for s in series for _, y in s.points]
    xt = nice_ticks(min(xs), max(xs), 5)
    yt = nice_ticks(*(y_range or (min(ys), max(ys))), 4)
    left, right, bottom = 52, 14, 38
    legend, lx, ly = [], left, 0  # legend above the plot, wrapped onto as many lines as it needs
    for s in series:
        item = 30 + 6.2 * len(s.name)
        if lx > left and lx + item > width - right:
            lx, ly = left, ly + 15
        legend.append((s, lx, ly))
        lx += item
    top = 30 + ly
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y):
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" font-family="inherit" font-size="11">']
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e9ee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="#667">'
                   f'{_tick_label(t, yt)}</text>')
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#99a"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#667">'
                   f'{_tick_label(t, xt)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c9ced6"/>')
    for x, label in vlines:
        px = sx(x)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="#aab" '
                   f'stroke-dasharray="3,3"/>')
        out.append(f'<text x="{px + 3:.1f}" y="{top + 11}" fill="#778" font-size="10">{_e(label)}</text>')
    for s in series:
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<polyline class="series" data-name="{_e(s.name)}" points="{pts}" fill="none" '
                   f'stroke="{s.colour}" stroke-width="1.6"{dash}/>')
        if s.markers or len(s.points) == 1:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.colour}"/>' for x, y in s.points]
    for s, lx, ly in legend:
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 16:.1f}" y1="{ly + 12}" y2="{ly + 12}" stroke="{s.colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly + 16}" fill="#334">{_e(s.name)}</text>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" fill="#556">'
                   f'{_e(xlabel)}</text>')
    if ylabel:
        out.append(f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" fill="#556" '
                   f'transform="rotate(-90 12 {top + ph / 2:.1f})">{_e(ylabel)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_bar_chart(items: list[tuple[str, float]], *, width: int = 460, vmax: float = 100.0, unit: str = "") -> str:
    """Inline SVG horizontal bar chart of (label, value) with values from 0 to ``vmax``."""
    items = [(label, float(v)) for label, v in items if _finite(v)]
    if not items:
        return ""
    left, right, top, row = 130, 56, 8, 28
    pw = width - left - right
    height = top + row * len(items) + 22
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" font-family="inherit" font-size="12">']
    for i in range(5):
        t = vmax * i / 4
        x = left + pw * i / 4
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row * len(items)}" stroke="#e6e9ee"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#667" font-size="10">'
                   f'{t:g}</text>')
    for i, (label, v) in enumerate(items):
        y = top + i * row
        w = pw * min(max(v, 0.0), vmax) / vmax
        colour = COLOURS[i % len(COLOURS)]
        out.append(f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end" fill="#334">{_e(label)}</text>')
        out.append(f'<rect class="bar" data-name="{_e(label)}" x="{left}" y="{y + 5}" width="{w:.2f}" '
                   f'height="{row - 10}" rx="3" fill="{colour}"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + row / 2 + 4:.1f}" fill="#223">{v:.1f}{_e(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------- sections

def _stage_title(key: str) -> str:
    return STAGE_TITLES.get(key, key.replace("_", " "))


def _split_of(key: str, m: dict) -> str:
    if "split" in m:
        return str(m["split"])
    return "val" if key == "segmentation" else "train"


def stage_rows(metrics: dict, manifest: dict) -> list[tuple[str, str, str, float | None]]:
    """(stage, measure, value, seconds) rows of the per-stage table, as ``demo.demo_table``; absent ones left out."""
    secs = {k: v.get("seconds") for k, v in manifest.items() if v.get("status") == "done"}

    def t(*names):
        vals = [secs[n] for n in names if secs.get(n) is not None]
        return sum(vals) if vals else None

    rows = []
    if "classifier" in metrics or "train_cam" in secs:
        rows.append(("classifier", "val mAP (%)", _pct(metrics.get("classifier", {}).get("map")), t("train_cam")))
    cam = metrics.get("cam")
    if cam is not None:
        rows.append(("CAM labels", f"train mIoU, bg threshold {cam.get('threshold', '–')}",
                     _pct(cam.get("miou")), t("make_cam")))
        if "miou_best" in cam:
            rows.append(("", f"best of the sweep (threshold {cam.get('best_threshold', '–')}, chosen on these images)",
                         _pct(cam["miou_best"]), None))
    elif "make_cam" in secs:
        rows.append(("CAM labels", "train mIoU", "–", t("make_cam")))
    al = metrics.get("affinity_labels")
    if al is not None or "make_affinity_labels" in secs:
        al = al or {}
        rows.append(("confident regions", "train fg precision (%)", _pct(al.get("fg_precision")),
                     t("make_affinity_labels")))
        rows.append(("", "train bg precision (%)", _pct(al.get("bg_precision")), None))
        rows.append(("", "ignored pixels (%)", _pct(al.get("ignored")), None))
    if "affinitynet" in metrics or "train_affinitynet" in secs:
        rows.append(("AffinityNet", "val pair AP (%)", _pct(metrics.get("affinitynet", {}).get("ap")),
                     t("train_affinitynet")))
    if "random_walk" in metrics or "random_walk" in secs:
        rows.append(("random walk", "train mIoU", _pct(metrics.get("random_walk", {}).get("miou")),
                     t("random_walk")))
    seg = metrics.get("segmentation")
    if seg is not None or "train_segmentation" in secs or "segment" in secs:
        split = _split_of("segmentation", seg or {})
        rows.append(("segmentation", f"{split} mIoU", _pct((seg or {}).get("miou")),
                     t("train_segmentation", "segment")))
    return rows


def _section_summary(run_dir: Path, cfg: Config, metrics: dict, manifest: dict) -> str:
    rows = stage_rows(metrics, manifest)
    parts = ['<section><h2>Results per stage</h2><div class="row"><div>']
    if rows:
        parts.append('<table><thead><tr><th>stage</th><th>measure</th><th class="num">value</th>'
                     '<th class="num">time</th></tr></thead><tbody>')
        for stage, measure, value, secs in rows:
            parts.append(f'<tr><td>{_e(stage)}</td><td>{_e(measure)}</td><td class="num">{_e(value)}</td>'
                         f'<td class="num">{_seconds(secs) if secs is not None else ""}</td></tr>')
        total = sum(v.get("seconds", 0.0) for v in manifest.values() if v.get("status") == "done")
        parts.append(f'<tr class="total"><td>total</td><td></td><td></td><td class="num">{_seconds(total)}</td>'
                     f'</tr></tbody></table>')
    else:
        parts.append('<p class="note">No stage has finished or been scored yet.</p>')
    from .pipeline import STAGE_NAMES

    missing = [n for n in STAGE_NAMES if manifest.get(n, {}).get("status") not in ("done", "running")]
    if missing:
        parts.append(f'<p class="note">Not run: {_e(", ".join(missing))}.</p>')
    if "cam" in metrics or "random_walk" in metrics:
        unscored = [n for n in ("cam", "random_walk", "segmentation") if n not in metrics]
        if unscored:
            parts.append(f'<p class="note">Not scored: {_e(", ".join(_stage_title(n) for n in unscored))}.</p>')
    parts.append("</div>")
    bars = [(f"{_stage_title(k)} ({_split_of(k, m)})", m["miou"]) for k, m in metrics.items()
            if isinstance(m, dict) and _finite(m.get("miou"))]
    if bars:
        parts.append(f'<figure><figcaption>mIoU (%)</figcaption>{svg_bar_chart(bars)}</figure>')
    parts.append("</div></section>")
    return "".join(parts)


def _section_classes(metrics: dict) -> str:
    stages = [(k, m) for k, m in metrics.items() if isinstance(m, dict) and isinstance(m.get("iou"), dict)]
    cam = metrics.get("cam", {})
    sweep = cam.get("sweep") if isinstance(cam.get("sweep"), dict) else None
    if not stages and not sweep:
        return ('<section><h2>Per-class IoU</h2><p class="note">No stage was scored against ground-truth masks.'
                '</p></section>')
    parts = ['<section><h2>Per-class IoU (%)</h2><div class="row">']
    if stages:
        classes = []
        for _, m in stages:
            classes += [c for c in m["iou"] if c not in classes]
        parts.append('<div><table class="iou"><thead><tr><th>class</th>')
        parts += [f'<th class="num">{_e(_stage_title(k))}<br><span class="sub">{_e(_split_of(k, m))}</span></th>'
                  for k, m in stages]
        parts.append("</tr></thead><tbody>")
        for c in classes:
            parts.append(f"<tr><td>{_e(c)}</td>")
            parts += [f'<td class="num">{_pct(m["iou"].get(c))}</td>' for _, m in stages]
            parts.append("</tr>")
        parts.append('<tr class="total"><td>mIoU</td>')
        parts += [f'<td class="num">{_pct(m.get("miou"))}</td>' for _, m in stages]
        parts.append("</tr></tbody></table></div>")
    if sweep:
        pts = sorted((float(t), v) for t, v in sweep.items() if _finite(v))
        vlines = []
        if _finite(cam.get("threshold")):
            vlines.append((float(cam["threshold"]), "fixed"))
        best = cam.get("best_threshold")
        if _finite(best) and best != cam.get("threshold"):
            vlines.append((float(best), "best"))
        chart = svg_line_chart([Series("CAM mIoU", pts, markers=True)], width=420, height=220,
                               xlabel="background threshold", ylabel="mIoU (%)", vlines=tuple(vlines))
        parts.append(f'<figure><figcaption>CAM labels: mIoU over the background threshold</figcaption>'
                     f'{chart}</figure>')
    parts.append("</div></section>")
    return "".join(parts)


def _training_block(path: Path, title: str) -> str:
    rows = read_history(path)
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    src = steps or epochs
    loss_keys = [k for k in (src[0] if src else {}) if k == "loss" or k.endswith("_loss")]
    count_keys = [k for k in (src[0] if src else {}) if k.endswith("_count")]
    parts = [f'<div class="train"><h3>{_e(title)}</h3>']
    if not src:
        parts.append(f'<p class="note">{_e(path.name)} holds no rows.</p></div>')
        return "".join(parts)
    series = [Series(k if steps else f"{k} (epoch mean)", [(r["step"], r.get(k)) for r in src]) for k in loss_keys]
    if steps and epochs and "loss" in epochs[0]:
        series.append(Series("loss (epoch mean)", [(r["step"], r.get("loss")) for r in epochs], colour="#222",
                             dashed=True, markers=True))
    parts.append(svg_line_chart(series, xlabel="iteration", ylabel="loss"))
    if count_keys:
        parts.append(svg_line_chart([Series(k.replace("_count", " pairs"), [(r["step"], r.get(k)) for r in src])
                                     for k in count_keys], height=200, xlabel="iteration", ylabel="pairs / batch"))
    if epochs:
        val_keys = []
        for r in epochs:
            val_keys += [k for k, v in (r.get("val") or {}).items() if k not in val_keys and not isinstance(v, dict)]
        parts.append('<div class="scroll"><table class="small"><thead><tr><th class="num">epoch</th>'
                     '<th class="num">iteration</th><th class="num"><span class="sub">train</span><br>loss</th>')
        parts += [f'<th class="num"><span class="sub">val</span><br>{_e(k.removeprefix("val_").replace("_", " "))}</th>'
                  for k in val_keys]
        parts.append('<th class="num">time</th></tr></thead><tbody>')
        for r in epochs:
            val = r.get("val") or {}
            parts.append(f'<tr><td class="num">{_num(r.get("epoch"))}</td><td class="num">{_num(r.get("step"))}</td>'
                         f'<td class="num">{_num(r.get("loss"))}</td>')
            parts += [f'<td class="num">{_num(val[k]) if k in val else "–"}</td>' for k in val_keys]
            ts = r.get("time_s")
            parts.append(f'<td class="num">{_seconds(ts) if _finite(ts) else ""}</td></tr>')
        parts.append("</tbody></table></div>")
    parts.append("</div>")
    return "".join(parts)


def _section_training(run_dir: Path) -> str:
    parts = ['<section><h2>Training</h2><div class="grid">']
    missing = []
    for folder, title in TRAINING:
        p = run_dir / folder / "history.jsonl"
        if p.is_file():
            parts.append(_training_block(p, title))
        else:
            missing.append(title)
    parts.append("</div>")
    if missing:
        parts.append(f'<p class="note">No training history for: {_e(", ".join(missing))}.</p>')
    parts.append("</section>")
    return "".join(parts)


# ----------------------------------------------------------------------------- example images

@dataclass
class _Column:
    key: str
    title: str
    path_of: object = None  # name -> Path that must exist, or None


def _prediction_model(run_dir: Path, cfg: Config, num_classes: int):
    """The trained segmentation network on the CPU, or None when ``segmentation/final.pt`` is missing."""
    path = run_dir / "segmentation" / "final.pt"
    if not path.is_file():
        return None
    import torch

    from .models import build_deeplab
    from .stages.common import build_trained

    return build_trained(build_deeplab, cfg.segmentation, num_classes + 1, path=path, device=torch.device("cpu"),
                         stage="train_segmentation")


def _swatch(rgb, label: str) -> str:
    r, g, b = (int(v) for v in rgb)
    return f'<span class="swatch"><i style="background:rgb({r},{g},{b})"></i>{_e(label)}</span>'


def _section_images(run_dir: Path, cfg: Config, n: int) -> str:
    head = "<section><h2>Training images</h2>"
    if n <= 0:
        return head + '<p class="note">eval.report_images is 0: no images shown.</p></section>'
    if not Path(cfg.data.root).exists():
        return head + f'<p class="note">Data root {_e(cfg.data.root)} not found: no images shown.</p></section>'
    from .data import build_dataset
    from .errors import AffinityNetError

    try:
        ds = build_dataset(cfg.data, cfg.data.train_split)
    except AffinityNetError as e:
        return head + f'<p class="note">Training split not readable ({_e(e)}): no images shown.</p></section>'

    notes = []
    cols = [_Column("image", "image")]
    for key, title, folder, suffix, stage in (("cam", "CAM", "cam", ".npz", "make_cam"),
                                              ("confident", "confident regions", "affinity_labels", ".png",
                                               "make_affinity_labels"),
                                              ("random_walk", "random walk", "pseudo_labels", ".png", "random_walk")):
        if (run_dir / folder).is_dir():
            cols.append(_Column(key, title, lambda name, f=folder, s=suffix: run_dir / f / f"{name}{s}"))
        else:
            notes.append(f"{title}: {folder}/ not found ({stage} has not run)")
    model = _prediction_model(run_dir, cfg, ds.num_classes)
    if model is not None:
        cols.append(_Column("prediction", "prediction"))
    else:
        notes.append("prediction: segmentation/final.pt not found (train_segmentation has not run)")
    if ds.has_masks:
        cols.append(_Column("gt", "ground truth"))

    names = []
    for name in ds.names:
        if len(names) >= n:
            break
        if all(c.path_of is None or c.path_of(name).is_file() for c in cols):
            names.append(name)
    if not names:
        return head + '<p class="note">No training image has all of its stage outputs yet.</p></section>'

    from .stages.common import load_cam
    from .stages.segment import predict_label

    parts = [head, '<table class="images"><thead><tr><th>name</th>']
    parts += [f'<th data-col="{c.key}">{_e(c.title)}</th>' for c in cols]
    parts.append("</tr></thead><tbody>")
    for name in names:
        image = ds.load_image(name)
        parts.append(f'<tr class="sample" data-name="{_e(name)}"><td class="name">{_e(name)}</td>')
        for c in cols:
            if c.key == "image":
                pic, nearest = image, False
            elif c.key == "cam":
                _, maps = load_cam(run_dir, name)
                pic, nearest = cam_overlay(image, maps), False
            elif c.key == "confident":
                pic, nearest = confident_colours(load_label_png(c.path_of(name))), True
            elif c.key == "random_walk":
                pic, nearest = label_colours(load_label_png(c.path_of(name))), True
            elif c.key == "prediction":
                pic, nearest = label_colours(predict_label(model, image, "cpu",
                                                           max_long_side=cfg.segmentation.test_max_long_side)), True
            else:
                mask = ds.load_mask(name)
                if mask is None:
                    parts.append(f'<td data-col="{c.key}" class="none">no mask</td>')
                    continue
                pic, nearest = label_colours(mask), True
            thumb = thumbnail(pic, THUMB, nearest=nearest)
            parts.append(f'<td data-col="{c.key}"><img alt="{_e(c.title)}" width="{thumb.shape[1]}" '
                         f'height="{thumb.shape[0]}" src="{png_data_uri(thumb)}"></td>')
        parts.append("</tr>")
    parts.append("</tbody></table>")
    swatches = [_swatch(label_colours(np.array([i]))[0], label) for i, label in enumerate(ds.label_names)]
    swatches.append(_swatch(confident_colours(np.array([255]))[0], "ignored (confident regions)"))
    swatches = "".join(swatches)
    parts.append(f'<p class="legend">{swatches}</p>')
    if notes:
        parts.append(f'<p class="note">Left out: {_e("; ".join(notes))}.</p>')
    parts.append("</section>")
    return "".join(parts)


# ----------------------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2933;
background:#f5f7fa;margin:0;padding:24px;font-size:14px;line-height:1.45}
main{max-width:1200px;margin:0 auto}
h1{font-size:22px;margin:0 0 8px;font-weight:600}
h2{font-size:17px;margin:0 0 12px;font-weight:600;color:#243b53}
h3{font-size:14px;margin:4px 0 6px;font-weight:600;color:#334e68}
section,header{background:#fff;border:1px solid #e1e5eb;border-radius:8px;padding:16px 20px;margin:0 0 16px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0;color:#486581}
dl.meta dt{color:#829ab1}dl.meta dd{margin:0;word-break:break-all}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}
th,td{padding:4px 10px;border-bottom:1px solid #edf0f3;text-align:left;vertical-align:middle}
th{font-weight:600;color:#486581;background:#f8fafc;border-bottom:1px solid #d9e2ec}
td.num,th.num{text-align:right}
tr.total td{font-weight:600;border-top:1px solid #d9e2ec}
.sub{font-weight:400;color:#829ab1;font-size:11px}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(545px,1fr));gap:16px}
.train{border:1px solid #edf0f3;border-radius:6px;padding:8px 10px}
.scroll{max-height:200px;overflow:auto;margin-top:6px}
table.small{font-size:12px}table.small td,table.small th{padding:2px 8px}
figure{margin:0}figcaption{font-size:12px;color:#627d98;margin-bottom:4px}
svg.chart{display:block}
table.images td{padding:3px;border:none}table.images th{text-align:center;font-size:12px}
table.images img{display:block;border-radius:3px;border:1px solid #e4e7eb;image-rendering:auto}
td.name{font-size:11px;color:#627d98;writing-mode:vertical-rl;transform:rotate(180deg);padding:0 2px}
td.none{color:#9aa5b1;font-size:12px;text-align:center}
.note{color:#7b8794;font-size:12.5px;margin:8px 0 0}
.legend{font-size:12px;color:#486581;margin:10px 0 0}
.swatch{display:inline-flex;align-items:center;margin-right:14px}
.swatch i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;border:1px solid #ccd}
"""


def _header(run_dir: Path, cfg: Config, manifest: dict) -> str:
    done = [v for v in manifest.values() if v.get("status") == "done"]
    total = sum(v.get("seconds", 0.0) for v in done)
    finished = [v["finished"] for v in done if _finite(v.get("finished"))]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(finished))) if finished else "–"
    seg = cfg.segmentation
    items = [
        ("run", str(Path(run_dir).resolve())),
        ("data", f"{cfg.data.kind}: {cfg.data.root} (train split {cfg.data.train_split}, "
                 f"val split {cfg.data.val_split})"),
        ("backbones", f"classifier {cfg.cam.backbone}, AffinityNet {cfg.affinitynet.backbone}, "
                      f"segmentation {seg.backbone} + {seg.head}"),
        ("last stage finished", when),
        ("report written", time.strftime("%Y-%m-%d %H:%M")),
        ("total stage time", _seconds(total) + f" over {len(done)} stage(s)"),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f'<header><h1>AffinityNet run report</h1><dl class="meta">{rows}</dl></header>'


def render_report(run_dir: Path, cfg: Config) -> str:
    """The report page of ``run_dir`` as one HTML string (no external references)."""
    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    metrics = read_json(mpath) if mpath.is_file() else {}
    manifest = load_manifest(run_dir)
    body = [
        _header(run_dir, cfg, manifest),
        _section_summary(run_dir, cfg, metrics, manifest),
        _section_classes(metrics),
        _section_training(run_dir),
        _section_images(run_dir, cfg, cfg.eval.report_images),
    ]
    if not mpath.is_file():
        body.insert(1, '<section><p class="note">metrics.json not found: the evaluate stage has not run, '
                       'so no scores are shown.</p></section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>AffinityNet report: {_e(run_dir.name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report(run_dir: Path, cfg: Config) -> Path:
    """Write ``RUN_DIR/report.html`` atomically and return its path."""
    path = Path(run_dir) / "report.html"
    write_text(path, render_report(run_dir, cfg))
    return path
