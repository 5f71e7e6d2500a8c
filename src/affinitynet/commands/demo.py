"""``affinitynet demo``: the synthetic set and the CPU preset end to end, with the per-stage table."""
from __future__ import annotations

from pathlib import Path

from .. import config
from ..io import read_json
from ..layout import FOLDERS, RunLayout
from ..logs import LOG
from ..runner import run_pipeline
from ..views import VIEWS


def _value(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, (int, float)) else str(v)


def demo_table(run_dir: Path, results) -> str:
    """Per-stage table: each stage's results (headline first, the others on lines of their own) and its time."""
    layout = RunLayout(run_dir)
    metrics = read_json(layout.metrics) if layout.metrics.exists() else {}
    secs = {r.name: r.seconds for r in results}
    rows = []
    for stage, view in VIEWS.items():
        folder = FOLDERS.get(stage, stage)  # rows that are no stage (cam_crf, ...) are keyed by name
        lines = view.rows(metrics[folder]) if folder in metrics else []
        for i, (measure, value) in enumerate(lines):
            rows.append((view.title if i == 0 else "", measure, _value(value), secs.get(stage, 0.0) if i == 0 else None))
    head = ("stage", "measure", "value", "time")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(3)]
    out = [f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}  {head[3]:>7}", "-" * (sum(w) + 13)]
    out += [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}" + ("" if r[3] is None else f"  {r[3]:>6.1f}s")
            for r in rows]
    out.append(f"{'total':<{w[0]}}  {'':<{w[1]}}  {'':>{w[2]}}  {sum(secs.values()):>6.1f}s")
    return "\n".join(out)


def run_demo(out: Path, overrides=()) -> Path:
    """Generate the synthetic set under ``out/data`` if absent, run the CPU preset into ``out/run``."""
    out = Path(out)
    cfg = config.load(config.PRESET_DIR / "synthetic_cpu.yaml", [f"data.root={out / 'data'}", *overrides])
    run_dir = out / "run"
    results = run_pipeline(cfg, run_dir)
    layout = RunLayout(run_dir)
    if layout.metrics.exists():
        LOG.info("\n" + demo_table(run_dir, results))
        LOG.info(f"\nreport: {layout.report}")
    return run_dir
