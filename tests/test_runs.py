"""The stage runner: manifest, skipping, redoing changed stages and their successors, resuming per-image work."""
import json

import pytest

import dataclasses

from affinitynet import config, runner
from affinitynet.context import StageContext
from affinitynet.errors import StageError
from affinitynet.layout import idle_stages
from affinitynet.stages import STAGES, STAGE_NAMES


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

    monkeypatch.setattr(runner, "STAGES", tuple(dataclasses.replace(s, run=make(s)) for s in STAGES))
    return calls


def _cfg(tmp_path):
    cfg = config.Config()
    cfg.data.kind = "voc"  # no synthetic generation for these tests
    cfg.runtime.device = "cpu"
    cfg.runtime.progress = False
    return cfg


def test_rerun_skips_everything(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    idle = idle_stages(cfg.random_walk.affinity)
    active = [n for n in STAGE_NAMES if n not in idle]
    res = runner.run_pipeline(cfg, tmp_path / "run", verbose=False)
    assert [r.status for r in res] == ["not needed" if n in idle else "done" for n in STAGE_NAMES]
    assert fake_stages == active
    fake_stages.clear()
    res = runner.run_pipeline(cfg, tmp_path / "run", verbose=False)
    assert fake_stages == [] and all(r.status in ("skipped", "not needed") for r in res)
    assert (tmp_path / "run" / "config.yaml").exists()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert set(manifest) == set(active) and all(m["status"] == "done" for m in manifest.values())


def test_affinity_source_choice_runs_its_own_stages_and_redoes_the_walk(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runner.run_pipeline(cfg, run, verbose=False)
    assert "make_affinity_labels" in fake_stages and "train_boundary" not in fake_stages
    fake_stages.clear()
    cfg.random_walk.affinity = "boundary"
    res = runner.run_pipeline(cfg, run, verbose=False)
    i = STAGE_NAMES.index("random_walk")
    assert fake_stages == ["make_ir_labels", "train_boundary", *STAGE_NAMES[i:]]
    assert {r.name: r.status for r in res}["train_affinitynet"] == "not needed"
    fake_stages.clear()
    cfg.random_walk.affinity = "affinitynet"  # AffinityNet's stages finished earlier: only the walk and after redo
    runner.run_pipeline(cfg, run, verbose=False)
    assert fake_stages == list(STAGE_NAMES[i:])
    fake_stages.clear()
    cfg.boundary.epochs = 1  # the idle source's training settings change nothing
    runner.run_pipeline(cfg, run, verbose=False)
    assert fake_stages == []


def test_deleted_output_redoes_that_stage_and_the_ones_after(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runner.run_pipeline(cfg, run, verbose=False)
    fake_stages.clear()
    import shutil
    shutil.rmtree(run / "random_walk")
    runner.run_pipeline(cfg, run, verbose=False)
    i = STAGE_NAMES.index("random_walk")
    assert fake_stages == list(STAGE_NAMES[i:])


def test_changed_config_redoes_only_dependent_stages(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runner.run_pipeline(cfg, run, verbose=False)
    fake_stages.clear()
    cfg.segmentation.test_scales = [1.0]  # inference only: the network is not retrained
    runner.run_pipeline(cfg, run, verbose=False)
    assert fake_stages == ["segment", "evaluate"]
    fake_stages.clear()
    cfg.runtime.num_workers = 3  # runtime never invalidates
    cfg.affinity_labels.workers = 7
    runner.run_pipeline(cfg, run, verbose=False)
    assert fake_stages == []


def test_force_and_from_to(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    runner.run_pipeline(cfg, run, stop="make_cam", verbose=False)
    assert fake_stages == ["train_cam", "make_cam"]
    fake_stages.clear()
    runner.run_pipeline(cfg, run, start="make_cam", stop="make_cam", force=["make_cam"], verbose=False)
    assert fake_stages == ["make_cam"]


def test_stage_not_needed_is_skipped_and_reported(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    cfg.affinitynet.checkpoint = str(tmp_path / "given.pth")
    res = runner.run_pipeline(cfg, tmp_path / "run", verbose=False)
    assert {r.name: r.status for r in res}["make_affinity_labels"] == "not needed"
    assert "make_affinity_labels" not in fake_stages and "train_affinitynet" in fake_stages


def test_map_images_resumes_and_reports_missing(tmp_path):
    ctx = StageContext(cfg=_cfg(tmp_path), run_dir=tmp_path, device=None)
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
    res = [runner.StageResult("train_cam", "done", 3.2, {"map": 91.0}), runner.StageResult("make_cam", "skipped")]
    table = runner.summary_table(res)
    assert "train_cam" in table and "map=91.00" in table and "skipped" in table
