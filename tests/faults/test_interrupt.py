"""Interruptions: SIGKILL in the middle of every stage, a full disk, a diverging loss.

Each case checks that the re-run resumes, ends with the same outputs as the uninterrupted reference run
(per-image files byte-identical, trained weights exactly equal) and that no temporary file is left behind.
"""
from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch

import affinitynet.io
from faultkit import (N_TRAIN, N_VAL, assert_same_weights, copy_run, error_line, file_bytes, finite_state, in_process,
                      kill_when, python_cli, run_cmd, temp_files)

# per-image stages: output folder, file pattern, images
PER_IMAGE = {
    "make_cam": ("cam", "train_*.npz", N_TRAIN),
    "make_affinity_labels": ("affinity_labels", "train_*.png", N_TRAIN),
    "random_walk": ("random_walk", "train_*.png", N_TRAIN),
    "segment": ("segmentation", "val_*.png", N_VAL),
}
# training stages: checkpoint folder
TRAINING = {"train_cam": "classifier", "train_affinitynet": "affinitynet", "train_segmentation": "deeplab"}
UPSTREAM = ("classifier", "cam", "affinity_labels", "affinitynet")


@pytest.mark.parametrize("stage", list(PER_IMAGE))
def test_sigkill_mid_per_image_stage_resumes_to_identical_files(stage, reference_run, synth_root, tmp_path):
    folder, pattern, total = PER_IMAGE[stage]
    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / folder)  # the stage has to be redone
    kill_when(run_cmd(run, synth_root, args=["--to", stage]), run, lambda r: any((r / folder).glob(pattern)))
    done = len(list((run / folder).glob(pattern)))
    assert 0 < done < total, f"the kill did not land mid-stage ({done} of {total} written)"

    res = python_cli(*run_cmd(run, synth_root, args=["--to", stage]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{done} of {total} images already done, resuming" in res.stderr
    assert not temp_files(run)
    assert file_bytes(run / folder) == file_bytes(reference_run / folder)


@pytest.mark.parametrize("stage", list(TRAINING))
def test_sigkill_mid_training_resumes_to_identical_weights(stage, reference_run, synth_root, tmp_path):
    folder = TRAINING[stage]
    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / folder)  # the stage has to be redone
    kill_when(run_cmd(run, synth_root, args=["--to", stage]), run, lambda r: (r / folder / "last.pt").is_file())
    assert not (run / folder / "final.pt").exists(), "the kill did not land mid-training"
    assert torch.load(run / folder / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1

    res = python_cli(*run_cmd(run, synth_root, args=["--to", stage]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "epoch 1 of 2 done" in res.stderr
    assert not temp_files(run)
    assert_same_weights(run / folder / "final.pt", reference_run / folder / "final.pt")
    hist = [json.loads(ln) for ln in (run / folder / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist if h["kind"] == "epoch"] == [1, 2]


def test_stale_temp_files_of_a_killed_process_are_removed(reference_run, synth_root, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    stale = [run / "cam" / ".train_00000.npz.k3x9_a.tmp.npz", run / "classifier" / ".last.pt.q1w2e3.tmp.pt",
             run / ".manifest.json.zz11.tmp.json"]
    for p in stale:
        p.write_bytes(b"half a file")
    before = file_bytes(run / "cam")
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "make_cam"]), capsys)
    assert rc == 0, err
    assert not temp_files(run)
    before.pop(".train_00000.npz.k3x9_a.tmp.npz")
    assert file_bytes(run / "cam") == before


class FullDisk:
    """Stands in for ``os`` inside ``affinitynet.io``: renames onto files matching ``target`` fail with ENOSPC
    after ``allowed`` of them succeeded, as a disk that filled up would (the temp file is then deleted)."""

    def __init__(self, target: str, allowed: int):
        self.target, self.allowed, self.seen = target, allowed, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        if self.target in str(dst).replace(os.sep, "/"):
            self.seen += 1
            if self.seen > self.allowed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        os.replace(src, dst)


def test_disk_full_during_per_image_stage(reference_run, synth_root, tmp_path, capsys, monkeypatch):
    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / "random_walk")
    upstream = {d: file_bytes(run / d) for d in UPSTREAM}
    disk = FullDisk("random_walk/train_", allowed=5)
    monkeypatch.setattr(affinitynet.io, "os", disk)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "random_walk"]), capsys)
    line = error_line(rc, err)
    assert "random_walk/train_00005.png: No space left on device; free some space and re-run" in line
    written = sorted(p.name for p in (run / "random_walk").glob("train_*.png"))
    assert len(written) == 5
    assert not temp_files(run)
    assert {d: file_bytes(run / d) for d in UPSTREAM} == upstream  # earlier outputs intact
    json.loads((run / "manifest.json").read_text())

    monkeypatch.setattr(affinitynet.io, "os", os)  # space freed
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "random_walk"]), capsys)
    assert rc == 0, err
    assert f"5 of {N_TRAIN} images already done, resuming" in err
    assert file_bytes(run / "random_walk") == file_bytes(reference_run / "random_walk")
    assert not temp_files(run)


def test_disk_full_while_make_cam_writes_behind_the_network(reference_run, synth_root, tmp_path, capsys,
                                                            monkeypatch):
    """make_cam's files are written by a thread: its error surfaces in the run, naming the file, and the images
    after it are not written; the re-run resumes to the same files."""
    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / "cam")
    disk = FullDisk("cam/train_", allowed=5)
    monkeypatch.setattr(affinitynet.io, "os", disk)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "make_cam"]), capsys)
    line = error_line(rc, err)
    assert "cam/train_00005.npz: No space left on device; free some space and re-run" in line
    assert sorted(p.name for p in (run / "cam").glob("train_*.npz")) == [f"train_{i:05d}.npz" for i in range(5)]
    assert not temp_files(run)

    monkeypatch.setattr(affinitynet.io, "os", os)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "make_cam"]), capsys)
    assert rc == 0, err
    assert f"5 of {N_TRAIN} images already done, resuming" in err
    assert file_bytes(run / "cam") == file_bytes(reference_run / "cam")
    assert not temp_files(run)


def test_disk_full_while_writing_a_checkpoint(reference_run, synth_root, tmp_path, capsys, monkeypatch):
    run = copy_run(reference_run, tmp_path / "run")
    upstream = {d: file_bytes(run / d) for d in ("classifier", "cam", "affinity_labels")}
    monkeypatch.setattr(affinitynet.io, "os", FullDisk("affinitynet/last.pt", allowed=1))
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--force", "train_affinitynet", "--to",
                                                           "train_affinitynet"]), capsys)
    line = error_line(rc, err)
    assert "affinitynet/last.pt: No space left on device" in line
    assert torch.load(run / "affinitynet" / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 1
    assert not (run / "affinitynet" / "final.pt").exists()
    assert not temp_files(run)
    assert {d: file_bytes(run / d) for d in upstream} == upstream

    monkeypatch.setattr(affinitynet.io, "os", os)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "train_affinitynet"]), capsys)
    assert rc == 0, err
    assert_same_weights(run / "affinitynet" / "final.pt", reference_run / "affinitynet" / "final.pt")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(reference_run, synth_root, tmp_path, capsys,
                                                           monkeypatch):
    import affinitynet.stages.train_cam as train_cam

    run = copy_run(reference_run, tmp_path / "run")
    real, calls = train_cam.classification_loss, []
    steps_per_epoch = N_TRAIN // 4

    def diverging(model, batch, device):
        calls.append(1)
        loss, logs = real(model, batch, device)
        return (loss * float("nan") if len(calls) > steps_per_epoch else loss), logs

    monkeypatch.setattr(train_cam, "classification_loss", diverging)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--force", "train_cam", "--to", "train_cam"]), capsys)
    line = error_line(rc, err)
    assert f"loss became NaN at epoch 2 step {steps_per_epoch + 1}; last good checkpoint kept at" in line
    assert "classifier/last.pt" in line
    last = run / "classifier" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1 and finite_state(last)
    assert not (run / "classifier" / "final.pt").exists()
    assert not temp_files(run)

    monkeypatch.setattr(train_cam, "classification_loss", real)  # the kept checkpoint resumes normally
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "train_cam"]), capsys)
    assert rc == 0, err
    assert_same_weights(run / "classifier" / "final.pt", reference_run / "classifier" / "final.pt")


def test_real_divergence_from_a_huge_learning_rate(synth_root, tmp_path):
    run = tmp_path / "run"
    res = python_cli(*run_cmd(run, synth_root, "cam.lr=1e6", "cam.epochs=1", args=["--to", "train_cam"]))
    line = error_line(res.returncode, res.stderr)
    assert "loss became NaN at epoch 1" in line and "lower the learning rate" in line
    assert not (run / "classifier" / "final.pt").exists()
    assert not temp_files(run)
