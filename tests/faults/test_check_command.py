"""``affinitynet check``: every problem of a config and its data reported at once, one line each."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from affinitynet import config
from affinitynet.commands.check import run_check
from affinitynet.io import load_label_png, save_label_png
from faultkit import FAST, in_process, set_args

VOC = "data.kind=voc"


def _names(root, split):
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def test_clean_dataset_passes(synth_root, capsys):
    rc, out, _ = in_process(["check", "synthetic_cpu", *set_args(synth_root)], capsys)
    assert rc == 0, out
    assert out.strip().splitlines()[-1] == "checked 32 images in train, 8 in val: 0 problems"


def test_every_problem_is_reported_at_once(data_copy, tmp_path, capsys):
    root = data_copy
    train, val = _names(root, "train"), _names(root, "val")
    expected = {}  # file or key -> the start of its problem

    p = root / "JPEGImages" / f"{train[1]}.jpg"
    p.write_bytes(p.read_bytes()[:300])
    expected[str(p)] = "cannot read image (Truncated File Read)"
    p = root / "JPEGImages" / f"{train[2]}.jpg"
    p.write_text("not an image")
    expected[str(p)] = "cannot read image (cannot identify image file"
    p = root / "JPEGImages" / f"{train[3]}.jpg"
    p.unlink()
    expected[str(p)] = "image file not found (listed in"
    p = root / "Annotations" / f"{train[4]}.xml"
    p.write_text("<annotation><object>")
    expected[str(p)] = "annotation XML does not parse"
    p = root / "Annotations" / f"{train[5]}.xml"
    p.write_text(p.read_text().replace("<name>", "<name>x", 1))
    expected[str(p)] = "unknown class 'x"
    p = root / "Annotations" / f"{train[6]}.xml"
    p.write_text("<annotation></annotation>")
    expected[str(p)] = f"image '{train[6]}' has no foreground class tags"
    p = root / "SegmentationClass" / f"{train[7]}.png"
    Image.open(p).resize((32, 64), Image.NEAREST).save(p)
    expected[str(p)] = "mask size 32x64 does not match image size 64x64"
    p = root / "SegmentationClass" / f"{val[0]}.png"
    Image.open(p).convert("RGB").save(p)
    expected[str(p)] = "label mask must be a palette or grey PNG of class ids, got mode RGB"
    p = root / "SegmentationClass" / f"{val[1]}.png"
    m = load_label_png(p)
    m[0, 0] = 6
    save_label_png(p, m)
    expected[str(p)] = "mask holds class ids [6] but the dataset has 5 classes"
    p = root / "SegmentationClass" / f"{val[2]}.png"
    p.unlink()  # a split may have masks for some images only: a note, not a problem
    bad_config = ["cam.crop_size=8", "affinitynet.epochs=0", "segmentation.backbone=resnet9",
                  f"cam.pretrained={tmp_path / 'imagenet.pth'}", "cam.batch_size=40"]
    expected["cam.crop_size"] = "must be at least 16 pixels, got 8"
    expected["affinitynet.epochs"] = "must be at least 1, got 0"
    expected["segmentation.backbone"] = ("unknown backbone 'resnet9' (valid: resnet38, resnet50, resnet101, tiny, "
                                         "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)")
    expected[str(tmp_path / "imagenet.pth")] = "weights file not found (cam.pretrained)"
    expected["cam.batch_size"] = "40 is more than the 31 training images"
    if not torch.cuda.is_available():
        bad_config.append("runtime.device=cuda")
        expected["runtime.device"] = "CUDA is not available on this machine (use cpu or auto)"

    rc, out, err = in_process(["check", "synthetic_cpu", *set_args(root, VOC, *bad_config)], capsys)
    assert rc == 1, out + err
    notes = [ln for ln in out.strip().splitlines() if ln.startswith("note: ")]
    lines = [ln for ln in out.strip().splitlines() if not ln.startswith("note: ")]
    assert lines[0] == f"checked 31 images in train, 8 in val: {len(expected)} problems"
    found = {}
    for ln in lines[1:]:
        where, _, problem = ln.strip().partition(": ")
        assert where not in found, f"{where} reported twice"
        found[where] = problem
    assert found.keys() == expected.keys()
    assert notes == [f"note: {root / 'SegmentationClass'}: 1 of the 8 images of val have no mask; scores use the 7 "
                     f"that have one"], out
    for where, start in expected.items():
        assert found[where].startswith(start), (where, found[where])


def test_missing_root_and_bad_synthetic_parameters(tmp_path, capsys):
    rc, out, _ = in_process(["check", "synthetic_cpu", *set_args(tmp_path / "nothing", VOC)], capsys)
    assert rc == 1
    assert out.strip().splitlines() == ["checked no images: 1 problem",
                                        f"  {tmp_path / 'nothing'}: dataset root not found (data.root)"]
    rc, out, _ = in_process(["check", "synthetic_cpu", *set_args(tmp_path / "fresh", "data.synthetic.size=32",
                                                                  "data.synthetic.classes=12")], capsys)
    assert rc == 1
    assert "  data.synthetic.size: must be at least 48 pixels, got 32" in out.splitlines()
    assert "  data.synthetic.classes: the synthetic set has 1 to 8 classes, got 12" in out.splitlines()


def test_synthetic_root_made_with_other_parameters(synth_root, capsys):
    rc, out, _ = in_process(["check", "synthetic_cpu", *set_args(synth_root, "data.synthetic.train=20")], capsys)
    assert rc == 1
    assert f"  {synth_root}: holds a synthetic set made with " in out


def test_pretrained_weights_of_another_backbone(synth_root, tmp_path):
    weights = tmp_path / "r38.pth"
    torch.save({"conv1a.weight": torch.zeros(64, 3, 3, 3)}, weights)
    cfg = config.apply_overrides(config.Config(), [*FAST, f"data.root={synth_root}", f"cam.pretrained={weights}"])
    report = run_check(cfg)
    assert [str(p) for p in report.problems] == [f"{weights}: weights are for backbone resnet38, cam.backbone is tiny"]


@pytest.mark.parametrize("override, key", [("affinity_labels.alpha_high=2", "affinity_labels.alpha_high"),
                                           ("segmentation.head=fcn", "segmentation.head"),
                                           ("cam.scales=[]", "cam.scales"),
                                           ("cam.resize_long=[80,40]", "cam.resize_long"),
                                           ("eval.cam_bg_threshold=1.5", "eval.cam_bg_threshold")])
def test_each_nonsense_value_is_named(override, key, synth_root):
    cfg = config.apply_overrides(config.Config(), [*FAST, f"data.root={synth_root}", override])
    assert [p.where for p in run_check(cfg).problems] == [key]
