"""``affinitynet data voc-aug`` on a tiny VOC 2012 + SBD tree laid out as the downloads unpack, and what reads it.

The tree: VOC segmentation train {a, b} and val {c, d}; SBD train {d, e, f} and val {a, g}, its masks in
``cls/*.mat`` as SBD writes them (a struct ``GTcls`` with ``Segmentation``); a and d have both VOC and SBD
masks, and they differ (VOC's own carry 255 on object borders, SBD's none).
"""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from affinitynet import cli, io
from affinitynet.data import VOCDataset
from affinitynet.data.voc import VOC_CLASSES
from affinitynet.data.voc_aug import read_sbd_mask, train_aug_names

scipy_io = pytest.importorskip("scipy.io")

H, W = 40, 48
VOC_TRAIN, VOC_VAL = ["a", "b"], ["c", "d"]
SBD_TRAIN, SBD_VAL = ["d", "e", "f"], ["a", "g"]
CLASS = {n: i + 1 for i, n in enumerate("abcdefg")}  # each image holds one class (a: aeroplane, b: bicycle, ...)


def _mask(name: str, *, border: bool) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[8:30, 10:40] = CLASS[name]
    if border:  # VOC's void outline
        m[7, 9:41] = m[30, 9:41] = 255
    return m


def _write_sbd_mat(path, mask: np.ndarray) -> None:
    """An SBD ``cls`` file: struct GTcls with Boundaries (one cell per class), Segmentation and CategoriesPresent."""
    boundaries = np.empty((len(VOC_CLASSES), 1), dtype=object)
    for k in range(len(VOC_CLASSES)):
        boundaries[k, 0] = np.zeros((H, W), np.uint8)
    present = np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8)
    scipy_io.savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": mask,
                                      "CategoriesPresent": present}})


@pytest.fixture
def downloads(tmp_path):
    """(VOCdevkit/VOC2012 folder, benchmark_RELEASE folder) as unpacked, SBD not yet converted."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CLASS:
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        ann = ET.Element("annotation")
        ET.SubElement(ET.SubElement(ann, "object"), "name").text = VOC_CLASSES[CLASS[name] - 1]
        ET.ElementTree(ann).write(voc / "Annotations" / f"{name}.xml")
    for name in VOC_TRAIN + VOC_VAL:
        io.save_label_png(voc / "SegmentationClass" / f"{name}.png", _mask(name, border=True))  # palette, as VOC's
    (voc / "ImageSets/Segmentation/train.txt").write_text("".join(f"{n}\n" for n in VOC_TRAIN))
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{n}\n" for n in VOC_VAL))
    sbd = tmp_path / "benchmark_RELEASE"
    for d in ("dataset/cls", "dataset/img", "dataset/inst"):
        (sbd / d).mkdir(parents=True)
    for name in SBD_TRAIN + SBD_VAL:
        _write_sbd_mat(sbd / "dataset" / "cls" / f"{name}.mat", _mask(name, border=False))
    (sbd / "dataset/train.txt").write_text("".join(f"{n}\n" for n in SBD_TRAIN))
    (sbd / "dataset/val.txt").write_text("".join(f"{n}\n" for n in SBD_VAL))
    return voc, sbd


def _cli(argv, capsys):
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _prepare(downloads, capsys):
    voc, sbd = downloads
    rc, out, err = _cli(["data", "voc-aug", voc.parent.parent, "--sbd", sbd], capsys)  # the folder holding VOCdevkit
    assert rc == 0, err
    return out


def test_train_aug_is_sbd_and_voc_train_minus_voc_val():
    assert train_aug_names(SBD_TRAIN, SBD_VAL, VOC_TRAIN, VOC_VAL) == ["a", "b", "e", "f", "g"]


def test_sbd_masks_read_from_their_struct(downloads):
    _, sbd = downloads
    np.testing.assert_array_equal(read_sbd_mask(sbd / "dataset" / "cls" / "e.mat"), _mask("e", border=False))
    scipy_io.savemat(sbd / "other.mat", {"GT": {"Segmentation": np.zeros((2, 2), np.uint8)}})
    from affinitynet.errors import DataError

    with pytest.raises(DataError, match="other.mat: holds no GTcls.Segmentation"):
        read_sbd_mask(sbd / "other.mat")


def test_prepare_writes_the_masks_and_the_list_the_voc_presets_read(downloads, capsys):
    voc, _ = downloads
    out = _prepare(downloads, capsys)
    assert out.strip() == (f"wrote 7 masks to {voc / 'SegmentationClassAug'} (4 from VOC's SegmentationClass, 3 from "
                           f"SBD) and the 5 names of {voc / 'ImageSets/Segmentation/train_aug.txt'}")
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == ["a", "b", "e", "f", "g"]
    for name in CLASS:  # VOC's own mask where VOC has one (a, d: SBD's differs), SBD's elsewhere
        with Image.open(voc / "SegmentationClassAug" / f"{name}.png") as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), _mask(name, border=name in VOC_TRAIN + VOC_VAL))
    # what the VOC presets read: split train_aug, masks SegmentationClassAug, tags from the XML
    from affinitynet.config import load, resolve_config_path
    from affinitynet.data import build_dataset

    cfg = load(resolve_config_path("voc12_resnet38"), [f"data.root={voc}"])
    train, val = build_dataset(cfg.data, cfg.data.train_split), build_dataset(cfg.data, cfg.data.val_split)
    assert train.names == ["a", "b", "e", "f", "g"] and val.names == VOC_VAL
    assert train.has_masks and train.load_labels("e")[CLASS["e"] - 1] == 1
    # and a run's data checks find nothing wrong with it
    rc, out, _ = _cli(["check", "synthetic_cpu", "--set", "data.kind=voc", "--set", f"data.root={voc}",
                       "--set", "data.train_split=train_aug", "--set", "data.voc.mask_dir=SegmentationClassAug",
                       "--set", "data.voc.labels_from=xml", "--set", "cam.batch_size=4",
                       "--set", "affinitynet.batch_size=4", "--set", "segmentation.batch_size=4"], capsys)
    assert "checked 5 images in train (train_aug), 2 in val: 0 problems" in out, out


def test_voc_and_aug_ground_truth_agree_on_the_scored_images(downloads, capsys, tmp_path):
    """The presets score VOC train (CAMs, pseudo labels) and val (segmentation) against SegmentationClassAug:
    on those images it is VOC's own SegmentationClass, pixel for pixel, and so are the scores."""
    voc, _ = downloads
    _prepare(downloads, capsys)
    for split in ("train", "val"):
        own = VOCDataset(voc, split, mask_dir="SegmentationClass")
        aug = VOCDataset(voc, split, mask_dir="SegmentationClassAug")
        for name in own.names:
            np.testing.assert_array_equal(own.load_mask(name), aug.load_mask(name))
        pred = tmp_path / f"pred_{split}"
        pred.mkdir()
        for name in own.names:  # a prediction half right: the object's top half
            label = own.load_mask(name).copy()
            label[label == 255] = 0
            label[20:] = 0
            io.save_label_png(pred / f"{name}.png", label)
        scores = []
        for mask_dir in ("SegmentationClass", "SegmentationClassAug"):
            rc, _, err = _cli(["eval", "--pred", pred, "--data", voc, "--split", split, "--set",
                               f"data.voc.mask_dir={mask_dir}", "--out", tmp_path / f"{split}_{mask_dir}.json"], capsys)
            assert rc == 0, err
            scores.append(json.loads((tmp_path / f"{split}_{mask_dir}.json").read_text()))
        assert scores[0] == scores[1] and 0 < scores[0]["miou"] < 100


def test_a_configured_mask_folder_that_is_missing_is_an_error(downloads, capsys, tmp_path):
    voc, _ = downloads
    sets = ["--set", "data.kind=voc", "--set", f"data.root={voc}", "--set", "data.voc.mask_dir=SegmentationClassAug",
            "--set", "runtime.device=cpu", "--set", "runtime.progress=false"]
    rc, _, err = _cli(["run", "synthetic_cpu", "--out", tmp_path / "run", *sets], capsys)
    expected = (f"{voc / 'SegmentationClassAug'}: mask folder not found (data.voc.mask_dir) ('affinitynet data voc-aug "
                f"ROOT --sbd SBD' makes it from SBD); set data.voc.mask_dir='' to run without masks and scores")
    assert rc == 2 and err.strip().splitlines()[-1] == f"affinitynet: error: {expected}"
    assert "Traceback" not in err
    rc, out, _ = _cli(["check", "synthetic_cpu", *sets], capsys)
    assert rc == 1 and f"  {expected}" in out.splitlines()
    rc, out, _ = _cli(["check", "synthetic_cpu", *sets[:-4], "--set", "data.voc.mask_dir=",
                       "--set", "cam.batch_size=2", "--set", "affinitynet.batch_size=2",
                       "--set", "segmentation.batch_size=2"], capsys)
    assert "0 problems" in out, out  # no masks asked for: none looked for


def test_prepare_says_what_is_missing(downloads, capsys):
    voc, sbd = downloads
    (sbd / "dataset" / "cls" / "f.mat").unlink()
    rc, _, err = _cli(["data", "voc-aug", voc, "--sbd", sbd / "dataset"], capsys)
    assert rc == 2 and err.strip().splitlines()[-1] == (
        f"affinitynet: error: {sbd / 'dataset' / 'cls' / 'f.mat'}: SBD mask not found (the image is listed in SBD's "
        f"train.txt or val.txt)")
    (voc / "JPEGImages" / "g.jpg").unlink()
    rc, _, err = _cli(["data", "voc-aug", voc, "--sbd", sbd], capsys)
    assert rc == 2 and "g.jpg: image not found: 1 of the 5 train_aug images are not in VOC's JPEGImages" in err
    rc, _, err = _cli(["data", "voc-aug", voc, "--sbd", voc], capsys)
    assert rc == 2 and "not SBD's folder" in err
