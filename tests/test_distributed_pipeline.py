"""The whole pipeline under ``torchrun`` with 2 CPU processes on gloo, against a 1-process run of the same config.

One module-scoped pair of runs (tiny synthetic set, one epoch per network) feeds several checks: the same
files as the single-process run, one output per image made by exactly one rank, the same weights on every
rank, rank-0-only logging, no temporary files, and a resumed stage after a simulated crash.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affinitynet import dist
from affinitynet.data import build_dataset
from affinitynet.engine import DUMP_ENV
from affinitynet.config import load
from affinitynet.config import resolve_config_path
from affinitynet.layout import idle_stages
from affinitynet.stages import STAGE_NAMES

TINY = [
    "data.synthetic.train=16", "data.synthetic.val=6", "data.synthetic.size=64",
    "cam.epochs=1", "affinitynet.epochs=1", "segmentation.epochs=1",
    "cam.batch_size=4", "affinitynet.batch_size=4", "segmentation.batch_size=4",
    "cam.crop_size=64", "affinitynet.crop_size=64", "segmentation.crop_size=64",
    "cam.resize_long=[56,72]", "affinitynet.resize_long=[56,72]",
    "cam.scales=[1.0,0.5]", "segmentation.test_scales=[1.0]", "cam.overlays=2",
    "affinity_labels.workers=1", "runtime.progress=false", "runtime.threads=0",
]
# torchrun's own variables must not leak from a surrounding job into the runs started here
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
               "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", DUMP_ENV)
PER_IMAGE = {"cam": (".npz", "train"), "affinity_labels": (".png", "train"),
             "random_walk": (".png", "train"), "segmentation": (".png", "val")}
ACTIVE = [s for s in STAGE_NAMES if s not in idle_stages("affinitynet")]  # the preset walks with AffinityNet
NETWORKS = {"classifier": "train_cam", "affinitynet": "train_affinitynet", "deeplab": "train_segmentation"}


def _settings(data_root: Path) -> list[str]:
    return [f"data.root={data_root}", *TINY]


def _launch(args: list[str], *, nproc: int, env_extra: dict | None = None, timeout: int = 300):
    """Run ``affinitynet ARGS`` in 1 process or under torchrun (loopback rendezvous); return (rc, output)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(env_extra or {})
    if nproc == 1:
        cmd = [sys.executable, "-m", "affinitynet", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "affinitynet", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker processes
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def _run_args(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    args = ["--debug", "run", "synthetic_cpu", "--out", str(run_dir), *extra]
    for s in _settings(data_root):
        args += ["--set", s]
    return args


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-process run and a 2-process torchrun run of the same config on the same synthetic set."""
    base = tmp_path_factory.mktemp("dist_pipeline")
    data = base / "data"
    rc, out1 = _launch(_run_args(base / "run1", data), nproc=1)
    assert rc == 0, out1[-4000:]
    dump = base / "rank_weights"
    rc, out2 = _launch(_run_args(base / "run2", data), nproc=2, env_extra={DUMP_ENV: str(dump)})
    assert rc == 0, out2[-4000:]
    cfg = load(resolve_config_path("synthetic_cpu"), _settings(data))
    names = {split: build_dataset(cfg.data, s).names
             for split, s in (("train", cfg.data.train_split), ("val", cfg.data.val_split))}
    return {"base": base, "data": data, "run1": base / "run1", "run2": base / "run2", "out2": out2,
            "dump": dump, "names": names}


def test_two_processes_write_the_same_files_as_one(runs):
    files1, files2 = _files(runs["run1"]), _files(runs["run2"])
    assert files1 == files2, (sorted(files1 - files2), sorted(files2 - files1))
    m = _manifest(runs["run2"])
    assert [s for s in STAGE_NAMES if m.get(s, {}).get("status") == "done"] == ACTIVE
    metrics = json.loads((runs["run2"] / "metrics.json").read_text())
    assert {"cam", "random_walk", "segmentation"} <= set(metrics)


def test_every_image_has_exactly_one_output_made_by_one_rank(runs):
    m = _manifest(runs["run2"])
    stage_of = {"cam": "make_cam", "affinity_labels": "make_affinity_labels", "random_walk": "random_walk",
                "segmentation": "segment"}
    for folder, (suffix, split) in PER_IMAGE.items():
        names = runs["names"][split]
        made = sorted(p.stem for p in (runs["run2"] / folder).glob(f"*{suffix}"))
        assert made == sorted(names), folder  # none missing, none extra
        # counts are summed over ranks: an image computed by both ranks would count twice
        summary = m[stage_of[folder]]["summary"]
        assert summary["computed"] == len(names) == summary["images"], (folder, summary)


def test_ranks_hold_identical_weights_equal_to_the_saved_checkpoint(runs):
    for net in NETWORKS:
        r0 = torch.load(runs["dump"] / f"{net}.rank0.pt", map_location="cpu", weights_only=True)
        r1 = torch.load(runs["dump"] / f"{net}.rank1.pt", map_location="cpu", weights_only=True)
        final = torch.load(runs["run2"] / net / "final.pt", map_location="cpu", weights_only=True)["model"]
        assert set(r0) == set(r1) == set(final)
        for k in r0:  # parameters and BatchNorm buffers alike
            assert torch.equal(r0[k], r1[k]), f"{net}.{k} differs between ranks"
            assert torch.equal(r0[k], final[k]), f"{net}.{k} differs from final.pt"


def test_two_processes_train_the_networks_one_process_trains(runs):
    """batch_size is the global batch, so the 2-process run's networks are the 1-process run's up to float rounding
    (measured: classifier 3.6e-7, AffinityNet 2.2e-5 from CAMs rounded to float16 a hair apart, DeepLab 1.5e-6;
    tests/test_global_batch.py holds the training alone to 1e-5), and so are the scores."""
    for net in NETWORKS:
        one = torch.load(runs["run1"] / net / "final.pt", map_location="cpu", weights_only=True)["model"]
        two = torch.load(runs["run2"] / net / "final.pt", map_location="cpu", weights_only=True)["model"]
        diff = max(float((one[k].double() - two[k].double()).abs().max()) for k in one if one[k].is_floating_point())
        assert diff < 1e-3, net
    m1 = json.loads((runs["run1"] / "metrics.json").read_text())
    m2 = json.loads((runs["run2"] / "metrics.json").read_text())
    for key in ("cam", "random_walk", "segmentation"):
        assert m2[key]["miou"] == pytest.approx(m1[key]["miou"], abs=1e-6), key


def test_training_ran_data_parallel_and_logging_is_rank0_only(runs):
    out = runs["out2"]
    assert out.count("processes=2") == 1  # the run banner, printed by rank 0 alone
    assert out.count("batch 4 = 2 processes x 1 accumulation step x 2 images; 4 iterations per epoch") == len(NETWORKS)
    log = (runs["run2"] / "log.txt").read_text()
    for stage in ACTIVE:
        assert log.count(f"[{stage}] done in") == 1
    for run in ("run1", "run2"):  # 16 images / batch 4: 4 iterations with any number of processes
        for net in NETWORKS:
            rows = [json.loads(x) for x in (runs[run] / net / "history.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if r["kind"] == "epoch"] == [4]


def test_no_temporary_files_are_left(runs):
    leftovers = [p for p in runs["base"].rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_rerun_after_a_crash_skips_finished_stages_and_resumes_the_shards(runs):
    """The on-disk state a dead rank leaves: stage marked running, some per-image files missing."""
    run2 = runs["run2"]
    names = sorted(runs["names"]["train"])
    lost = [names[0], names[1], names[5]]  # both ranks' shards lose images
    before = {n: (run2 / "random_walk" / f"{n}.png").read_bytes() for n in lost}
    for n in lost:
        (run2 / "random_walk" / f"{n}.png").unlink()
    manifest = json.loads((run2 / "manifest.json").read_text())
    rec = manifest["stages"]["random_walk"]
    manifest["stages"]["random_walk"] = {"status": "running", "key": rec["key"], "started": rec["started"]}
    (run2 / "manifest.json").write_text(json.dumps(manifest))

    rc, out = _launch(_run_args(run2, runs["data"], "--to", "random_walk"), nproc=2)
    assert rc == 0, out[-4000:]
    m = _manifest(run2)
    assert m["random_walk"]["status"] == "done"
    assert m["random_walk"]["summary"]["computed"] == len(lost)
    assert f"{len(names) - len(lost)} of {len(names)} images already done" in out
    for stage in ("train_cam", "make_cam", "make_affinity_labels", "train_affinitynet"):
        assert f"[{stage}] finished earlier with the same inputs: skipped" in out
    for n in lost:  # the same network and CAMs give the same labels
        assert (run2 / "random_walk" / f"{n}.png").read_bytes() == before[n]
    assert [p for p in run2.rglob("*") if ".tmp" in p.name] == []


# ----------------------------------------------------------------------------- helpers, single process


def test_threads_per_process_divides_the_cores():
    assert dist.threads_per_process(3, local_world_size=4, cores=16) == 3  # an explicit value wins
    assert dist.threads_per_process(0, local_world_size=1, cores=16) == 0  # torch's default
    assert dist.threads_per_process(0, local_world_size=2, cores=2) == 1
    assert dist.threads_per_process(0, local_world_size=4, cores=16) == 4
    assert dist.threads_per_process(0, local_world_size=8, cores=4) == 1  # never 0 threads
    assert dist.available_cores() >= 1


def test_single_process_gather_and_local_world_size(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert dist.all_gather_object({"n": 3}) == [{"n": 3}]
    assert dist.init_distributed("cpu").local_world_size == 1
