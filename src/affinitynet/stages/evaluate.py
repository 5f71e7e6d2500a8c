"""evaluate: gather every stage's scores into ``RUN_DIR/metrics.json`` and draw ``RUN_DIR/report.html``.

Each stage scores its own output when the split has masks (``cam/metrics.json``,
``pseudo_labels/metrics.json``, ...); this stage puts them side by side under fixed keys.
"""
from __future__ import annotations

from ..io import read_json, write_json
from ..ops.metrics import format_table

# metrics.json key -> file written by the stage that produced it
SOURCES = {
    "classifier": "classifier/metrics.json",
    "cam": "cam/metrics.json",
    "affinity_labels": "affinity_labels/metrics.json",
    "affinitynet": "affinitynet/metrics.json",
    "random_walk": "pseudo_labels/metrics.json",
    "segmentation": "predictions/metrics.json",
}


def collect(run_dir) -> dict:
    """{key: metrics} for every stage that has written its scores."""
    out = {}
    for key, rel in SOURCES.items():
        p = run_dir / rel
        if p.exists():
            out[key] = read_json(p)
    return out


def run(ctx) -> dict:
    """Write ``metrics.json`` (and the report) from the stages' own scores."""
    metrics = collect(ctx.run_dir)
    summary = {}
    if ctx.is_main:
        write_json(ctx.path("metrics.json"), metrics)
        for key in ("cam", "random_walk", "segmentation"):
            if key in metrics and "miou" in metrics[key]:
                summary[f"{key}_miou"] = round(metrics[key]["miou"], 2)
                ctx.log.info(f"\n{key}:\n{format_table(metrics[key])}")
        from ..report import write_report

        write_report(ctx.run_dir, ctx.cfg)
    return summary
