"""``RUN_DIR/report.html``: one self-contained page about a run (inline CSS, SVG charts, base64 PNG images).

The page shows the per-stage results (with the CRF rows when scored), per-class IoU, the CAM threshold
sweep and ``affinitynet sweep`` plots, per-class precision / recall with confusion matrices, the loss curves of the
training stages and a few training images beside each stage's picture of them and the ground truth. It
only reads what the stages wrote (``affinitynet.views`` says how each is shown); whatever a run has not
produced is left out with a note, and nothing is made up or recomputed.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..io import read_json, write_text
from ..layout import RunLayout, idle_stages
from .charts import esc, finite, seconds
from .scores import CSS as SCORES_CSS
from .scores import section_per_class, section_sweeps
from .sections import (section_classes, section_images, section_summary, section_training, split_of, stage_rows,
                       stage_title)

__all__ = ["render_report", "write_report", "stage_rows"]


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
    finished = [v["finished"] for v in done if finite(v.get("finished"))]
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
        ("total stage time", seconds(total) + f" over {len(done)} stage(s)"),
    ]
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f'<header><h1>AffinityNet run report</h1><dl class="meta">{rows}</dl></header>'


def render_report(run_dir: Path, cfg: Config) -> str:
    """The report page of ``run_dir`` as one HTML string (no external references)."""
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    mpath = layout.metrics
    metrics = read_json(mpath) if mpath.is_file() else {}
    manifest = read_json(layout.manifest).get("stages", {}) if layout.manifest.is_file() else {}
    body = [
        _header(run_dir, cfg, manifest),
        section_summary(metrics, manifest, idle_stages(cfg.random_walk.affinity)),
        section_classes(metrics),
        section_sweeps(layout),
        section_per_class(metrics, stage_title, split_of),
        section_training(layout, idle_stages(cfg.random_walk.affinity)),
        section_images(layout, cfg, cfg.eval.report_images),
    ]
    if not mpath.is_file():
        body.insert(1, '<section><p class="note">metrics.json not found: the evaluate stage has not run, '
                       'so no scores are shown.</p></section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>AffinityNet report: {esc(run_dir.name)}</title><style>{CSS}{SCORES_CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def write_report(run_dir: Path, cfg: Config) -> Path:
    """Write ``RUN_DIR/report.html`` atomically and return its path."""
    path = RunLayout(run_dir).report
    write_text(path, render_report(run_dir, cfg))
    return path
