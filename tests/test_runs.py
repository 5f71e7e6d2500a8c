"""The stage runner: manifest, skipping, redoing changed stages and their successors, resuming per-image work."""
import json

import pytest

from affinitynet import config, runs
from affinitynet.errors import StageError
from affinitynet.pipeline import STAGES, STAGE_NAMES


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace every stage by a function that writes its declared outputs and counts its calls."""
    calls = []

    def make(spec):
        def run(ctx):
            calls.append(spec.name)
            for o in spec.outputs:
                p = ctx.path(o)
                if p.suffix:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(spec.name)
                else:
                    p.mkdir(parents=True, exist_ok=True)
                    (p / "x.txt").write_text(spec.name)
            return {"value": 1.0}
        return run

    funcs = {s.name: make(s) for s in STAGES}
    monkeypatch.setattr(runs, "_load_stage", lambda name: funcs[name])
    return calls


def _cfg(tmp_path):
    cfg = config.Config()
    cfg.data.kind = "voc"  # no synthetic generation for these tests
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    return cfg


def test_rerun_skips_everything(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    res = runs.run_pipeline(cfg, tmp_path / "run", verbose=False)
    assert [r.status for r in res] == ["done"] * len(STAGES)
    assert fake_stages == list(STAGE_NAMES)
    fake_stages.clear()
    res = runs.run_pipeline(cfg, tmp_path / "run", verbose=False)
    assert fake_stages == [] and all(r.status == "skipped" for r in res)
    assert (tmp_path / "run" / "config.yaml").exists()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert set(manifest) == set(STAGE_NAMES) and all(m["status"] == "done" for m in manifest.values())


def test_deleted_output_redoes_that_stage_and_the_ones_after(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runs.run_pipeline(cfg, run, verbose=False)
    fake_stages.clear()
    import shutil
    shutil.rmtree(run / "pseudo_labels")
    runs.run_pipeline(cfg, run, verbose=False)
    i = STAGE_NAMES.index("random_walk")
    assert fake_stages == list(STAGE_NAMES[i:])


def test_changed_config_redoes_only_dependent_stages(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runs.run_pipeline(cfg, run, verbose=False)
    fake_stages.clear()
    cfg.segmentation.test_scales = [1.0]  # inference only: the network is not retrained
    runs.run_pipeline(cfg, run, verbose=False)
    assert fake_stages == ["segment", "evaluate"]
    fake_stages.clear()
    cfg.runtime.num_workers = 3  # runtime never invalidates
    cfg.affinity_labels.workers = 7
    runs.run_pipeline(cfg, run, verbose=False)
    assert fake_stages == []


def test_force_and_from_to(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runs.run_pipeline(cfg, run, stop="make_cam", verbose=False)
    assert fake_stages == ["train_cam", "make_cam"]
    fake_stages.clear()
    runs.run_pipeline(cfg, run, start="make_cam", stop="make_cam", force=["make_cam"], verbose=False)
    assert fake_stages == ["make_cam"]


def test_unbuilt_stage_is_reported_not_faked(tmp_path, monkeypatch, fake_stages):
    real = runs._load_stage
    monkeypatch.setattr(runs, "_load_stage", lambda name: None if name == "train_affinitynet" else real(name))
    res = runs.run_pipeline(_cfg(tmp_path), tmp_path / "run", verbose=False)
    assert [r.status for r in res][-1] == "not built"
    assert "random_walk" not in fake_stages


def test_map_images_resumes_and_reports_missing(tmp_path):
    ctx = runs.StageContext(cfg=_cfg(tmp_path), run_dir=tmp_path, device=None)
    names = [f"im{i}" for i in range(5)]
    out = lambda n: tmp_path / f"{n}.txt"  # noqa: E731
    out("im1").write_text("old")
    done = []

    def work(n):
        done.append(n)
        out(n).write_text(n)

    counts = ctx.map_images(names, out, work, desc="t")
    assert counts == {"done": 4, "skipped": 1} and "im1" not in done
    assert out("im1").read_text() == "old"

    with pytest.raises(StageError, match="outputs missing"):
        ctx.map_images(names + ["im9"], out, lambda n: None, desc="t")


def test_summary_table_lists_every_stage():
    res = [runs.StageResult("train_cam", "done", 3.2, {"map": 91.0}), runs.StageResult("make_cam", "skipped")]
    table = runs.summary_table(res)
    assert "train_cam" in table and "map=91.00" in table and "skipped" in table
