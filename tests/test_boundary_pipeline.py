"""The pipeline with IRN's class-boundary affinities, end to end on a tiny synthetic set (one epoch per network)."""
import json

import numpy as np
import pytest

from affinitynet import config, runner
from affinitynet.io import load_label_png
from affinitynet.layout import RunLayout

pytest.importorskip("pydensecrf")

TINY = [
    "data.synthetic.train=8", "data.synthetic.val=3", "data.synthetic.size=64",
    "cam.epochs=1", "cam.batch_size=4", "cam.crop_size=64", "cam.resize_long=[56,72]", "cam.scales=[1.0]",
    "cam.overlays=0", "boundary.epochs=1", "boundary.batch_size=4", "boundary.crop_size=64", "boundary.radius=5",
    "ir_labels.workers=1", "runtime.progress=false", "runtime.device=cpu",
]


def test_boundary_walk_runs_end_to_end_and_is_reported(tmp_path):
    cfg = config.load(config.resolve_config_path("synthetic_cpu_irn"), [f"data.root={tmp_path / 'data'}", *TINY])
    run = tmp_path / "run"
    results = runner.run_pipeline(cfg, run, stop="random_walk", verbose=False)
    status = {r.name: r.status for r in results}
    assert status == {"train_cam": "done", "make_cam": "done", "make_affinity_labels": "not needed",
                      "train_affinitynet": "not needed", "make_ir_labels": "done", "train_boundary": "done",
                      "random_walk": "done"}
    layout = RunLayout(run)
    names = sorted(p.stem for p in (run / "cam").glob("*.npz"))
    assert len(names) == 8
    for name in names:
        ir = load_label_png(layout.ir_label(name))
        label = load_label_png(layout.pseudo_label(name))
        assert ir.shape == label.shape == (64, 64)
        assert set(np.unique(label)) <= set(range(6))
    assert layout.network("train_boundary").is_file() and not (run / "affinitynet").exists()
    walk = json.loads(layout.stage_metrics("random_walk").read_text())
    assert walk["affinity"] == "boundary" and 0 <= walk["miou"] <= 100
    assert "ap" in json.loads(layout.stage_metrics("train_boundary").read_text())
    runner.run_pipeline(cfg, run, start="evaluate", stop="evaluate", verbose=False)
    assert json.loads(layout.metrics.read_text())["random_walk"]["affinity"] == "boundary"
    page = layout.report.read_text(encoding="utf-8")
    assert "relation labels" in page and "boundary network" in page and "class-boundary affinities" in page
    assert "Not run: train_segmentation, segment." in page  # AffinityNet's stages are left out, not "not run"
