"""``affinitynet calibrate`` and scores over partial masks: the images without masks are left out and counted, the
label-free criterion's arithmetic, a value applied to a run equals a re-run at that value, the command's contract;
and ``random_walk.choose_alpha``, the walk's own label-free choice of alpha."""
import json
import shutil

import numpy as np
import pytest
import torch

from affinitynet import cli, config, runner
from affinitynet.calibration import choose_by_masks
from affinitynet.commands.calibrate import apply_value, calibrate, calibrate_command
from affinitynet.commands.sweep import run_context
from affinitynet.data import SegDataset
from affinitynet.errors import ConfigError
from affinitynet.layout import RunLayout
from affinitynet.ops.criteria import boundary_affinity, choose_by_cut, normalized_cut, stability
from affinitynet.ops.metrics import confusion_matrix, mean_iou, scores
from affinitynet.ops.pairs import pair_indices
from affinitynet.scoring import score_labels
from affinitynet.settings import RandomWalkConfig
from affinitynet.stages.random_walk import WalkGrid, walk_from_affinity
from affinitynet.stages.walk_alpha import border_affinities, candidate, walk_candidates

TINY = ["data.synthetic.train=16", "data.synthetic.val=4", "data.synthetic.size=64", "data.synthetic.classes=3",
        "cam.epochs=4", "affinitynet.epochs=2", "cam.batch_size=4", "affinitynet.batch_size=4", "cam.crop_size=64",
        "affinitynet.crop_size=64", "cam.resize_long=[56,72]", "affinitynet.resize_long=[56,72]", "cam.scales=[1.0]",
        "cam.overlays=0", "affinity_labels.workers=1", "runtime.device=cpu", "runtime.threads=1",
        "runtime.progress=false", "random_walk.scale=1.0", "random_walk.cache_affinity=true"]


def _cfg(root, *extra):
    return config.load(config.resolve_config_path("synthetic_cpu"), [f"data.root={root}", *TINY, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run up to the walk, with the walk's affinity cache (built once, copied before changes)."""
    base = tmp_path_factory.mktemp("calibrate")
    out = base / "run"
    runner.run_pipeline(_cfg(base / "data"), out, stop="random_walk", verbose=False)
    return out


def _copy(run, tmp_path, name="run"):
    return shutil.copytree(run, tmp_path / name, symlinks=True)


def _masks(run_dir):
    return RunLayout(run_dir), config.load(RunLayout(run_dir).config).data.root


# ----------------------------------------------------------------------------- the criterion by hand

def test_normalized_cut_on_a_hand_built_graph():
    # 4 nodes in a chain 0-1-2-3 with weights 1, 0.1, 1 (degrees 1, 1.1, 1.1, 1): {0, 1} | {2, 3} cuts 0.1 of 2.1 each
    idx_from, idx_to = np.array([0, 1, 2]), np.array([1, 2, 3])
    w = np.array([1.0, 0.1, 1.0])
    good = normalized_cut(np.array([0, 0, 5, 5]), w, idx_from, idx_to, regions=[0, 5])
    assert good == pytest.approx(0.1 / 2.1)
    # {0} | {1, 2, 3}: region 0 cuts 1 of its degree 1; region 5 cuts 1 of 1.1 + 1.1 + 1 = 3.2
    bad = normalized_cut(np.array([0, 5, 5, 5]), w, idx_from, idx_to, regions=[0, 5])
    assert bad == pytest.approx((1.0 + 1 / 3.2) / 2)
    # a tagged class with no node counts 1 (all background would otherwise cut nothing)
    assert normalized_cut(np.zeros(4, np.int64), w, idx_from, idx_to, regions=[0, 5]) == pytest.approx(0.5)
    # pairs with an end outside the valid nodes are left out
    valid = np.array([True, True, True, False])
    assert normalized_cut(np.array([0, 0, 5, 5]), w, idx_from, idx_to, [0, 5], valid) == pytest.approx(
        (0.1 / 2.1 + 0.1 / 0.1) / 2)


def test_boundary_affinity_by_hand():
    idx_from, idx_to = np.array([0, 1, 2]), np.array([1, 2, 3])
    w = np.array([1.0, 0.1, 0.8])
    assert boundary_affinity(np.array([0, 0, 5, 5]), w, idx_from, idx_to) == pytest.approx(0.1)
    assert boundary_affinity(np.array([0, 5, 5, 7]), w, idx_from, idx_to) == pytest.approx((1.0 + 0.8) / 2)
    assert boundary_affinity(np.zeros(4, np.int64), w, idx_from, idx_to) == 1.0  # no border: the most


def test_choosers_and_stability():
    cut = np.array([[0.3, 0.1, 0.2], [0.4, 0.2, 0.1], [0.3, 0.1, 0.3]])
    assert choose_by_cut(cut) == 1
    assert stability(cut, choose_by_cut, 1, seed=0) > 0.5
    k = 2
    right = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 1]), k)
    wrong = confusion_matrix(np.array([1, 1, 1]), np.array([0, 1, 1]), k)
    conf = np.stack([np.stack([wrong, right]), np.stack([wrong, right])])  # (n=2, T=2, K, K + 1)
    assert choose_by_masks(conf) == 1
    # by hand: right gets both classes exactly; wrong gets bg IoU 0 / 1 and class a IoU 2 / 3
    assert mean_iou(right) == pytest.approx(100.0) == scores(right, ["bg", "a"])["miou"]
    assert mean_iou(wrong) == pytest.approx(100.0 / 3) == pytest.approx(scores(wrong, ["bg", "a"])["miou"])


# ----------------------------------------------------------------------------- partial masks

def test_scores_leave_out_images_without_masks_and_count_them(run, tmp_path):
    r = _copy(run, tmp_path)
    root = tmp_path / "data"
    shutil.copytree(config.load(RunLayout(r).config).data.root, root)
    cfg = _cfg(root, "random_walk.cache_affinity=true")
    ds = _dataset(cfg)
    gone = ds.names[:10]
    for name in gone:
        ds.mask_path(name).unlink()
    assert ds.mask_names() == ds.names[10:]
    layout = RunLayout(r)
    partial = score_labels(layout.pseudo_label, ds)
    assert (partial["images"], partial["unmasked"]) == (6, 10)
    full = score_labels(layout.pseudo_label, _dataset(_cfg(config.load(RunLayout(run).config).data.root)),
                        names=ds.names[10:])
    assert partial["miou"] == pytest.approx(full["miou"])  # the same 6 images, whatever the others
    # a stage's own scores say how many images they used
    runner.run_pipeline(cfg, r, verbose=False)  # data.root changed: every stage redoes on the partial masks
    cam = json.loads(layout.stage_metrics("make_cam").read_text())
    walk = json.loads(layout.stage_metrics("random_walk").read_text())
    assert (cam["images"], cam["unmasked"]) == (6, 10)
    assert (walk["images"], walk["unmasked"]) == (6, 10)
    with pytest.raises(ConfigError, match="only 6 of the 16 training images have masks"):
        calibrate_command(r, "cam", "bg_threshold", masks=8, device="cpu")
    got = calibrate_command(r, "cam", "bg_threshold", masks=6, device="cpu")
    assert got["masks_used"] == 6 and got["method"] == "masks"


def _dataset(cfg) -> SegDataset:
    from affinitynet.data import build_dataset

    return build_dataset(cfg.data, cfg.data.train_split)


# ----------------------------------------------------------------------------- applying a value

def test_an_applied_walk_value_equals_a_rerun_at_that_value(run, tmp_path, capsys):
    applied, rerun = _copy(run, tmp_path, "applied"), _copy(run, tmp_path, "rerun")
    shutil.rmtree(RunLayout(applied).folder("train_affinitynet"))  # the cached affinities are enough: no network
    apply_value(run_context(applied, "cpu"), "random_walk", "alpha", 4.0)
    cfg = config.load(RunLayout(rerun).config, ["random_walk.alpha=4"])
    runner.run_pipeline(cfg, rerun, start="random_walk", stop="random_walk", force=["random_walk"], verbose=False)
    a, b = RunLayout(applied), RunLayout(rerun)
    names = sorted(p.name for p in a.folder("random_walk").glob("*.png"))
    assert len(names) == 16
    for name in names:
        assert (a.folder("random_walk") / name).read_bytes() == (b.folder("random_walk") / name).read_bytes(), name
    for f in sorted((b.folder("random_walk") / "scores").glob("*.npz")):
        x, y = np.load(f), np.load(a.folder("random_walk") / "scores" / f.name)
        assert all(np.array_equal(x[k], y[k]) for k in x.files), f.name
    assert json.loads(a.stage_metrics("random_walk").read_text())["miou"] == pytest.approx(
        json.loads(b.stage_metrics("random_walk").read_text())["miou"])
    # the run now holds the value: the same --set skips the walk (and would redo the stages after it)
    assert config.load(a.config).random_walk.alpha == 4.0
    shutil.copytree(b.folder("train_affinitynet"), a.folder("train_affinitynet"))
    results = runner.run_pipeline(config.load(a.config), applied, start="random_walk", stop="random_walk",
                                  verbose=False)
    assert [r.status for r in results] == ["skipped"]


def test_an_applied_cam_threshold_rescores_the_cams_like_a_rerun(run, tmp_path):
    applied, rerun = _copy(run, tmp_path, "applied"), _copy(run, tmp_path, "rerun")
    apply_value(run_context(applied, "cpu"), "cam", "bg_threshold", 0.3)
    cfg = config.load(RunLayout(rerun).config, ["eval.cam_bg_threshold=0.3"])
    runner.run_pipeline(cfg, rerun, start="make_cam", stop="make_cam", force=["make_cam"], verbose=False)
    got = json.loads(RunLayout(applied).stage_metrics("make_cam").read_text())
    want = json.loads(RunLayout(rerun).stage_metrics("make_cam").read_text())
    assert got["threshold"] == 0.3 and got["miou"] == pytest.approx(want["miou"])


# ----------------------------------------------------------------------------- the command

@pytest.mark.parametrize("stage, param", [("random_walk", "alpha"), ("cam", "bg_threshold")])
def test_label_free_reads_no_mask_and_writes_the_contract_json(run, tmp_path, monkeypatch, capsys, stage, param):
    r = _copy(run, tmp_path)

    def no_masks(self, name):
        raise AssertionError(f"the label-free choice read the mask of {name}")

    monkeypatch.setattr(SegDataset, "load_mask", no_masks)
    for cls in SegDataset.__subclasses__():
        monkeypatch.setattr(cls, "load_mask", no_masks, raising=False)
    out = tmp_path / "choice.json"
    rc = cli.main(["calibrate", str(r), "--stage", stage, "--param", param, "--json", str(out), "--device", "cpu"])
    assert rc == 0
    got = json.loads(out.read_text())
    assert {k: got[k] for k in ("stage", "param", "method", "masks_used")} == {
        "stage": stage, "param": param, "method": "label-free", "masks_used": 0}
    best = np.argmin(got["score"]) if stage == "random_walk" else np.argmax(got["score"])  # a cut / an agreement
    assert got["value"] in got["values"] and got["value"] == got["values"][int(best)]
    text = capsys.readouterr().out
    key = "random_walk.alpha" if stage == "random_walk" else "eval.cam_bg_threshold"
    assert f"--set {key}={got['value']:g}" in text and "bootstrap" in text


def test_apply_records_the_chosen_value(run, tmp_path, capsys):
    r = _copy(run, tmp_path)
    result = calibrate_command(r, "random_walk", "alpha", values=[2.0, 64.0], apply=True, device="cpu")
    assert config.load(RunLayout(r).config).random_walk.alpha == result["value"]
    assert f"applied random_walk.alpha={result['value']:g}" in capsys.readouterr().out
    manifest = json.loads(RunLayout(r).manifest.read_text())["stages"]["random_walk"]
    assert manifest["summary"]["calibrated"] == {"alpha": result["value"]}


def test_masks_draws_n_images_with_the_seed(run, tmp_path):
    r = _copy(run, tmp_path)
    a = calibrate_command(r, "cam", "bg_threshold", masks=5, seed=1, device="cpu")
    b = calibrate_command(r, "cam", "bg_threshold", masks=5, seed=1, device="cpu")
    c = calibrate_command(r, "cam", "bg_threshold", masks=16, device="cpu")
    assert a["masks_used"] == 5 and a["score"] == b["score"]
    sweep = json.loads(RunLayout(r).stage_metrics("make_cam").read_text())["sweep"]
    for v, s in zip(c["values"], c["score"]):  # all 16 masks: the sweep's figures
        if f"{v:g}" in sweep:
            assert s == pytest.approx(sweep[f"{v:g}"], abs=0.01)


@pytest.mark.parametrize("argv, match", [
    (["--stage", "cam", "--param", "alpha"], "calibrate chooses"),
    (["--stage", "random_walk", "--param", "bg_threshold"], "its background comes from alpha"),
    (["--stage", "cam", "--param", "bg_threshold", "--masks", "0"], "at least 1 image"),
])
def test_calibrate_errors(run, tmp_path, argv, match, capsys):
    r = _copy(run, tmp_path)
    assert cli.main(["calibrate", str(r), *argv, "--device", "cpu"]) == 2
    assert match in capsys.readouterr().err


def test_label_free_with_the_boundary_source_follows_the_borders(run, tmp_path):
    r = _copy(run, tmp_path)
    layout = RunLayout(r)
    # the walk's cached affinities and saved scores stand in for a boundary network's: nothing runs a network
    cfg = config.load(layout.config, ["random_walk.affinity=boundary", "random_walk.background=threshold"])
    layout.config.write_text(config.dump(cfg))
    got = calibrate_command(r, "random_walk", "bg_threshold", device="cpu")
    assert got["measure"].startswith("mean affinity across the labels' borders")
    assert got["value"] == got["values"][int(np.argmin(got["score"]))] and got["affinities_computed"] == 0
    cam = calibrate_command(r, "cam", "bg_threshold", device="cpu")
    assert cam["walk"]["param"] == "bg_threshold" and cam["walk"]["value"] == got["value"]


def test_an_interrupted_apply_leaves_the_walk_to_be_redone(run, tmp_path, monkeypatch):
    r = _copy(run, tmp_path)
    import affinitynet.stages.random_walk as rw_stage

    calls = []
    real = rw_stage.save_walk

    def stop_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rw_stage, "save_walk", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        apply_value(run_context(r, "cpu"), "random_walk", "alpha", 4.0)
    monkeypatch.undo()
    record = json.loads(RunLayout(r).manifest.read_text())["stages"]["random_walk"]
    assert record["status"] != "done" and record["key"] == ""
    results = runner.run_pipeline(config.load(RunLayout(r).config), r, start="random_walk", stop="random_walk",
                                  verbose=False)
    assert [x.status for x in results] == ["done"]  # redone from scratch, not resumed from a mix of values


# ----------------------------------------------------------------------------- random_walk.choose_alpha
# The walk chooses its alpha itself by the same criterion: every candidate's walk from one propagation of every
# candidate's background beside the CAMs (the walk is linear in its scores), checked against a walk per alpha,
# against calibrate's choice (which walks each candidate on its own), and against a re-run at the chosen alpha.

CANDIDATES = [1.0, 4.0, 16.0, 64.0]


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """A tiny run whose walk chose its alpha among ``CANDIDATES``."""
    base = tmp_path_factory.mktemp("choose_alpha")
    out = base / "run"
    cfg = _cfg(base / "data", "random_walk.choose_alpha=true", f"random_walk.alpha_candidates={CANDIDATES}")
    runner.run_pipeline(cfg, out, stop="random_walk", verbose=False)
    return out


def test_every_candidate_from_one_walk_equals_the_walk_at_its_alpha():
    gen = torch.Generator().manual_seed(0)
    gh, gw, stride, radius = 6, 7, 4, 2
    g = WalkGrid((gh * stride, gw * stride), (gh * stride, gw * stride), (gh, gw), stride, (0, 0, 0, 0), False)
    maps = torch.rand(2, gh * stride, gw * stride, generator=gen).numpy()
    p = pair_indices(gh, gw, radius)[0].numel()
    aff = torch.rand(1, p, generator=gen)
    alphas = [1.0, 2.0, 3.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0]  # 12 channels: two groups of the stencil's 8
    cfg = RandomWalkConfig(radius=radius, beta=8.0, logt=4)
    out = walk_candidates(g, maps, aff, cfg, torch.device("cpu"), alphas)
    for t, a in enumerate(alphas):
        single = walk_from_affinity(g, maps, aff, RandomWalkConfig(radius=radius, beta=8.0, logt=4, alpha=a),
                                    torch.device("cpu"))
        torch.testing.assert_close(candidate(out, t, len(alphas)), single, rtol=1e-5, atol=1e-7)
    # the border criterion of each candidate, by hand from its labels on the grid
    keys = np.array([2, 5])
    border = border_affinities(g, out, keys, aff, len(alphas), cfg)
    idx_from, idx_to = (t.numpy() for t in pair_indices(gh, gw, radius))
    for t in range(len(alphas)):
        lab = np.array([0, 2, 5])[candidate(out, t, len(alphas))[0].argmax(0).reshape(-1).numpy()]
        w = aff.reshape(-1).double().numpy()
        crossing = lab[idx_from] != lab[idx_to]
        assert border[t] == pytest.approx(w[crossing].mean() if crossing.any() else 1.0)
        assert border[t] == pytest.approx(boundary_affinity(lab, w, idx_from, idx_to))


def test_the_walk_chooses_what_calibrate_chooses_and_writes_what_a_run_at_that_alpha_writes(chosen, tmp_path):
    layout = RunLayout(chosen)
    choice = json.loads((chosen / "random_walk" / "alpha.json").read_text())
    assert choice["candidates"] == CANDIDATES and choice["alpha"] in CANDIDATES
    assert choice["images"] == 16 and 0 < choice["stability"] <= 1
    assert not (chosen / "random_walk" / "candidates").exists()  # pass 1's files go once the labels are written
    manifest = json.loads((chosen / "manifest.json").read_text())["stages"]
    assert manifest["random_walk"]["summary"]["alpha"] == choice["alpha"]
    metrics = json.loads(layout.stage_metrics("random_walk").read_text())
    assert metrics["alpha_chosen"]["alpha"] == choice["alpha"]

    # calibrate walks each candidate on its own from the cached affinities: the same scores and the same choice
    ctx = run_context(chosen, "cpu")
    result = calibrate(ctx, "random_walk", "alpha", values=CANDIDATES)
    assert result["value"] == choice["alpha"] and result["current"] == choice["alpha"]
    np.testing.assert_allclose(result["score"], choice["border_affinity"], atol=2e-5)
    assert "--set random_walk.choose_alpha=false" in result["set"]

    # the same run at the chosen alpha, fixed: byte-equal labels and equal saved scores
    fixed = shutil.copytree(chosen, tmp_path / "fixed", symlinks=True)
    cfg = config.load(layout.config, ["random_walk.choose_alpha=false", f"random_walk.alpha={choice['alpha']}"])
    runner.run_pipeline(cfg, fixed, stop="random_walk", verbose=False)
    assert json.loads((fixed / "manifest.json").read_text())["stages"]["random_walk"]["summary"].get("alpha") is None
    for name in ctx.train_set.names:
        assert (fixed / "random_walk" / f"{name}.png").read_bytes() == layout.pseudo_label(name).read_bytes(), name
        a = np.load(RunLayout(fixed).walk_scores(name))["scores"]
        b = np.load(layout.walk_scores(name))["scores"]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_an_interrupted_choice_resumes_from_the_candidates_already_walked(chosen, tmp_path, monkeypatch):
    from affinitynet.stages import walk_alpha as random_walk

    run = shutil.copytree(chosen, tmp_path / "run", symlinks=True)
    layout = RunLayout(run)
    before = {n: layout.pseudo_label(n).read_bytes() for n in run_context(run, "cpu").train_set.names}
    (run / "random_walk" / "alpha.json").unlink()
    for n in before:
        layout.pseudo_label(n).unlink()
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["random_walk"]["status"] = "running"  # stopped within the stage: it resumes, nothing is cleared
    (run / "manifest.json").write_text(json.dumps(manifest))
    cfg = config.load(layout.config)

    # stopped in pass 2, after every candidate was walked and 5 labels were written
    written = []
    chosen_call = random_walk._ChosenWalker.__call__

    def stop_after_five(self, name):
        if len(written) == 5:
            raise RuntimeError("stopped")
        written.append(name)
        chosen_call(self, name)

    monkeypatch.setattr(random_walk._ChosenWalker, "__call__", stop_after_five)
    with pytest.raises(Exception, match="stopped"):
        runner.run_pipeline(cfg, run, stop="random_walk", verbose=False)
    assert len(list((run / "random_walk" / "candidates").glob("*.npz"))) == len(before)
    assert (run / "random_walk" / "alpha.json").is_file()

    # the next run walks no candidate again and ends with the same labels
    monkeypatch.setattr(random_walk._ChosenWalker, "__call__", chosen_call)
    walked = []
    candidate_call = random_walk._CandidateWalker.__call__
    monkeypatch.setattr(random_walk._CandidateWalker, "__call__",
                        lambda self, name: (walked.append(name), candidate_call(self, name)))
    runner.run_pipeline(cfg, run, stop="random_walk", verbose=False)
    assert walked == []
    assert {n: layout.pseudo_label(n).read_bytes() for n in before} == before
    assert not (run / "random_walk" / "candidates").exists()


def test_bad_candidates_are_named_and_the_threshold_background_needs_none(tmp_path):
    from affinitynet.validate import config_problems

    cfg = _cfg(tmp_path / "data", "random_walk.choose_alpha=true", "random_walk.alpha_candidates=[4, -1]")
    assert "random_walk.alpha_candidates" in str(config_problems(cfg, files=False))
    cfg = _cfg(tmp_path / "data", "random_walk.choose_alpha=true", "random_walk.alpha_candidates=[]")
    assert "random_walk.alpha_candidates" in str(config_problems(cfg, files=False))
    cfg = _cfg(tmp_path / "data", "random_walk.choose_alpha=true", "random_walk.alpha_candidates=[]",
               "random_walk.background=threshold")  # IRN's background has no alpha: the setting is idle
    assert "random_walk" not in str(config_problems(cfg, files=False))
