"""Work spread over processes writes what one process writes: the CRF and walk pools (names sent, the work given to
each worker once), segment's CRFs in a pool beside the network, and a signal that stops such a pool."""
from __future__ import annotations

import shutil
import signal

import pytest

from faultkit import N_VAL, copy_run, file_bytes, in_process, python_cli, run_cmd, signal_when, temp_files

from affinitynet.dist import available_cores

pytestmark = pytest.mark.skipif(available_cores() < 2, reason="the pools need 2 cores")


def test_label_and_walk_pools_write_the_same_files_byte_for_byte(reference_run, synth_root, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    for folder in ("affinity_labels", "random_walk"):
        shutil.rmtree(run / folder)
    rc, _, err = in_process(run_cmd(run, synth_root, "affinity_labels.workers=2", "random_walk.workers=2",
                                    args=["--to", "random_walk"]), capsys)
    assert rc == 0, err
    for folder in ("affinity_labels", "random_walk"):
        assert file_bytes(run / folder) == file_bytes(reference_run / folder), folder
    assert not temp_files(run)


@pytest.mark.parametrize("crf", ["segmentation.crf=true", "eval.crf_rows=true"])
def test_segment_crfs_in_a_pool_beside_the_network_give_the_same_labels(crf, reference_run, synth_root, tmp_path,
                                                                       capsys):
    folders = {}
    for workers in (0, 2):
        run = copy_run(reference_run, tmp_path / f"run{workers}")
        shutil.rmtree(run / "segmentation")
        rc, _, err = in_process(run_cmd(run, synth_root, crf, f"runtime.crf_workers={workers}",
                                        args=["--to", "segment"]), capsys)
        assert rc == 0, err
        folders[workers] = file_bytes(run / "segmentation")
        assert not temp_files(run)
    assert len([p for p in folders[0] if p.startswith("val_")]) == N_VAL
    if crf.startswith("eval"):
        assert len([p for p in folders[0] if p.startswith("crf/")]) == N_VAL
    assert folders[2] == folders[0]


def test_sigterm_stops_the_crf_pool_within_seconds_and_the_rerun_resumes(reference_run, synth_root, tmp_path,
                                                                          capsys):
    inline = copy_run(reference_run, tmp_path / "inline")
    shutil.rmtree(inline / "segmentation")
    rc, _, err = in_process(run_cmd(inline, synth_root, "segmentation.crf=true", "runtime.crf_workers=0",
                                    args=["--to", "segment"]), capsys)
    assert rc == 0, err

    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / "segmentation")
    argv = run_cmd(run, synth_root, "segmentation.crf=true", "runtime.crf_workers=2", args=["--to", "segment"])
    rc, seconds, output, _ = signal_when(argv, run, lambda r: any((r / "segmentation").glob("val_*.png")),
                                         signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output and seconds < 10, output[-3000:]
    assert not temp_files(run)
    res = python_cli(*argv)
    assert res.returncode == 0, res.stderr[-3000:]
    assert file_bytes(run / "segmentation") == file_bytes(inline / "segmentation")
