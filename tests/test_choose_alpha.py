"""``random_walk.choose_alpha``: the walk chooses its background power label-free, as ``affinitynet calibrate`` does.

The candidates' walks come from one propagation of every candidate's background beside the CAMs (the walk is linear
in its scores); checked against a walk per alpha, against calibrate's own choice (which walks each candidate
separately), and against a re-run at the chosen alpha.
"""
import json
import shutil

import numpy as np
import pytest
import torch

from affinitynet import config, runner
from affinitynet.ops.criteria import boundary_affinity
from affinitynet.commands.calibrate import calibrate
from affinitynet.commands.sweep import run_context
from affinitynet.layout import RunLayout
from affinitynet.ops.pairs import pair_indices
from affinitynet.stages.random_walk import WalkGrid, walk_from_affinity
from affinitynet.stages.walk_alpha import border_affinities, candidate, walk_candidates
from affinitynet.settings import RandomWalkConfig

TINY = ["data.synthetic.train=16", "data.synthetic.val=4", "data.synthetic.size=64", "data.synthetic.classes=3",
        "cam.epochs=4", "affinitynet.epochs=2", "cam.batch_size=4", "affinitynet.batch_size=4", "cam.crop_size=64",
        "affinitynet.crop_size=64", "cam.resize_long=[56,72]", "affinitynet.resize_long=[56,72]", "cam.scales=[1.0]",
        "cam.overlays=0", "affinity_labels.workers=1", "runtime.device=cpu", "runtime.threads=1",
        "runtime.progress=false", "random_walk.scale=1.0", "random_walk.cache_affinity=true"]
CANDIDATES = [1.0, 4.0, 16.0, 64.0]


def _cfg(root, *extra):
    return config.load(config.resolve_config_path("synthetic_cpu"), [f"data.root={root}", *TINY, *extra])


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
