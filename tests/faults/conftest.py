"""Fixtures of the fault-injection suite: one small synthetic set and one finished reference run per session.

The reference run is a real ``python -m affinitynet run`` subprocess, built once and never modified; tests
copy it (or the dataset) into their own temporary folder before damaging anything.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from faultkit import N_TRAIN, N_VAL, SIZE, python_cli, run_cmd, temp_files


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """The synthetic set the FAST settings describe, generated once (VOC layout)."""
    from affinitynet.data.synthetic import generate

    root = tmp_path_factory.mktemp("faults") / "data"
    generate(root, train=N_TRAIN, val=N_VAL, size=SIZE, classes=5, seed=0)
    return root


@pytest.fixture(scope="session")
def reference_run(synth_root) -> Path:
    """A finished, uninterrupted run of every stage on ``synth_root`` (built once, never modified)."""
    run = synth_root.parent / "reference"
    res = python_cli(*run_cmd(run, synth_root))
    assert res.returncode == 0, res.stderr[-3000:]
    assert not temp_files(run)
    for p in (run / "classifier" / "final.pt", run / "affinitynet" / "final.pt", run / "deeplab" / "final.pt",
              run / "metrics.json"):
        assert p.is_file(), p
    return run


@pytest.fixture
def data_copy(synth_root, tmp_path) -> Path:
    """A private copy of the synthetic set, free to damage (read as a plain VOC-layout folder)."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))
