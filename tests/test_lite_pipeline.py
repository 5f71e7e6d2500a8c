"""Every place that feeds an EfficientNet-Lite network feeds it (x - 127) / 128, the normalisation of its weights.

The images carry a pure black and a pure white patch: in the Lite normalisation every input lies in [-1, 1] with
both ends reached, where ImageNet's mean/std would put white at 2.2-2.6 and no normalisation would give no negative
value. Each network forward is recorded with the stage (or command) that made it."""
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import config, runner
from affinitynet.commands.predict import predict_images
from affinitynet.commands.sweep import sweep_command
from affinitynet.models.efficientnet import EfficientNetLite

pytest.importorskip("pydensecrf")

LITE = "efficientnet_lite0"
TINY = [
    "data.kind=voc", "cam.epochs=1", "cam.batch_size=4", "cam.crop_size=64", "cam.resize_long=[56,72]",
    "cam.scales=[1.0,0.5]", "cam.overlays=0", "cam.color_jitter=0", "affinity_labels.workers=1",
    "affinitynet.epochs=1", "affinitynet.batch_size=4", "affinitynet.crop_size=64", "affinitynet.resize_long=[56,72]",
    "affinitynet.color_jitter=0", "random_walk.logt=3", "random_walk.radius=3",
    "segmentation.epochs=1", "segmentation.batch_size=4", "segmentation.crop_size=64",
    "ir_labels.workers=1", "boundary.epochs=1", "boundary.batch_size=4", "boundary.crop_size=64",
    "boundary.radius=5", "runtime.progress=false", "runtime.device=cpu", "runtime.threads=1",
]
BOUNDARY = [f"boundary.backbone={LITE}", "boundary.pretrained=efficientnet-lite0", "boundary.output_stride=16",
            "random_walk.affinity=boundary", "random_walk.background=threshold"]


@pytest.fixture(scope="module")
def marked_set(tmp_path_factory) -> Path:
    """The synthetic set (VOC layout, 64 px) with a black and a white 6x6 patch in every image."""
    from affinitynet.data.synthetic import generate

    root = tmp_path_factory.mktemp("lite") / "data"
    generate(root, train=8, val=3, size=64, classes=3, seed=0)
    for path in sorted((root / "JPEGImages").iterdir()):
        img = np.array(Image.open(path).convert("RGB"))
        img[26:32, 26:32] = 0
        img[32:38, 26:32] = 255
        Image.fromarray(img).save(path, quality=100) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
    return root


@pytest.fixture
def forwards(monkeypatch):
    """(caller, min, max) of every input an EfficientNet-Lite network is given."""
    calls = []
    real = EfficientNetLite._run

    def spy(self, x):
        where = [Path(f.filename).stem for f in traceback.extract_stack()
                 if "/affinitynet/stages/" in f.filename or "/affinitynet/commands/" in f.filename]
        calls.append((where[0] if where else "?", float(x.min()), float(x.max())))
        return real(self, x)

    monkeypatch.setattr(EfficientNetLite, "_run", spy)
    return calls


def _check(calls, expected):
    seen = {}
    for where, low, high in calls:
        assert -1.0 - 1e-4 <= low and high <= 128 / 128 + 1e-4, (where, low, high)
        lo, hi = seen.get(where, (0.0, 0.0))
        seen[where] = (min(lo, low), max(hi, high))
    assert set(expected) <= set(seen), sorted(seen)
    for where in expected:  # black and white both reached: the full (x - 127) / 128 range
        assert seen[where][0] < -0.95 and seen[where][1] > 0.95, (where, seen[where])


def test_every_stage_feeds_the_lite_networks_their_own_normalisation(marked_set, tmp_path, forwards):
    cfg = config.load(config.resolve_config_path("photos_cpu"), [f"data.root={marked_set}", *TINY])
    run = tmp_path / "run"
    runner.run_pipeline(cfg, run, verbose=False)
    _check(forwards, ["train_cam", "make_cam", "train_affinitynet", "random_walk", "train_segmentation", "segment"])
    forwards.clear()
    predict_images(run / "deeplab" / "final.pt", [marked_set / "JPEGImages"], tmp_path / "pred", device="cpu")
    sweep_command(run, "random_walk", "beta=4,8", device="cpu")  # no affinity cache: the source runs again
    _check(forwards, ["predict", "sweep"])


def test_the_boundary_network_gets_it_too(marked_set, tmp_path, forwards):
    cfg = config.load(config.resolve_config_path("photos_cpu"), [f"data.root={marked_set}", *TINY, *BOUNDARY])
    runner.run_pipeline(cfg, tmp_path / "run", stop="random_walk", verbose=False)
    _check(forwards, ["train_cam", "make_cam", "train_boundary", "random_walk"])
    assert torch.get_num_threads() >= 1
