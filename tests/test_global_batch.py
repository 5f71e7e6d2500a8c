"""``batch_size`` is the global batch: N processes and accumulation steps train what one process trains.

The torchrun test trains the classifier and AffinityNet (tiny backbone, its BatchNorm training; and with
BatchNorm frozen, 2 accumulation steps on top of the 2 processes) with 2 gloo processes and compares
every weight and buffer with a 1-process run of the same global batch. Measured on this CPU: at most
3.6e-7 apart (trained BatchNorm) and 1.2e-7 (accumulation), from the order in which the parts' gradients
are added; per-process BatchNorm statistics instead give 0.13, and averaging each process's own loss
mean instead of the whole batch's 3.8e-3 (AffinityNet, whose processes hold unequal numbers of pairs).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import global_batch_job as job
from affinitynet.dist import DistInfo
from affinitynet.global_batch import GlobalBatches, MeanLoss, split_batch
from affinitynet.errors import ConfigError
from affinitynet.ops.loss import weighted_mean

TOLERANCE = 1e-5  # float32 weights of order 0.1-1 after 4 SGD steps; a wrong split is off by 1e-3 or more
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID")
TWO_PROCESS_JOBS = {"classifier": "classifier", "affinitynet": "affinitynet",
                    "classifier_frozen_bn": "classifier_frozen_bn:2", "affinitynet_frozen_bn": "affinitynet_frozen_bn:2"}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _max_difference(a: dict, b: dict, *, counters: bool = True) -> float:
    """Largest |a - b| over the float entries of two state dicts; with ``counters`` the integer ones must be equal."""
    assert set(a) == set(b)
    for k in a:
        if counters and not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k  # BatchNorm's num_batches_tracked
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _step_losses(folder: Path) -> list[float]:
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "step"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Each job trained by 2 gloo processes under torchrun (one launch for all of them)."""
    out = tmp_path_factory.mktemp("global_batch")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).parent / "global_batch_job.py"), str(out), *TWO_PROCESS_JOBS.values()]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return {name: out / spec.replace(":", "_acc") for name, spec in TWO_PROCESS_JOBS.items()}


@pytest.mark.parametrize("name", list(TWO_PROCESS_JOBS))
def test_two_processes_train_what_one_process_trains(name, two_processes, tmp_path, one_thread):
    job.train(tmp_path, name, DistInfo())
    one, two = _state(tmp_path / "final.pt"), _state(two_processes[name] / "final.pt")
    assert _max_difference(one, two) < TOLERANCE
    initial = job.build(name)[0].state_dict()
    assert _max_difference(one, initial, counters=False) > 1e-2  # the 4 steps did train
    assert _step_losses(two_processes[name]) == pytest.approx(_step_losses(tmp_path), rel=1e-5)


@pytest.mark.parametrize("name", ["affinitynet_frozen_bn", "deeplab_frozen_bn"])
def test_accumulation_in_one_process_trains_what_the_whole_batch_trains(name, tmp_path, one_thread):
    whole = job.train(tmp_path / "whole", name, DistInfo())
    parts = job.train(tmp_path / "parts", name, DistInfo(), accumulation=4)
    assert whole["steps"] == parts["steps"] == 4
    assert _max_difference(_state(tmp_path / "whole" / "final.pt"), _state(tmp_path / "parts" / "final.pt")) < TOLERANCE
    assert _step_losses(tmp_path / "parts") == pytest.approx(_step_losses(tmp_path / "whole"), rel=1e-5)


def test_global_batches_hold_the_same_images_however_they_are_split():
    one = list(GlobalBatches(23, 8, seed=4))
    g = torch.Generator().manual_seed(4 + 0)
    order = torch.randperm(23, generator=g).tolist()  # DistributedSampler's permutation: 1-process runs keep theirs
    assert one == [order[:8], order[8:16]]
    for processes, accumulation in ((2, 1), (4, 1), (2, 2), (1, 4), (2, 4)):
        shares = [list(GlobalBatches(23, 8, processes, r, accumulation, seed=4)) for r in range(processes)]
        for step, batch in enumerate(one):
            parts = [shares[r][step * accumulation + m] for r in range(processes) for m in range(accumulation)]
            assert all(len(p) == 8 // (processes * accumulation) for p in parts)
            assert [i for p in parts for i in p] == batch  # rank-major, then accumulation steps, in order
    sampler = GlobalBatches(23, 8, seed=4)
    sampler.set_epoch(1)
    assert list(sampler) != one and len(sampler) == 2


def test_a_loss_over_unequal_parts_is_the_loss_of_the_whole_batch():
    """Pair counts differ between parts: the mean of the parts' means is not the batch's loss, the shared counts are."""
    class Pairs(MeanLoss):
        terms, weights = ("pos", "neg"), (0.5, 0.5)

        def counts(self, batch, device):
            labels = batch[1]
            return torch.stack([(labels == 1).sum(), (labels == 0).sum()])

        def sums(self, model, batch, device):
            v, labels = model(batch[0]), batch[1]
            return torch.stack([torch.where(labels == 1, v, 0.0).sum(),
                                torch.where(labels == 0, 1 - v, 0.0).sum()]), {}

    loss = Pairs()
    labels = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [255, 255, 1, 0], [255, 255, 255, 1]])
    batch = (torch.linspace(-2, 2, 16).reshape(4, 4), labels)
    model = torch.sigmoid
    whole, logs = loss(model, batch, "cpu")
    assert set(logs) == {"pos_loss", "pos_count", "neg_loss", "neg_count"}
    parts = [(batch[0][:1], labels[:1]), (batch[0][1:], labels[1:])]
    counts = sum(loss.counts(p, "cpu") for p in parts)
    shared = sum(weighted_mean(loss.sums(model, p, "cpu")[0], counts, loss.weights) for p in parts)
    assert torch.allclose(shared, whole, atol=1e-7)
    separate = sum(loss(model, p, "cpu")[0] for p in parts) / len(parts)
    assert not torch.allclose(separate, whole, atol=1e-3)


def test_split_batch_needs_equal_parts():
    assert split_batch(16, 4, 2) == 2
    assert split_batch(10, 1, 1) == 10
    with pytest.raises(ConfigError, match=r"^segmentation.batch_size: 10 does not split evenly over 4 processes x 1 "
                                          r"accumulation step: make it a multiple of 4, or change the number of "
                                          r"processes or segmentation.accumulation$"):
        split_batch(10, 4, 1, "segmentation.batch_size")
    with pytest.raises(ConfigError, match="2 does not split evenly over 1 process x 4 accumulation steps"):
        split_batch(2, 1, 4)


# ----------------------------------------------------------------------------- the command line


def _cli(argv, capsys):
    from affinitynet import cli

    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_batch_that_does_not_split_over_the_processes_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    sets = ["--set", f"data.root={tmp_path / 'data'}", "--set", "segmentation.batch_size=10"]
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun --nproc_per_node=4 sets it, before any process group
    rc, _, err = _cli(["run", "synthetic_cpu", "--out", run, *sets], capsys)
    assert rc == 2 and err.strip().splitlines() == [
        "affinitynet: error: segmentation.batch_size: 10 does not split evenly over 4 processes x 1 accumulation "
        "step: make it a multiple of 4, or change the number of processes or segmentation.accumulation"]
    assert not run.exists()  # refused before anything ran
    monkeypatch.delenv("WORLD_SIZE")
    rc, out, _ = _cli(["check", "synthetic_cpu", *sets, "--set", "cam.accumulation=3", "--processes", "4"], capsys)
    assert rc == 1
    assert ("  cam.batch_size: 16 does not split evenly over 4 processes x 3 accumulation steps: make it a multiple "
            "of 12, or change the number of processes or cam.accumulation") in out.splitlines()
    assert "  segmentation.batch_size: 10 does not split evenly over 4 processes x 1 accumulation step: make it a " \
           "multiple of 4, or change the number of processes or segmentation.accumulation" in out.splitlines()
    assert not any("boundary.batch_size" in line for line in out.splitlines())  # a network this run does not train


def test_changing_accumulation_keeps_finished_training_stages():
    from affinitynet.config import load, resolve_config_path
    from affinitynet.runner import _stage_key
    from affinitynet.stages import stage_spec

    cfg = load(resolve_config_path("synthetic_cpu"))
    more = load(resolve_config_path("synthetic_cpu"), ["cam.accumulation=4", "affinitynet.accumulation=2",
                                                       "segmentation.accumulation=2", "boundary.accumulation=4"])
    for stage in ("train_cam", "train_affinitynet", "train_segmentation", "train_boundary"):
        assert _stage_key(more, stage_spec(stage), {}) == _stage_key(cfg, stage_spec(stage), {}), stage
