"""The report's per-class scores (IoU, precision, recall), confusion matrices and sweep plots.

Drawn from ``metrics.json`` entries (each with ``iou``, ``precision``, ``recall`` and ``confusion``) and the
``sweeps/*.json`` files ``affinitynet sweep`` writes; plain HTML and inline SVG.
"""
from __future__ import annotations

import json

import numpy as np

from ..layout import RunLayout
from .charts import Series, esc, finite, pct, svg_line_chart


def _scored(metrics: dict) -> list[tuple[str, dict]]:
    return [(k, m) for k, m in metrics.items() if isinstance(m, dict) and isinstance(m.get("iou"), dict)]


def confusion_table(conf, names: list[str]) -> str:
    """A (K, K + 1) pixel-count confusion [gt][pred] as an HTML heat map: each row's share in percent.

    The last column (``miss``) holds pixels predicted as 255 (ignored), when there are any.
    """
    conf = np.asarray(conf, dtype=np.float64)
    k = conf.shape[0]
    miss = conf.shape[1] > k and conf[:, k:].sum() > 0
    cols = names + (["miss"] if miss else [])
    share = 100.0 * conf[:, :len(cols)] / np.maximum(conf.sum(1, keepdims=True), 1.0)
    parts = ['<table class="confusion"><thead><tr><th class="corner">gt \\ pred</th>']
    parts += [f'<th class="cm"><span>{esc(c)}</span></th>' for c in cols]
    parts.append("</tr></thead><tbody>")
    for i, name in enumerate(names):
        parts.append(f'<tr><th class="rowname">{esc(name)}</th>')
        for j in range(len(cols)):
            v = share[i, j]
            alpha = min(1.0, v / 100.0)
            colour = "59,111,182" if i == j else "192,80,77"
            ink = "#fff" if alpha > 0.55 else "#1f2933"
            text = f"{v:.0f}" if conf[i].sum() > 0 and v >= 0.5 else ""
            parts.append(f'<td style="background:rgba({colour},{alpha:.2f});color:{ink}" '
                         f'title="{esc(name)} as {esc(cols[j])}: {v:.1f}%">{text}</td>')
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _class_table(m: dict) -> str:
    names = list(m["iou"])
    prec, rec = m.get("precision") or {}, m.get("recall") or {}
    parts = ['<table class="small"><thead><tr><th>class</th><th class="num">IoU</th><th class="num">precision</th>'
             '<th class="num">recall</th></tr></thead><tbody>']
    for n in names:
        parts.append(f'<tr><td>{esc(n)}</td><td class="num">{pct(m["iou"].get(n))}</td>'
                     f'<td class="num">{pct(prec.get(n))}</td><td class="num">{pct(rec.get(n))}</td></tr>')
    parts.append(f'<tr class="total"><td>mIoU</td><td class="num">{pct(m.get("miou"))}</td><td></td><td></td></tr>')
    parts.append("</tbody></table>")
    return "".join(parts)


def section_per_class(metrics: dict, title_of, split_of) -> str:
    """One card per scored row: its per-class IoU / precision / recall and its confusion matrix."""
    stages = _scored(metrics)
    if not stages:
        return ""
    parts = ['<section><h2>Per class: IoU, precision, recall and confusion (%)</h2>'
             '<p class="note">Confusion rows are ground-truth classes, columns predictions; each cell is the share '
             'of the row\'s pixels.</p><div class="cards">']
    for key, m in stages:
        parts.append(f'<div class="card" data-row="{esc(key)}"><h3>{esc(title_of(key))} '
                     f'<span class="sub">{esc(split_of(key, m))}, {m.get("images", "?")} images</span></h3>'
                     f'<div class="row">{_class_table(m)}')
        if isinstance(m.get("confusion"), list) and m["confusion"]:
            parts.append(confusion_table(m["confusion"], list(m["iou"])))
        parts.append("</div></div>")
    parts.append("</div></section>")
    return "".join(parts)


def read_sweeps(layout: RunLayout) -> list[dict]:
    """The ``sweeps/*.json`` results of ``affinitynet sweep``, sorted by file name (unreadable ones skipped)."""
    folder = layout.sweep("x", "x").parent
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(r, dict) and isinstance(r.get("values"), list) and isinstance(r.get("miou"), list):
            out.append(dict(r, key=p.stem))
    return out


def section_sweeps(layout: RunLayout) -> str:
    """Each sweep's mIoU over its values, the config's own value marked."""
    sweeps = read_sweeps(layout)
    if not sweeps:
        return ""
    parts = ['<section><h2>Sweeps</h2><div class="row">']
    for r in sweeps:
        pts = [(v, m) for v, m in zip(r["values"], r["miou"]) if finite(v) and finite(m)]
        vlines = ((float(r["current"]), "config"),) if finite(r.get("current")) else ()
        chart = svg_line_chart([Series(f"{r.get('stage', '')} mIoU", pts, markers=True)], width=420, height=220,
                               xlabel=str(r.get("param", "")), ylabel="mIoU (%)", vlines=vlines)
        secs = f", {r['seconds']:.1f} s" if finite(r.get("seconds")) else ""
        parts.append(f'<figure data-sweep="{esc(r["key"])}"><figcaption>{esc(r.get("stage", ""))}: mIoU over '
                     f'{esc(r.get("param", ""))} ({esc(r.get("split", ""))}, {r.get("images", "?")} images{secs})'
                     f'</figcaption>{chart}</figure>')
    parts.append("</div></section>")
    return "".join(parts)


CSS = """
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.card{border:1px solid #edf0f3;border-radius:6px;padding:8px 10px}
table.confusion{border-collapse:collapse;font-size:10.5px}
table.confusion td{width:22px;height:20px;padding:0;text-align:center;border:1px solid #fff}
table.confusion th{background:none;border:none;padding:1px 4px;font-weight:500;color:#486581}
table.confusion th.cm{height:70px;vertical-align:bottom;padding:0}
table.confusion th.cm span{display:inline-block;writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
table.confusion th.rowname{text-align:right;white-space:nowrap}
table.confusion th.corner{font-size:9.5px;color:#9aa5b1;vertical-align:bottom}
"""
