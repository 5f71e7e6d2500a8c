"""What clusters and real cards do to a run: several processes scoring the CRF rows, launchers that give each
process one GPU, file systems without locks, a card too small for a training batch.

Through the command line where a fault can be injected in this process, else through the function that failed.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from affinitynet import dist
from affinitynet.config import load
from affinitynet.errors import ConfigError
from faultkit import N_TRAIN, copy_run, error_line, in_process, run_cmd, temp_files


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- eval.crf_rows under torchrun


def _evaluate(rank: int, world: int, port: int, run: str, out: str) -> None:
    """One process of the job: the evaluate stage with eval.crf_rows; the images this process ran a CRF on."""
    from affinitynet.context import StageContext
    from affinitynet.stages import evaluate

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = dist.init_distributed("cpu")
    cfg = load(os.path.join(run, "config.yaml"), ["eval.crf_rows=true"])
    ctx = StageContext(cfg=cfg, run_dir=__import__("pathlib").Path(run), device=torch.device("cpu"),
                       log=logging.getLogger(f"rank{rank}"), rank=info.rank, world_size=info.world_size,
                       stage="evaluate")
    seen, real = [], evaluate.cam_crf_label

    def counted(image, keys, maps, threshold):
        seen.append(image.tobytes()[:64].hex())
        return real(image, keys, maps, threshold)

    evaluate.cam_crf_label = counted
    evaluate.run(ctx)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    dist.barrier()
    dist.cleanup()


def test_crf_rows_under_torchrun_are_shared_by_the_processes_and_summed(reference_run, tmp_path, capsys):
    one, two = copy_run(reference_run, tmp_path / "one"), copy_run(reference_run, tmp_path / "two")
    rc, _, err = in_process(["run", one / "config.yaml", "--out", one, "--set", "eval.crf_rows=true",
                             "--from", "evaluate"], capsys)
    assert rc == 0, err
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(var, None)
    mp.spawn(_evaluate, args=(2, _free_port(), str(two), str(tmp_path)), nprocs=2, join=True)
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == N_TRAIN // 2  # each process ran the CRF on its half, no more
    m1, m2 = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    for key in ("cam_crf", "random_walk_crf"):
        assert m2[key] == m1[key], key  # the summed confusion matrices: the 1-process scores exactly
    assert list(m2) == list(m1)


# ----------------------------------------------------------------------------- one GPU per process


def test_launchers_that_give_each_process_one_gpu_get_that_gpu(monkeypatch):
    """SLURM --gpus-per-task=1, Kubernetes: LOCAL_RANK 3 of 4, but the process sees one device, its own."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dist.resolve_device("auto", 3) == torch.device("cuda:0")
    assert dist.resolve_device("cuda", 3) == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # torchrun on a 4-GPU machine: cuda:LOCAL_RANK
    assert dist.resolve_device("auto", 3) == torch.device("cuda:3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # 4 processes, 2 visible GPUs: not guessed
    with pytest.raises(ConfigError, match=r"^runtime.device=auto: LOCAL_RANK=3, but this process sees 2 CUDA "
                                          r"devices: start at most 2 processes on this machine"):
        dist.resolve_device("auto", 3)
    with pytest.raises(ConfigError, match="only 2 CUDA device"):
        dist.resolve_device("cuda:2")


def test_a_chosen_gpu_becomes_the_process_current_device(monkeypatch):
    """A single-process cuda:1 must not leave pinned-memory threads and caches on GPU 0."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert dist.select_device("cuda:1") == torch.device("cuda:1") and current == [torch.device("cuda:1")]
    assert dist.select_device("cpu") == torch.device("cpu") and len(current) == 1


# ----------------------------------------------------------------------------- a file system without flock


def test_a_file_system_without_flock_runs_unlocked_and_says_so(reference_run, synth_root, tmp_path, capsys,
                                                               monkeypatch):
    """Lustre mounted without flock answers ENOSYS: the run goes on, unlocked, and the log says so."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    run = copy_run(reference_run, tmp_path / "run")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    rc, _, err = in_process(run_cmd(run, synth_root), capsys)
    assert rc == 0, err
    note = (f"note: {run}: this file system does not lock files (flock: Function not implemented); the run goes "
            f"on unlocked, so start no second run in this directory until it ends")
    assert note in err and note in (run / "log.txt").read_text()
    assert "nothing to do" in err


# ----------------------------------------------------------------------------- a card too small for a batch


def test_out_of_memory_while_training_names_the_key_and_resumes(reference_run, synth_root, tmp_path, capsys,
                                                                monkeypatch):
    from affinitynet.stages import train_cam

    run = copy_run(reference_run, tmp_path / "run")
    real, calls = train_cam.classification_loss, []

    def too_big(model, batch, device):
        calls.append(1)
        if len(calls) == N_TRAIN // 4 + 2:  # epoch 2, step 2: epoch 1's checkpoint is written
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.76 GiB total)")
        return real(model, batch, device)

    monkeypatch.setattr(train_cam, "classification_loss", too_big)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--force", "train_cam", "--to", "train_cam"]), capsys)
    assert error_line(rc, err) == (
        "affinitynet: error: out of memory in train_cam on cpu; raise cam.accumulation (now 1; each process holds 4 "
        "of the 4 images of a step at a time) to run them in smaller parts, and re-run the same command "
        "to resume from the last finished epoch")
    assert not temp_files(run)

    monkeypatch.setattr(train_cam, "classification_loss", real)  # doing what it says: half the images at a time
    rc, _, err = in_process(run_cmd(run, synth_root, "cam.accumulation=2", args=["--to", "train_cam"]), capsys)
    assert rc == 0, err
    assert "resuming from" in err and "epoch 1 of 2 done" in err


# ----------------------------------------------------------------------------- an older PyTorch


def test_an_older_torch_is_named_before_anything_runs(synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.2.2+cu121")
    run = tmp_path / "run"
    rc, _, err = in_process(run_cmd(run, synth_root), capsys)
    assert error_line(rc, err) == ("affinitynet: error: torch: torch 2.2.2+cu121 is older than the 2.3 this package "
                                   "needs (torch.amp.GradScaler); pip install 'torch>=2.3'")
    assert not run.exists()
    rc, out, _ = in_process(["check", "synthetic_cpu", "--set", f"data.root={synth_root}"], capsys)
    assert rc == 1 and "  torch: torch 2.2.2+cu121 is older than the 2.3" in out


def test_the_declared_torch_bound_is_the_one_the_code_needs():
    import re
    from pathlib import Path

    from affinitynet.validate import MIN_TORCH

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    bound = re.search(r'"torch>=(\d+)\.(\d+),', pyproject)
    assert bound and tuple(int(g) for g in bound.groups()) == MIN_TORCH
    assert hasattr(torch.amp, "GradScaler")  # the 2.3 API that sets the bound
