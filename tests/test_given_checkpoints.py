"""Trained networks as stage inputs (``cam.checkpoint``, ``affinitynet.checkpoint``), release-format files,
and the scoring rows of the paper protocol (fixed CAM threshold, pseudo labels scored on another split)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import config
from affinitynet.cli import main
from affinitynet.errors import StageError
from affinitynet.io import save_label_png
from affinitynet.models import AffinityNet, Classifier, ResNet38, TinyNet, read_state_dict
from affinitynet.context import StageContext
from affinitynet.runner import load_manifest
from affinitynet.io import save_cam
from affinitynet.stages.common import scoring_set
from affinitynet.stages.make_cam import evaluate_cams

VOC20 = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
         "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def make_voc(root, sizes=((64, 80), (56, 72), (72, 64)), train=2):
    """A VOC tree with one rectangle object per image; ``train`` images in train.txt, all in train_aug.txt."""
    rng = np.random.default_rng(0)
    names = [f"2007_{i:06d}" for i in range(len(sizes))]
    for i, (name, (h, w)) in enumerate(zip(names, sizes)):
        img = np.full((h, w, 3), 40, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        c = 1 + (7 * i) % 20
        img[h // 4:3 * h // 4, w // 4:3 * w // 4] = (200, 60 + 40 * i, 30)
        mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = c
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        save_label_png(root / "SegmentationClass" / f"{name}.png", mask)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><object><name>{VOC20[c - 1]}</name></object></annotation>")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("\n".join(names[:train]) + "\n")
    (sets / "train_aug.txt").write_text("\n".join(names) + "\n")
    (sets / "val.txt").write_text(names[-1] + "\n")
    return names


def release_names(state: dict) -> dict:
    """Our Classifier / AffinityNet keys -> the release's resnet38_cls / resnet38_aff keys (no BN step counters)."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k[len("backbone."):] if k.startswith("backbone.") else k
        out["fc8." + k[len("classifier."):] if k.startswith("classifier.") else k] = v
    return out


def save_legacy(state: dict, path):
    """The pre-1.6 (non-zip) serialisation PyTorch 0.4 wrote."""
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # not a zip archive


def test_legacy_format_state_dict_reads(tmp_path):
    state = {"conv1a.weight": torch.randn(4, 3, 3, 3), "fc8.weight": torch.randn(20, 4, 1, 1)}
    save_legacy(state, tmp_path / "res38_cls.pth")
    got = read_state_dict(tmp_path / "res38_cls.pth")
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def _run(tmp_path, out, *sets):
    return main(["run", "synthetic_cpu", "--out", str(out), "--to", "make_cam",
                 "--set", f"data.root={tmp_path / 'synth'}", "--set", "data.synthetic.train=4", "--set", "data.synthetic.val=2",
                 "--set", "data.synthetic.size=48", "--set", "runtime.progress=false", "--set", "cam.overlays=0",
                 "--set", "cam.scales=[1.0]", *sum((["--set", s] for s in sets), [])])


def test_given_classifier_replaces_training_and_its_bytes_are_an_input(tmp_path):
    ckpt = tmp_path / "given.pth"
    torch.manual_seed(0)
    save_legacy(Classifier(TinyNet(), 5).state_dict(), ckpt)
    out = tmp_path / "run"
    assert _run(tmp_path, out, f"cam.checkpoint={ckpt}") == 0
    final = out / "classifier" / "final.pt"
    assert final.is_symlink() and os.path.realpath(final) == str(ckpt.resolve())
    source = json.loads((out / "classifier" / "source.json").read_text())
    assert source["checkpoint"] == str(ckpt.resolve()) and len(source["sha256"]) == 64
    assert not (out / "classifier" / "history.jsonl").exists()  # nothing was trained
    first = load_manifest(out)
    assert _run(tmp_path, out, f"cam.checkpoint={ckpt}") == 0
    assert load_manifest(out)["make_cam"]["finished"] == first["make_cam"]["finished"]  # same bytes: skipped
    torch.manual_seed(1)
    save_legacy(Classifier(TinyNet(), 5).state_dict(), ckpt)  # same path, new weights
    assert _run(tmp_path, out, f"cam.checkpoint={ckpt}") == 0
    again = load_manifest(out)
    assert again["train_cam"]["key"] != first["train_cam"]["key"]
    assert again["make_cam"]["finished"] > first["make_cam"]["finished"]  # the stages after it were redone


def test_given_checkpoint_that_does_not_fit_names_the_file(tmp_path, capsys):
    ckpt = tmp_path / "wrong.pth"
    torch.save(Classifier(TinyNet(), 3).state_dict(), ckpt)
    assert _run(tmp_path, tmp_path / "run", f"cam.checkpoint={ckpt}") == 2
    err = capsys.readouterr().err
    assert str(ckpt.resolve()) in err and "3 classes" in err


@pytest.mark.slow
def test_release_checkpoints_run_the_resnet38_preset_to_the_walk(tmp_path):
    """``voc12_resnet38`` with release-format res38_cls.pth / res38_aff.pth: no training, no affinity labels."""
    root = tmp_path / "VOC2012"
    names = make_voc(root)
    torch.manual_seed(0)
    cls = Classifier(ResNet38(), 20).eval()
    aff = AffinityNet(ResNet38()).eval()
    save_legacy(release_names(cls.state_dict()), tmp_path / "res38_cls.pth")
    save_legacy(release_names(aff.state_dict()), tmp_path / "res38_aff.pth")
    out = tmp_path / "run"
    code = main(["run", "voc12_resnet38", "--out", str(out), "--to", "random_walk",
                 "--set", f"data.root={root}", "--set", "data.voc.mask_dir=SegmentationClass",
                 "--set", f"cam.checkpoint={tmp_path / 'res38_cls.pth'}",
                 "--set", f"affinitynet.checkpoint={tmp_path / 'res38_aff.pth'}",
                 "--set", "cam.scales=[1.0, 0.5]", "--set", "runtime.device=cpu", "--set", "runtime.num_workers=0",
                 "--set", "runtime.progress=false", "--set", "cam.overlays=0"])
    assert code == 0
    manifest = load_manifest(out)
    assert "make_affinity_labels" not in manifest and not (out / "affinity_labels").exists()
    assert sorted(p.stem for p in (out / "random_walk").glob("*.png")) == sorted(names)
    # the CAM of the first image, computed from the definition with the same weights
    img = np.asarray(Image.open(root / "JPEGImages" / f"{names[0]}.jpg").convert("RGB"))
    from affinitynet.conventions import normalize_image
    from affinitynet.ops.cam import scaled_images

    views = scaled_images(img, (1.0, 0.5), cls.backbone.mean, cls.backbone.std, "bicubic")
    total = 0
    with torch.no_grad():
        for v in views:
            for flip in (False, True):
                x = v.flip(-1) if flip else v
                m = torch.relu(torch.nn.functional.conv2d(cls.backbone(x[None])[-1], cls.classifier.weight))
                m = m.flip(-1) if flip else m
                total = total + torch.nn.functional.interpolate(m, size=img.shape[:2], mode="bilinear",
                                                                align_corners=False)[0]
    c = int(np.load(out / "cam" / f"{names[0]}.npz")["keys"][0]) - 1
    expected = total[c] / (total[c].max() + 1e-5)
    got = torch.from_numpy(np.load(out / "cam" / f"{names[0]}.npz")["cams"][0].astype(np.float32))
    assert (got - expected).abs().max() < 5e-4  # float16 storage
    assert normalize_image(img, cls.backbone.mean, cls.backbone.std).shape[-2:] == img.shape[:2]
    # pseudo labels scored on train (2 images) while the stages ran on train_aug (3)
    assert json.loads((out / "random_walk" / "metrics.json").read_text())["images"] == 2


def _ctx(tmp_path, root, **eval_keys):
    cfg = config.Config()
    cfg.data.kind, cfg.data.root, cfg.data.train_split = "voc", str(root), "train_aug"
    for k, v in eval_keys.items():
        setattr(cfg.eval, k, v)
    cfg.runtime.progress = False
    return StageContext(cfg=cfg, run_dir=tmp_path / "run", device=torch.device("cpu"))


def test_cam_headline_is_the_fixed_threshold_and_the_split_can_differ(tmp_path):
    root = tmp_path / "VOC2012"
    names = make_voc(root)
    ctx = _ctx(tmp_path, root, score_split="train")
    for i, name in enumerate(names):
        gt = ctx.train_set.load_mask(name)
        cam = (gt > 0).astype(np.float32) * 0.3  # an object scored 0.3: wins at threshold 0.2, loses at 0.35
        save_cam(ctx.layout.cam(name), torch.tensor([int(gt.max())]), torch.from_numpy(cam)[None])
    ctx.cfg.eval.cam_sweep = [0.1, 0.35]
    result = evaluate_cams(ctx)
    assert result["threshold"] == 0.2 and result["images"] == 2
    assert result["miou"] == pytest.approx(100.0) and result["sweep"]["0.35"] < 100.0
    assert result["best_threshold"] in (0.1, 0.2) and result["miou_best"] == pytest.approx(100.0)
    assert [n for n in scoring_set(ctx).names] == names[:2]


def test_score_split_must_lie_inside_the_training_split(tmp_path):
    root = tmp_path / "VOC2012"
    make_voc(root)
    ctx = _ctx(tmp_path, root, score_split="val")
    ctx.cfg.data.train_split = "train"
    with pytest.raises(StageError, match="not in the training split train"):
        scoring_set(ctx)
