"""The report's sections, each drawn from files the stages wrote: metrics, manifest, histories, pictures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import Config
from ..layout import FOLDERS, RunLayout
from ..views import VIEWS
from ..visualize import confident_colours, label_colours, thumbnail
from .charts import Series, esc, finite, num, pct, png_data_uri, seconds, svg_bar_chart, svg_line_chart

THUMB = 160  # thumbnail width (px)


def stage_title(key: str) -> str:
    """A metrics.json key (a stage's folder) -> the title its view gives it."""
    for stage, folder in FOLDERS.items():
        if folder == key and stage in VIEWS:
            return VIEWS[stage].title
    if key in VIEWS:  # rows that are no stage's folder (cam_crf, ...)
        return VIEWS[key].title
    return key.replace("_", " ")


def split_of(key: str, m: dict) -> str:
    return str(m.get("split", "val" if key.startswith("segmentation") else "train"))


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


def stage_rows(metrics: dict, manifest: dict) -> list[tuple[str, str, str, float | None]]:
    """(title, measure, value, seconds) rows of the per-stage table; stages that neither ran nor scored left out."""
    rows = []
    for stage, view in VIEWS.items():
        rec = manifest.get(stage, {})
        secs = rec.get("seconds") if rec.get("status") == "done" else None
        folder = FOLDERS.get(stage, stage)
        lines = view.rows(metrics.get(folder, {})) if folder in metrics else []
        if not lines and secs is None:
            continue
        lines = lines or [("", None)]
        for i, (measure, value) in enumerate(lines):
            shown = pct(value) if value is None or isinstance(value, (int, float)) else str(value)
            rows.append((view.title if i == 0 else "", measure, shown, secs if i == 0 else None))
    return rows


def section_summary(metrics: dict, manifest: dict, idle: tuple[str, ...] = ()) -> str:
    rows = stage_rows(metrics, manifest)
    parts = ['<section><h2>Results per stage</h2><div class="row"><div>']
    if rows:
        parts.append('<table><thead><tr><th>stage</th><th>measure</th><th class="num">value</th>'
                     '<th class="num">time</th></tr></thead><tbody>')
        for stage, measure, value, secs in rows:
            parts.append(f'<tr><td>{esc(stage)}</td><td>{esc(measure)}</td><td class="num">{esc(value)}</td>'
                         f'<td class="num">{seconds(secs) if secs is not None else ""}</td></tr>')
        total = sum(v.get("seconds", 0.0) for v in manifest.values() if v.get("status") == "done")
        parts.append(f'<tr class="total"><td>total</td><td></td><td></td><td class="num">{seconds(total)}</td>'
                     f'</tr></tbody></table>')
    else:
        parts.append('<p class="note">No stage has finished or been scored yet.</p>')
    missing = [n for n in FOLDERS if n not in idle and manifest.get(n, {}).get("status") not in ("done", "running")]
    if missing:
        parts.append(f'<p class="note">Not run: {esc(", ".join(missing))}.</p>')
    if "cam" in metrics or "random_walk" in metrics:
        unscored = [n for n in ("cam", "random_walk", "segmentation") if n not in metrics]
        if unscored:
            parts.append(f'<p class="note">Not scored: {esc(", ".join(stage_title(n) for n in unscored))}.</p>')
    parts.append("</div>")
    bars = [(f"{stage_title(k)} ({split_of(k, m)})", m["miou"]) for k, m in metrics.items()
            if isinstance(m, dict) and finite(m.get("miou"))]
    if bars:
        parts.append(f'<figure><figcaption>mIoU (%)</figcaption>{svg_bar_chart(bars)}</figure>')
    parts.append("</div></section>")
    return "".join(parts)


def section_classes(metrics: dict) -> str:
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
        parts += [f'<th class="num">{esc(stage_title(k))}<br><span class="sub">{esc(split_of(k, m))}</span></th>'
                  for k, m in stages]
        parts.append("</tr></thead><tbody>")
        for c in classes:
            parts.append(f"<tr><td>{esc(c)}</td>")
            parts += [f'<td class="num">{pct(m["iou"].get(c))}</td>' for _, m in stages]
            parts.append("</tr>")
        parts.append('<tr class="total"><td>mIoU</td>')
        parts += [f'<td class="num">{pct(m.get("miou"))}</td>' for _, m in stages]
        parts.append("</tr></tbody></table></div>")
    if sweep:
        pts = sorted((float(t), v) for t, v in sweep.items() if finite(v))
        vlines = []
        if finite(cam.get("threshold")):
            vlines.append((float(cam["threshold"]), "fixed"))
        best = cam.get("best_threshold")
        if finite(best) and best != cam.get("threshold"):
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
    parts = [f'<div class="train"><h3>{esc(title)}</h3>']
    if not src:
        parts.append(f'<p class="note">{esc(path.name)} holds no rows.</p></div>')
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
        parts += [f'<th class="num"><span class="sub">val</span><br>{esc(k.removeprefix("val_").replace("_", " "))}</th>'
                  for k in val_keys]
        parts.append('<th class="num">time</th></tr></thead><tbody>')
        for r in epochs:
            val = r.get("val") or {}
            parts.append(f'<tr><td class="num">{num(r.get("epoch"))}</td><td class="num">{num(r.get("step"))}</td>'
                         f'<td class="num">{num(r.get("loss"))}</td>')
            parts += [f'<td class="num">{num(val[k]) if k in val else "–"}</td>' for k in val_keys]
            ts = r.get("time_s")
            parts.append(f'<td class="num">{seconds(ts) if finite(ts) else ""}</td></tr>')
        parts.append("</tbody></table></div>")
    parts.append("</div>")
    return "".join(parts)


def section_training(layout: RunLayout, idle: tuple[str, ...] = ()) -> str:
    parts = ['<section><h2>Training</h2><div class="grid">']
    missing = []
    for stage, view in VIEWS.items():
        if not stage.startswith("train_") or (stage in idle and not layout.history(stage).is_file()):
            continue
        p = layout.history(stage)
        if p.is_file():
            parts.append(_training_block(p, view.title))
        else:
            missing.append(view.title)
    parts.append("</div>")
    if missing:
        parts.append(f'<p class="note">No training history for: {esc(", ".join(missing))}.</p>')
    parts.append("</section>")
    return "".join(parts)


def _swatch(rgb, label: str) -> str:
    r, g, b = (int(v) for v in rgb)
    return f'<span class="swatch"><i style="background:rgb({r},{g},{b})"></i>{esc(label)}</span>'


def section_images(layout: RunLayout, cfg: Config, n: int) -> str:
    """The first training images that have every stage's picture, beside their ground truth."""
    head = "<section><h2>Training images</h2>"
    if n <= 0:
        return head + '<p class="note">eval.report_images is 0: no images shown.</p></section>'
    if not Path(cfg.data.root).exists():
        return head + f'<p class="note">Data root {esc(cfg.data.root)} not found: no images shown.</p></section>'
    from ..data import build_dataset
    from ..errors import AffinityNetError

    try:
        ds = build_dataset(cfg.data, cfg.data.train_split)
    except AffinityNetError as e:
        return head + f'<p class="note">Training split not readable ({esc(e)}): no images shown.</p></section>'
    first = ds.names[:max(n * 4, n)]
    views, notes = [], []
    for stage, view in VIEWS.items():
        if view.picture is None:
            continue
        if layout.folder(stage).is_dir():
            views.append((stage, view))
        else:
            notes.append(f"{view.title}: {FOLDERS[stage]}/ not found ({stage} has not run)")
    rows = []
    for name in first:
        if len(rows) >= n:
            break
        image = ds.load_image(name)
        pics = [view.picture(layout, name, image) for _, view in views]
        if all(p is not None for p in pics):
            rows.append((name, image, pics))
    if not rows:
        return head + '<p class="note">No training image has all of its stage outputs yet.</p></section>'
    cols = [("image", "image")] + [(stage, view.title) for stage, view in views]
    if ds.has_masks:
        cols.append(("gt", "ground truth"))
    parts = [head, '<table class="images"><thead><tr><th>name</th>']
    parts += [f'<th data-col="{key}">{esc(title)}</th>' for key, title in cols]
    parts.append("</tr></thead><tbody>")
    for name, image, pics in rows:
        parts.append(f'<tr class="sample" data-name="{esc(name)}"><td class="name">{esc(name)}</td>')
        cells = [("image", "image", (image, False))]
        cells += [(stage, view.title, pic) for (stage, view), pic in zip(views, pics)]
        if ds.has_masks:
            mask = ds.load_mask(name)
            cells.append(("gt", "ground truth", None if mask is None else (label_colours(mask), True)))
        for key, title, pic in cells:
            if pic is None:
                parts.append(f'<td data-col="{key}" class="none">no mask</td>')
                continue
            thumb = thumbnail(pic[0], THUMB, nearest=pic[1])
            parts.append(f'<td data-col="{key}"><img alt="{esc(title)}" width="{thumb.shape[1]}" '
                         f'height="{thumb.shape[0]}" src="{png_data_uri(thumb)}"></td>')
        parts.append("</tr>")
    parts.append("</tbody></table>")
    swatches = [_swatch(label_colours(np.array([i]))[0], label) for i, label in enumerate(ds.label_names)]
    swatches.append(_swatch(confident_colours(np.array([255]))[0], "ignored (confident regions)"))
    parts.append(f'<p class="legend">{"".join(swatches)}</p>')
    if notes:
        parts.append(f'<p class="note">Left out: {esc("; ".join(notes))}.</p>')
    parts.append("</section>")
    return "".join(parts)
