"""Per-image work spread and overlapped: worker pools that get the work once, inputs prepared ahead in DataLoader
workers, jobs finished behind the main process (affinitynet.context, affinitynet.overlap)."""
import os
import time

import numpy as np
import pytest
import torch

from affinitynet import config
from affinitynet.context import StageContext
from affinitynet.dist import available_cores
from affinitynet.errors import DataError, StageError
from affinitynet.overlap import Behind, prefetched


def _ctx(tmp_path) -> StageContext:
    cfg = config.Config()
    cfg.runtime.progress = False
    return StageContext(cfg=cfg, run_dir=tmp_path, device=torch.device("cpu"))


class CountedWork:
    """Picklable per-image work: counts (in this process) how often it is pickled; each image's file records the
    process and the copy of the work that wrote it."""

    pickled = 0

    def __init__(self, out):
        self.out = out

    def __getstate__(self):
        type(self).pickled += 1
        return self.__dict__

    def __call__(self, name):
        (self.out / f"{name}.txt").write_text(f"{os.getpid()} {id(self)}")


@pytest.mark.skipif(available_cores() < 2, reason="a pool needs 2 cores")
def test_pool_workers_get_the_work_once_and_tasks_carry_only_names(tmp_path):
    names = [f"im{i}" for i in range(8)]
    CountedWork.pickled = 0
    counts = _ctx(tmp_path).map_images(names, lambda n: tmp_path / f"{n}.txt", CountedWork(tmp_path), desc="t",
                                       workers=2)
    assert counts == {"done": 8, "skipped": 0}
    assert CountedWork.pickled == 2  # once per worker process, not once per image (8)
    copies = {}
    for n in names:
        pid, copy = (tmp_path / f"{n}.txt").read_text().split()
        copies.setdefault(pid, set()).add(copy)
    assert 1 <= len(copies) <= 2 and all(len(c) == 1 for c in copies.values())  # one copy of the work per process


def test_the_walk_builds_its_affinity_source_once_per_process(monkeypatch, tmp_path):
    from affinitynet.stages import random_walk

    built = []
    monkeypatch.setattr(random_walk, "affinity_source", lambda cfg, layout, device: built.append(1) or object())
    walker = random_walk.Walker(None, None, config.Config(), torch.device("cpu"))
    assert walker.source() is walker.source() and built == [1]


def _prepare(name):
    if name == "bad":
        raise DataError(f"/data/{name}.jpg", "cannot read image (truncated)")
    return torch.full((2, 3), float(name[2:])), np.array([int(name[2:])])


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_inputs_come_in_order_and_errors_as_raised(workers):
    names = [f"im{i}" for i in range(7)]
    got = []
    with pytest.raises(DataError, match=r"^/data/bad.jpg: cannot read image \(truncated\)$"):
        for item in prefetched(names + ["bad", "im8"], _prepare, workers=workers):
            got.append(item)
    assert [n for n, _ in got] == names
    for n, (t, a) in got:
        assert torch.equal(t, torch.full((2, 3), float(n[2:]))) and isinstance(a, np.ndarray) and a[0] == int(n[2:])


def _slow_square(x):
    time.sleep(0.01 * (5 - x))  # later jobs finish first
    return x * x


def test_behind_runs_then_in_submission_order_with_bounded_jobs_in_flight():
    for behind in (Behind(), Behind.writer(depth=2), Behind.processes(1, depth=3)):
        results, most = [], 0
        with behind:
            for x in range(6):
                behind.submit(_slow_square, x, then=results.append)
                most = max(most, len(behind.pending))
        assert results == [x * x for x in range(6)]
        assert most <= behind.depth and not behind.pending


def _fails(path):
    raise ValueError("bad value")


def test_an_error_in_a_job_surfaces_naming_its_file_and_drops_the_jobs_after_it(tmp_path):
    done = []
    with pytest.raises(StageError, match=r"cam/im1.npz: ValueError: bad value"):
        with Behind.writer(depth=4) as behind:
            behind.submit(done.append, "im0")
            behind.submit(_fails, "x", path="cam/im1.npz")
            for i in range(2, 6):
                behind.submit(time.sleep, 0.05, then=lambda _, i=i: done.append(f"im{i}"))
    assert done[0] == "im0" and len(done) < 6
    with pytest.raises(OSError) as err:  # an error that names its file passes unchanged
        with Behind.writer() as behind:
            behind.submit(open, str(tmp_path / "missing" / "x"), path="other")
    assert err.value.filename == str(tmp_path / "missing" / "x")


def test_an_error_in_the_main_process_lets_the_jobs_in_flight_finish():
    done = []
    with pytest.raises(KeyError):
        with Behind.writer(depth=8) as behind:
            for i in range(4):
                behind.submit(time.sleep, 0.02, then=lambda _, i=i: done.append(i))
            raise KeyError("the network ran out of memory")
    assert done == [0, 1, 2, 3]  # finished images are kept


def test_ctrl_c_terminates_a_pool_of_slow_jobs_without_waiting():
    start = time.perf_counter()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with Behind.processes(2) as behind:
            for _ in range(4):
                behind.submit(time.sleep, 30, then=done.append)
            raise KeyboardInterrupt
    assert done == [] and time.perf_counter() - start < 25


def test_pool_workers_leave_the_run_s_process_group():
    """SIGTERM to the run's process group must reach the parent alone: a pool worker killed while it waits for its
    next task dies holding the task queue's lock, and the parent's ``Pool.terminate`` would wait for it forever
    (tests/faults/test_real_world.py sends SIGTERM to the group of a real run)."""
    import multiprocessing as mp

    from affinitynet.overlap import worker_init

    with mp.get_context("spawn").Pool(2, initializer=worker_init) as pool:
        groups = {pool.apply_async(os.getpgid, (0,)).get(timeout=60) for _ in range(4)}
        pids = {p.pid for p in pool._pool}
    assert groups <= pids and os.getpgid(0) not in groups
