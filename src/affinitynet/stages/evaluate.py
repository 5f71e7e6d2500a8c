"""evaluate: gather every stage's scores into ``RUN_DIR/metrics.json`` and draw ``RUN_DIR/report.html``.

Each stage scores its own output when the split has masks (``cam/metrics.json``,
``random_walk/metrics.json``, ...); this stage puts them side by side, keyed by the stage's folder.
"""
from __future__ import annotations

from ..io import read_json, write_json
from ..layout import RunLayout
from ..ops.metrics import format_table


def collect(run_dir) -> dict:
    """{folder: metrics} for every stage that has written its scores, in pipeline order."""
    from . import STAGES

    layout = RunLayout(run_dir)
    out = {}
    for spec in STAGES:
        p = layout.stage_metrics(spec.name) if spec.folder else None
        if p is not None and p.exists():
            out[spec.folder] = read_json(p)
    return out


def run(ctx) -> dict:
    """Write ``metrics.json`` (and the report) from the stages' own scores."""
    metrics = collect(ctx.run_dir)
    summary = {}
    if ctx.is_main:
        write_json(ctx.layout.metrics, metrics)
        for key, m in metrics.items():
            if isinstance(m, dict) and "miou" in m and "iou" in m:
                summary[f"{key}_miou"] = round(m["miou"], 2)
                ctx.log.info(f"\n{key}:\n{format_table(m)}")
        from ..report import write_report

        write_report(ctx.run_dir, ctx.cfg)
    return summary
