"""``affinitynet demo``: the synthetic set and the CPU preset end to end, with the per-stage table."""
from __future__ import annotations

from pathlib import Path

from . import config
from .cli import PRESET_DIR
from .io import read_json
from .runs import LOG, run_pipeline


def demo_table(run_dir: Path, results) -> str:
    """Per-stage table of the demo: what each stage achieved and how long it took."""
    m = read_json(Path(run_dir) / "metrics.json")
    secs = {r.name: r.seconds for r in results}

    def pct(section, key):
        v = m.get(section, {}).get(key)
        return "-" if v is None else f"{v:.1f}"

    al = m.get("affinity_labels", {})
    rows = [
        ("classifier", "val mAP (%)", pct("classifier", "map"), secs.get("train_cam", 0)),
        ("CAM labels", f"train mIoU, bg thr {m.get('cam', {}).get('threshold', '-')}", pct("cam", "miou"),
         secs.get("make_cam", 0)),
        ("confident regions", "fg / bg precision, ignored (%)",
         f"{pct('affinity_labels', 'fg_precision')} / {pct('affinity_labels', 'bg_precision')}, "
         f"{pct('affinity_labels', 'ignored')}" if al else "-", secs.get("make_affinity_labels", 0)),
        ("AffinityNet", "val pair AP (%)", pct("affinitynet", "ap"), secs.get("train_affinitynet", 0)),
        ("random walk", "train mIoU", pct("random_walk", "miou"), secs.get("random_walk", 0)),
        ("segmentation", "val mIoU", pct("segmentation", "miou"),
         secs.get("train_segmentation", 0) + secs.get("segment", 0)),
    ]
    head = ("stage", "measure", "value", "time")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(3)]
    lines = [f"{head[0]:<{w[0]}}  {head[1]:<{w[1]}}  {head[2]:>{w[2]}}  {head[3]:>7}",
             "-" * (sum(w) + 13)]
    for r in rows:
        lines.append(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>6.1f}s")
    lines.append(f"{'total':<{w[0]}}  {'':<{w[1]}}  {'':>{w[2]}}  {sum(secs.values()):>6.1f}s")
    return "\n".join(lines)


def run_demo(out: Path, overrides=()) -> Path:
    """Generate the synthetic set under ``out/data`` if absent, run the CPU preset into ``out/run``."""
    out = Path(out)
    cfg = config.load(PRESET_DIR / "synthetic_cpu.yaml", [f"data.root={out / 'data'}", *overrides])
    run_dir = out / "run"
    results = run_pipeline(cfg, run_dir)
    if (run_dir / "metrics.json").exists():
        LOG.info("\n" + demo_table(run_dir, results))
        LOG.info(f"\nreport: {run_dir / 'report.html'}")
    return run_dir
