"""Bad input: damaged images, masks, annotations and tags; bad configs; checkpoints that do not fit or are cut short.

Every case must end with one ``affinitynet: error: FILE: PROBLEM`` line, a non-zero exit and no traceback,
and must not damage what was already computed.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet.config import CamConfig
from affinitynet.engine import save_checkpoint
from affinitynet.io import load_label_png, save_label_png
from affinitynet.models import build_classifier
from faultkit import (N_TRAIN, copy_run, error_line, file_bytes, first_name, in_process, python_cli, run_cmd,
                      temp_files)

VOC = ("data.kind=voc",)  # the damaged copies are read as any user's VOC-layout folder
ONE_EPOCH = ("cam.epochs=1",)


# ----------------------------------------------------------------------------- images, annotations, tags

def _truncate_jpeg(root, name):
    p = root / "JPEGImages" / f"{name}.jpg"
    p.write_bytes(p.read_bytes()[:300])
    return p, "cannot read image (Truncated File Read)"


def _not_an_image(root, name):
    p = root / "JPEGImages" / f"{name}.jpg"
    p.write_text("<html>this is not a JPEG</html>")
    return p, "cannot read image (cannot identify image file"


def _missing_image(root, name):
    p = root / "JPEGImages" / f"{name}.jpg"
    p.unlink()
    return p, f"image file not found (listed in {root / 'ImageSets' / 'Segmentation' / 'train.txt'})"


def _xml_does_not_parse(root, name):
    p = root / "Annotations" / f"{name}.xml"
    p.write_text("<annotation><object><name>checker</name>")
    return p, "annotation XML does not parse"


def _xml_unknown_class(root, name):
    p = root / "Annotations" / f"{name}.xml"
    text = p.read_text()
    start = text.index("<name>") + len("<name>")
    p.write_text(text[:start] + "zebra" + text[text.index("</name>", start):])
    return p, "unknown class 'zebra' (known: hstripes, vstripes, checker, dots, rings)"


def _empty_tags(root, name):
    p = root / "Annotations" / f"{name}.xml"
    p.write_text(f"<annotation><filename>{name}.jpg</filename></annotation>\n")
    return p, f"image '{name}' has no foreground class tags (a classifier cannot learn from it); remove it from the split"


@pytest.mark.parametrize("damage", [_truncate_jpeg, _not_an_image, _missing_image, _xml_does_not_parse,
                                    _xml_unknown_class, _empty_tags], ids=lambda f: f.__name__.strip("_"))
def test_damaged_training_input(damage, data_copy, tmp_path, capsys):
    name = (data_copy / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[5]
    path, problem = damage(data_copy, name)
    run = tmp_path / "run"
    rc, _, err = in_process(run_cmd(run, data_copy, *VOC, *ONE_EPOCH, args=["--to", "train_cam"]), capsys)
    line = error_line(rc, err)
    assert line.startswith(f"affinitynet: error: {path}: {problem}"), line
    assert not (run / "classifier" / "final.pt").exists()
    assert not temp_files(run)


# ----------------------------------------------------------------------------- masks

def _mask_wrong_size(path):
    img = Image.open(path)
    img.resize((50, 40), Image.NEAREST).save(path)
    return "mask size 50x40 does not match image size 64x64"


def _mask_rgb(path):
    Image.open(path).convert("RGB").save(path)
    return "label mask must be a palette or grey PNG of class ids, got mode RGB"


def _mask_bad_ids(path):
    mask = load_label_png(path)
    mask[:4, :4] = 9
    mask[-2:, -2:] = 40
    save_label_png(path, mask)
    return "mask holds class ids [9, 40] but the dataset has 5 classes (valid: 0..5 and 255)"


@pytest.mark.parametrize("damage", [_mask_wrong_size, _mask_rgb, _mask_bad_ids], ids=lambda f: f.__name__[1:])
def test_damaged_mask_keeps_the_cams_and_resumes_once_fixed(damage, data_copy, synth_root, tmp_path, capsys):
    name = first_name(data_copy)
    mask = data_copy / "SegmentationClass" / f"{name}.png"
    problem = damage(mask)
    run = tmp_path / "run"
    rc, _, err = in_process(run_cmd(run, data_copy, *VOC, *ONE_EPOCH, args=["--to", "make_cam"]), capsys)
    assert error_line(rc, err) == f"affinitynet: error: {mask}: {problem}"
    cams = file_bytes(run / "cam")
    assert len([k for k in cams if k.endswith(".npz")]) == N_TRAIN  # computed before scoring: kept
    assert not temp_files(run)

    shutil.copy(synth_root / "SegmentationClass" / f"{name}.png", mask)  # the user fixes the mask
    rc, _, err = in_process(run_cmd(run, data_copy, *VOC, *ONE_EPOCH, args=["--to", "make_cam"]), capsys)
    assert rc == 0, err
    assert f"{N_TRAIN} of {N_TRAIN} images already done, resuming" in err
    assert {k: v for k, v in file_bytes(run / "cam").items() if k.endswith(".npz")} == cams


# ----------------------------------------------------------------------------- configs

def test_wrong_type_on_the_command_line(synth_root, tmp_path, capsys):
    rc, _, err = in_process(run_cmd(tmp_path / "run", synth_root, "cam.epochs=two"), capsys)
    assert error_line(rc, err) == "affinitynet: error: --set cam.epochs=two: cam.epochs: expected an integer, got 'two'"
    assert not (tmp_path / "run").exists()


def test_wrong_type_in_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cam:\n  epochs: [1, 2]\n  lr: fast\n")
    rc, _, err = in_process(["run", cfg, "--out", tmp_path / "run"], capsys)
    assert error_line(rc, err) == f"affinitynet: error: {cfg}: cam.epochs: expected an integer, got [1, 2]"


def test_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cam:\n  epoch: 3\n")
    rc, _, err = in_process(["run", cfg, "--out", tmp_path / "run"], capsys)
    line = error_line(rc, err)
    assert line.startswith(f"affinitynet: error: {cfg}: unknown key 'cam.epoch' (valid keys of cam: backbone, ")
    assert "epochs" in line


def test_config_file_not_found(tmp_path, capsys):
    rc, _, err = in_process(["run", tmp_path / "nope.yaml", "--out", tmp_path / "run"], capsys)
    line = error_line(rc, err)
    assert line.startswith(f"affinitynet: error: {tmp_path / 'nope.yaml'}: config file not found (built-in presets: ")


def test_missing_dataset_root(tmp_path, capsys):
    root = tmp_path / "no" / "such" / "VOC2012"
    rc, _, err = in_process(run_cmd(tmp_path / "run", root, *VOC, args=["--to", "train_cam"]), capsys)
    assert error_line(rc, err) == f"affinitynet: error: {root}: dataset root not found (data.root)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(synth_root, tmp_path, capsys):
    rc, _, err = in_process(run_cmd(tmp_path / "run", synth_root, "runtime.device=cuda"), capsys)
    assert error_line(rc, err) == ("affinitynet: error: runtime.device=cuda: CUDA is not available on this "
                                   "machine (use cpu or auto)")


# ----------------------------------------------------------------------------- checkpoints

def _fake_resnet38(path):
    """A state dict with the AffinityNet release's ResNet-38 key names (what res38 weights look like)."""
    torch.save({"conv1a.weight": torch.zeros(64, 3, 3, 3), "b2.conv_branch2a.weight": torch.zeros(128, 64, 3, 3)},
               path)
    return path


def test_classifier_replaced_by_one_with_other_classes(reference_run, synth_root, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    save_checkpoint(run / "classifier" / "final.pt", model=build_classifier(CamConfig(), 3))  # another run's
    shutil.rmtree(run / "cam")  # recompute the CAMs with it
    keep = file_bytes(run / "affinity_labels")
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "make_cam"]), capsys)
    assert error_line(rc, err) == (f"affinitynet: error: {run / 'classifier' / 'final.pt'}: checkpoint has 3 "
                                   f"classes, the config asks for 5 (classifier.weight)")
    assert file_bytes(run / "affinity_labels") == keep
    assert not temp_files(run)


def test_classifier_replaced_by_one_of_another_backbone(reference_run, synth_root, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    ckpt = run / "classifier" / "final.pt"
    torch.save({"model": {"backbone." + k: v for k, v in torch.load(_fake_resnet38(tmp_path / "r38.pt")).items()}},
               ckpt)
    shutil.rmtree(run / "cam")
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "make_cam"]), capsys)
    assert error_line(rc, err) == f"affinitynet: error: {ckpt}: checkpoint is for backbone resnet38, the model uses tiny"


def test_pretrained_weights_of_another_backbone(synth_root, tmp_path, capsys):
    weights = _fake_resnet38(tmp_path / "res38.pth")
    rc, _, err = in_process(run_cmd(tmp_path / "run", synth_root, f"cam.pretrained={weights}",
                                    args=["--to", "train_cam"]), capsys)
    assert error_line(rc, err) == f"affinitynet: error: {weights}: checkpoint is for backbone resnet38, the model uses tiny"


def test_pretrained_file_missing(synth_root, tmp_path, capsys):
    weights = tmp_path / "imagenet.pth"
    rc, _, err = in_process(run_cmd(tmp_path / "run", synth_root, f"cam.pretrained={weights}",
                                    args=["--to", "train_cam"]), capsys)
    assert error_line(rc, err) == f"affinitynet: error: {weights}: checkpoint file not found"


def test_predict_with_a_truncated_checkpoint(reference_run, synth_root, tmp_path):
    ckpt = tmp_path / "final.pt"
    ckpt.write_bytes((reference_run / "deeplab" / "final.pt").read_bytes()[:5000])
    res = python_cli("predict", "--checkpoint", ckpt, synth_root / "JPEGImages" / "val_00000.jpg",
                     "--out", tmp_path / "pred", "--device", "cpu")
    line = error_line(res.returncode, res.stderr)
    assert line.startswith(f"affinitynet: error: {ckpt}: cannot read checkpoint, the file is truncated or corrupt")
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("other", ["classifier", "affinitynet"])
def test_predict_with_a_checkpoint_of_another_network(other, reference_run, synth_root, tmp_path, capsys):
    ckpt = reference_run / other / "final.pt"
    rc, _, err = in_process(["predict", "--checkpoint", ckpt, synth_root / "JPEGImages" / "val_00000.jpg",
                             "--out", tmp_path / "pred", "--device", "cpu"], capsys)
    assert error_line(rc, err) == (f"affinitynet: error: {ckpt}: not a segmentation network but a {other} "
                                   f"checkpoint; predict takes RUN/deeplab/final.pt")


def test_truncated_checkpoint_in_the_run(reference_run, synth_root, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    ckpt = run / "affinitynet" / "final.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:3000])
    shutil.rmtree(run / "random_walk")
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "random_walk"]), capsys)
    line = error_line(rc, err)
    assert line == (f"affinitynet: error: {ckpt}: cannot read checkpoint, the file is truncated or corrupt "
                    f"(PytorchStreamReader failed reading zip archive: failed finding central directory)")
    assert file_bytes(run / "cam") == file_bytes(reference_run / "cam")


def test_truncated_resume_checkpoint(reference_run, synth_root, tmp_path, capsys):
    run = copy_run(reference_run, tmp_path / "run")
    last = run / "classifier" / "last.pt"
    last.write_bytes(last.read_bytes()[:3000])
    (run / "classifier" / "final.pt").unlink()  # the training was interrupted and its last.pt damaged
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "train_cam"]), capsys)
    line = error_line(rc, err)
    assert line.startswith(f"affinitynet: error: {last}: cannot read checkpoint, the file is truncated or corrupt")
    assert line.endswith("; delete it to restart this training from epoch 1")
    last.unlink()  # doing what the message says works
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", "train_cam"]), capsys)
    assert rc == 0, err
    assert np.isfinite(torch.load(run / "classifier" / "final.pt", weights_only=True)["extra"]["loss"])
