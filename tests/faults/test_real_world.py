"""What users' own data and habits bring: two runs on one directory, phone photos, 16-bit and odd pixel
formats, big images, broken COCO annotation files, Ctrl-C and a scheduler's SIGTERM.

Every case goes through the real command line (a subprocess, or ``cli.main`` in this process where a fault
is injected); errors must be one ``affinitynet: error: WHERE: WHAT`` line, and finished work must survive.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import io
from affinitynet.config import resolve_config_path
from affinitynet.config import load
from affinitynet.data import VOCDataset
from affinitynet.models.base import Backbone
from affinitynet.ops.bound import bound_factor
from faultkit import (N_TRAIN, N_VAL, alive, copy_run, error_line, file_bytes, first_name, in_process, python_cli,
                      run_cmd, signal_when, start_cli, temp_files, wait_for)

VOC = ("data.kind=voc",)
ONE_EPOCH = ("cam.epochs=1",)


def _names(root, split="train") -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


# ----------------------------------------------------------------------------- two processes, one run directory

def test_a_second_run_on_a_busy_directory_stops_at_once_and_a_killed_run_leaves_no_lock(synth_root, tmp_path):
    run = tmp_path / "run"
    first = start_cli(run_cmd(run, synth_root, "cam.epochs=60", args=["--to", "train_cam"]), tmp_path / "first.log")
    try:
        lock = run / ".affinitynet.lock"
        wait_for(lambda: first.poll() is not None or (run / "manifest.json").is_file(), what="the first run started")
        assert f'"pid": {first.pid}' in lock.read_text()
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        config = (run / "config.yaml").read_text()

        t0 = time.time()
        second = python_cli(*run_cmd(run, synth_root, "cam.epochs=1", "cam.lr=0.5", args=["--to", "train_cam"]))
        seconds = time.time() - t0
        line = error_line(second.returncode, second.stderr)
        assert line.startswith(f"affinitynet: error: {run}: run directory in use by another affinitynet process "
                               f"(pid {first.pid} on {socket.gethostname()}, since "), line
        assert "affinitynet run synthetic_cpu --out" in line
        assert line.endswith("; wait for it to end or stop it, then re-run")
        assert first.poll() is None, "the first run ended before the second one was turned away"
        assert seconds < 30, f"the second run took {seconds:.0f} s to stop"
        assert (run / "config.yaml").read_text() == config  # nothing of the second run's settings was written

        first.kill()  # SIGKILL: no chance to clean up; the kernel drops the lock
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not alive(first.pid)
    again = python_cli(*run_cmd(run, synth_root, "cam.epochs=1", args=["--to", "train_cam"]))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "classifier" / "final.pt").is_file()
    assert json.loads(lock.read_text())["pid"] != first.pid  # the lock file now names the last holder


# ----------------------------------------------------------------------------- phone photos (EXIF orientation)

def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_a_sideways_stored_phone_photo_is_read_upright_everywhere(data_copy, tmp_path, capsys):
    """A JPEG stored 40 wide x 64 high with orientation 6 shows 64 x 40, and its mask, drawn in a tool that
    respects the tag, is 64 x 40: the run must read the photo as shown, keep the CAM in that orientation."""
    name = first_name(data_copy)
    jpeg = data_copy / "JPEGImages" / f"{name}.jpg"
    mask_png = data_copy / "SegmentationClass" / f"{name}.png"
    upright = io.load_image(jpeg)[:40]  # 40 high, 64 wide as displayed
    mask = io.load_label_png(mask_png)[:40]
    Image.fromarray(np.rot90(upright)).save(jpeg, quality=95, exif=_exif(6))  # stored 64 high, 40 wide
    io.save_label_png(mask_png, mask)
    assert Image.open(jpeg).size == (40, 64)

    run = tmp_path / "run"
    rc, _, err = in_process(run_cmd(run, data_copy, *VOC, *ONE_EPOCH, args=["--to", "make_cam"]), capsys)
    assert rc == 0, err
    cams = np.load(run / "cam" / f"{name}.npz")["cams"]
    assert cams.shape[1:] == (40, 64)


def test_predict_returns_masks_in_the_displayed_orientation(reference_run, synth_root, tmp_path, capsys):
    upright = io.load_image(synth_root / "JPEGImages" / "val_00000.jpg")[:40]
    Image.fromarray(upright).save(tmp_path / "upright.png")
    Image.fromarray(np.rot90(upright, -1)).save(tmp_path / "stored.png", exif=_exif(8))  # stored 64 x 40
    rc, _, err = in_process(["predict", "--checkpoint", reference_run / "deeplab" / "final.pt",
                             tmp_path / "upright.png", tmp_path / "stored.png", "--out", tmp_path / "pred",
                             "--device", "cpu"], capsys)
    assert rc == 0, err
    a, b = (io.load_label_png(tmp_path / "pred" / f"{n}.png") for n in ("upright", "stored"))
    assert a.shape == b.shape == (40, 64)
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- pixel formats

def _grey(rgb):
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _rgb(grey):
    return np.repeat(grey[:, :, None], 3, axis=2)


def _ramp(h, w):
    return np.linspace(0, 255, h * w).reshape(h, w)


def _palette(rgb):
    img = Image.fromarray(rgb).quantize(32)
    return img, ".png", {}, np.asarray(img.convert("RGB"))


def _grey8(rgb):
    return Image.fromarray(_grey(rgb)), ".png", {}, _rgb(_grey(rgb))


def _grey_alpha(rgb):
    alpha = Image.fromarray(_ramp(*rgb.shape[:2]).astype(np.uint8))
    return Image.merge("LA", (Image.fromarray(_grey(rgb)), alpha)), ".png", {}, _rgb(_grey(rgb))


def _rgba(rgb):
    alpha = _ramp(*rgb.shape[:2]).astype(np.uint8)[:, :, None]
    return Image.fromarray(np.concatenate([rgb, alpha], axis=2)), ".png", {}, rgb


def _cmyk(rgb):
    return Image.fromarray(rgb).convert("CMYK"), ".tif", {}, rgb


def _grey16(rgb):
    """A 16-bit PNG using the full 0..65535 range (what a scanner or a camera's raw export writes)."""
    noise = np.random.default_rng(0).integers(-128, 129, rgb.shape[:2])
    grey16 = np.clip(_grey(rgb).astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    return Image.fromarray(grey16), ".png", {}, _rgb(_grey(rgb))


def _float(rgb):
    return Image.fromarray((_grey(rgb) / 255.0).astype(np.float32)), ".tif", {}, _rgb(_grey(rgb))


def _exif_rotated(rgb):
    return Image.fromarray(np.rot90(rgb)), ".png", {"exif": _exif(6)}, rgb


FORMATS = [_palette, _grey8, _grey_alpha, _rgba, _cmyk, _grey16, _float, _exif_rotated]
FOLDER = ("data.kind=folder", "data.folder.image_dir=images", "data.folder.mask_dir=masks", "data.folder.classes_file=classes.txt")


@pytest.fixture(scope="module")
def folder_set(synth_root, tmp_path_factory):
    """The synthetic set as a user's folder of PNGs with tag CSVs, and a run up to make_cam on it.

    Training image k < len(FORMATS) is an 8-bit RGB PNG of what ``odd/`` holds in format k.
    """
    root = tmp_path_factory.mktemp("formats") / "data"
    (root / "images").mkdir(parents=True)
    (root.parent / "odd").mkdir()
    shutil.copytree(synth_root / "SegmentationClass", root / "masks")
    shutil.copy(synth_root / "classes.txt", root / "classes.txt")
    for split in ("train", "val"):
        ds = VOCDataset(synth_root, split)
        rows = []
        for k, name in enumerate(ds.names):
            rgb = ds.load_image(name)
            if split == "train" and k < len(FORMATS):
                img, suffix, save_args, rgb = FORMATS[k](rgb)
                img.save(root.parent / "odd" / f"{name}{suffix}", **save_args)
            Image.fromarray(rgb).save(root / "images" / f"{name}.png")
            rows.append(f"{name},{';'.join(c for c, on in zip(ds.classes, ds.load_labels(name)) if on)}\n")
        (root / f"{split}.csv").write_text("image,labels\n" + "".join(rows))
    run = root.parent / "run"
    res = python_cli(*run_cmd(run, root, *FOLDER, *ONE_EPOCH, args=["--to", "make_cam"]))
    assert res.returncode == 0, res.stderr[-3000:]
    return root, run


@pytest.mark.parametrize("k", range(len(FORMATS)), ids=[f.__name__[1:] for f in FORMATS])
def test_odd_pixel_formats_read_as_their_8_bit_rgb_content(k, folder_set, tmp_path, capsys):
    root, reference = folder_set
    name = _names_of(root)[k]
    png = root / "images" / f"{name}.png"
    kept = png.read_bytes()
    (source,) = (root.parent / "odd").glob(f"{name}.*")
    odd = png.with_suffix(source.suffix)
    png.unlink()
    try:
        shutil.copy(source, odd)
        assert np.array_equal(io.load_image(odd), np.asarray(Image.open(BytesIO(kept)).convert("RGB")))
        run = copy_run(reference, tmp_path / "run")
        rc, _, err = in_process(run_cmd(run, root, *FOLDER, *ONE_EPOCH, args=["--to", "make_cam", "--force",
                                                                               "make_cam"]), capsys)
        assert rc == 0, err
        assert "train_cam] finished earlier" in err  # the classifier is the reference's
        assert (run / "cam" / f"{name}.npz").read_bytes() == (reference / "cam" / f"{name}.npz").read_bytes()
    finally:
        odd.unlink(missing_ok=True)
        png.write_bytes(kept)


def _names_of(root) -> list[str]:
    return [ln.split(",")[0] for ln in (root / "train.csv").read_text().splitlines()[1:]]


def test_a_16_bit_ramp_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 256).reshape(64, 256).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode == "I;16"
    grey = io.load_image(tmp_path / "ramp.png")[:, :, 0]
    assert np.array_equal(grey, np.rint(ramp / 257.0).astype(np.uint8))
    assert (grey == 255).mean() < 0.01  # clipping made 99.6% of it 255


def test_a_float_image_outside_0_1_is_refused(folder_set, tmp_path, capsys):
    root, reference = folder_set
    name = _names_of(root)[len(FORMATS)]
    png = root / "images" / f"{name}.png"
    kept = png.read_bytes()
    tif = png.with_suffix(".tif")
    png.unlink()
    try:
        Image.fromarray((_ramp(64, 64) * 4).astype(np.float32)).save(tif)
        run = copy_run(reference, tmp_path / "run")
        rc, _, err = in_process(run_cmd(run, root, *FOLDER, *ONE_EPOCH, args=["--to", "make_cam", "--force",
                                                                               "make_cam"]), capsys)
        assert error_line(rc, err) == (f"affinitynet: error: {tif}: floating-point image with values 0..1020 "
                                       f"outside [0, 1]; save it as an 8- or 16-bit image")
        assert not temp_files(run)
    finally:
        tif.unlink(missing_ok=True)
        png.write_bytes(kept)


# ----------------------------------------------------------------------------- big images

BOUND = 320


def test_big_images_are_bounded_and_outputs_keep_their_size(data_copy, tmp_path, capsys):
    """A 1280 x 960 photo in the training and the evaluation split: no network input of any stage may exceed
    the bound, while CAMs, pseudo labels and predictions stay at 1280 x 960."""
    big = {}
    for split in ("train", "val"):
        name = first_name(data_copy, split)
        jpeg, mask_png = data_copy / "JPEGImages" / f"{name}.jpg", data_copy / "SegmentationClass" / f"{name}.png"
        image = Image.fromarray(io.load_image(jpeg)[:48]).resize((1280, 960), Image.BILINEAR)
        image.save(jpeg, quality=90)
        io.save_label_png(mask_png, np.asarray(Image.fromarray(io.load_label_png(mask_png)[:48])
                                               .resize((1280, 960), Image.NEAREST)))
        big[split] = name
    sizes = []

    def record(module, args):
        if isinstance(module, Backbone):
            sizes.append(tuple(args[0].shape[-2:]))

    bounds = [f"{k}={BOUND}" for k in ("cam.max_long_side", "random_walk.max_long_side",
                                       "segmentation.max_long_side", "segmentation.test_max_long_side")]
    run = tmp_path / "run"
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        rc, _, err = in_process(run_cmd(run, data_copy, *VOC, *bounds), capsys)
    finally:
        hook.remove()
    assert rc == 0, err
    assert BOUND <= max(max(s) for s in sizes) <= BOUND + 8, sorted(set(sizes))[-5:]  # + padding to the stride
    assert np.load(run / "cam" / f"{big['train']}.npz")["cams"].shape[1:] == (960, 1280)
    assert io.load_label_png(run / "random_walk" / f"{big['train']}.png").shape == (960, 1280)
    assert io.load_label_png(run / "segmentation" / f"{big['val']}.png").shape == (960, 1280)
    assert json.loads((run / "metrics.json").read_text())["segmentation"]["miou"] >= 0


def test_the_default_bound_leaves_voc_sized_images_alone():
    cfg = load(resolve_config_path("voc12_resnet38"))
    for h, w in ((500, 500), (500, 375), (375, 500)):
        assert bound_factor(h, w, cfg.cam.max_long_side, max(cfg.cam.scales)) == 1.0
        assert bound_factor(h, w, cfg.random_walk.max_long_side, cfg.random_walk.scale) == 1.0
        assert bound_factor(h, w, cfg.segmentation.max_long_side, max(cfg.segmentation.scale_range)) == 1.0
        assert bound_factor(h, w, cfg.segmentation.test_max_long_side, max(cfg.segmentation.test_scales)) == 1.0
    assert bound_factor(3000, 4000, cfg.cam.max_long_side, max(cfg.cam.scales)) == 0.125  # a phone photo


# stage -> (output folder, file pattern, images, the function that runs out of memory, the error it raises, key)
CUDA_OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.16 GiB (GPU 0; 23.65 GiB total)")
CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                       "you tried to allocate 9835315200 bytes.")
OUT_OF_MEMORY = {
    "make_cam": ("cam", "train_*.npz", N_TRAIN, "affinitynet.stages.cam_sources.multiscale_cam", CUDA_OOM,
                 "cam.max_long_side"),
    "random_walk": ("random_walk", "train_*.png", N_TRAIN, "affinitynet.stages.random_walk.walk", CPU_OOM,
                    "random_walk.max_long_side"),
    "segment": ("segmentation", "val_*.png", N_VAL, "affinitynet.stages.segment.predict_label", CUDA_OOM,
                "segmentation.test_max_long_side"),
}


@pytest.mark.parametrize("stage", list(OUT_OF_MEMORY))
def test_out_of_memory_on_one_image_names_it_and_the_bound_and_resumes(stage, reference_run, synth_root, tmp_path,
                                                                       capsys, monkeypatch):
    folder, pattern, total, target, error, key = OUT_OF_MEMORY[stage]
    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / folder)
    module, _, attr = target.rpartition(".")
    real, calls = getattr(__import__(module, fromlist=[attr]), attr), []

    def runs_out(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the fourth image is too large for the device
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, runs_out)
    rc, _, err = in_process(run_cmd(run, synth_root, args=["--to", stage]), capsys)
    split = "val" if stage == "segment" else "train"
    image = synth_root / "JPEGImages" / f"{_names(synth_root, split)[3]}.jpg"
    device = "cpu"
    assert error_line(rc, err) == (f"affinitynet: error: {image}: out of memory in {stage}"
                                   f"{' ' + split if stage == 'segment' else ''} on {device}; lower {key} (now 1000) "
                                   f"and re-run the same command to resume (finished images are kept)")
    assert len(list((run / folder).glob(pattern))) == 3
    assert not temp_files(run)

    monkeypatch.setattr(target, real)  # doing what the message says: the bound lowered, the stage resumes
    rc, _, err = in_process(run_cmd(run, synth_root, f"{key}=500", args=["--to", stage]), capsys)
    assert rc == 0, err
    assert f"3 of {total} images already done, resuming" in err
    assert file_bytes(run / folder) == file_bytes(reference_run / folder)


# ----------------------------------------------------------------------------- COCO annotation files

@pytest.fixture(scope="module")
def coco_root(synth_root, tmp_path_factory):
    """The synthetic set in COCO layout: ``{split}/*.jpg`` and ``annotations/instances_{split}.json`` with one
    compressed-RLE annotation per class and image."""
    from pycocotools import mask as mask_utils

    root = tmp_path_factory.mktemp("coco") / "coco"
    classes = (synth_root / "classes.txt").read_text().split()
    ann_id = 0
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        images, anns = [], []
        for k, name in enumerate(_names(synth_root, split), start=1):
            shutil.copy(synth_root / "JPEGImages" / f"{name}.jpg", root / split / f"{name}.jpg")
            mask = io.load_label_png(synth_root / "SegmentationClass" / f"{name}.png")
            images.append({"id": k, "file_name": f"{name}.jpg", "height": mask.shape[0], "width": mask.shape[1]})
            for c in sorted(set(np.unique(mask).tolist()) - {0, 255}):
                rle = mask_utils.encode(np.asfortranarray((mask == c).astype(np.uint8)))
                ann_id += 1
                anns.append({"id": ann_id, "image_id": k, "category_id": c, "iscrowd": 0,
                             "area": float((mask == c).sum()),
                             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}})
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


COCO = ("data.kind=coco",)


def _coco_truncated(path, data):
    text = json.dumps(data)
    path.write_text(text[:len(text) // 2])
    return "not valid JSON (Unterminated string"


def _coco_no_annotations(path, data):
    del data["annotations"]
    path.write_text(json.dumps(data))
    return "not a COCO instances file (missing field 'annotations')"


def _coco_image_without_file_name(path, data):
    del data["images"][2]["file_name"]
    path.write_text(json.dumps(data))
    return "image 3 has no 'file_name' field"


def _coco_annotation_without_category(path, data):
    del data["annotations"][4]["category_id"]
    path.write_text(json.dumps(data))
    return f"annotation {data['annotations'][4]['id']} has no 'category_id' field"


def _coco_unknown_category(path, data):
    data["annotations"][4]["category_id"] = 99
    path.write_text(json.dumps(data))
    return f"annotation {data['annotations'][4]['id']} has category_id 99, which is not in the category list (ids 1..5)"


def _coco_unknown_image(path, data):
    data["annotations"][4]["image_id"] = 999
    path.write_text(json.dumps(data))
    return f"annotation {data['annotations'][4]['id']} refers to unknown image 999"


def _coco_bad_size(path, data):
    data["images"][2]["height"] = "64px"
    path.write_text(json.dumps(data))
    return "image 3: height and width must be positive integers, got '64px' x 64"


@pytest.mark.parametrize("damage", [_coco_truncated, _coco_no_annotations, _coco_image_without_file_name,
                                    _coco_annotation_without_category, _coco_unknown_category, _coco_unknown_image,
                                    _coco_bad_size], ids=lambda f: f.__name__[6:])
def test_malformed_coco_annotation_file(damage, coco_root, tmp_path, capsys):
    root = shutil.copytree(coco_root, tmp_path / "coco")
    path = root / "annotations" / "instances_train.json"
    problem = damage(path, json.loads(path.read_text()))
    run = tmp_path / "run"
    rc, _, err = in_process(run_cmd(run, root, *COCO, *ONE_EPOCH, args=["--to", "train_cam"]), capsys)
    line = error_line(rc, err)
    assert line.startswith(f"affinitynet: error: {path}: {problem}"), line
    assert not (run / "classifier").exists()

    rc, out, _ = in_process(["check", "synthetic_cpu", "--set", "data.kind=coco", "--set", f"data.root={root}"],
                            capsys)  # check names the same problem
    assert rc == 1 and f"  {path}: {problem}" in out, out


def test_a_bad_segmentation_is_named_by_check_and_the_clean_set_passes(coco_root, tmp_path, capsys):
    rc, out, _ = in_process(["check", "synthetic_cpu", "--set", "data.kind=coco", "--set", f"data.root={coco_root}"],
                            capsys)
    assert rc == 0, out
    root = shutil.copytree(coco_root, tmp_path / "coco")
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = "the whole image"
    path.write_text(json.dumps(data))
    rc, out, _ = in_process(["check", "synthetic_cpu", "--set", "data.kind=coco", "--set", f"data.root={root}"],
                            capsys)
    assert rc == 1
    name = data["images"][0]["file_name"][:-4]
    assert f"  {path}: annotation {data['annotations'][0]['id']} of '{name}': bad segmentation (" in out, out


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM

# case -> (signal, to the process group, stage, extra settings, output folder, pattern, images)
SIGNALS = {
    "ctrl_c_in_make_cam": (signal.SIGINT, True, "make_cam", (), "cam", "train_*.npz", N_TRAIN),
    "sigterm_in_random_walk_pool": (signal.SIGTERM, False, "random_walk", ("random_walk.workers=2",),
                                    "random_walk", "train_*.png", N_TRAIN),
    "sigterm_to_the_group_in_random_walk_pool": (signal.SIGTERM, True, "random_walk", ("random_walk.workers=2",),
                                                 "random_walk", "train_*.png", N_TRAIN),
    "sigterm_in_train_cam": (signal.SIGTERM, False, "train_cam", ("cam.epochs=4",), "classifier", "last.pt", None),
}

# make_cam writes its files behind the network and ends 32 tiny images in under a second: a slow disk
# (0.25 s a file, ``faultkit.SLOW_DISK``) keeps it running for about 8 s, so that the signal lands mid-stage
SLOW = {"ctrl_c_in_make_cam": {"FAULTS_SLOW_WRITES": "0.25"}}


@pytest.mark.parametrize("case", list(SIGNALS))
def test_a_signal_stops_the_run_within_seconds_and_the_rerun_resumes(case, reference_run, synth_root, tmp_path):
    sig, group, stage, extra, folder, pattern, total = SIGNALS[case]
    run = copy_run(reference_run, tmp_path / "run")
    shutil.rmtree(run / folder)
    argv = run_cmd(run, synth_root, *extra, args=["--to", stage])
    rc, seconds, output, children = signal_when(argv, run, lambda r: any((r / folder).glob(pattern)), sig,
                                                group=group, env=SLOW.get(case))
    assert rc == 128 + sig, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    stopped = "interrupted" if sig == signal.SIGINT else "stopped by SIGTERM"
    assert output.strip().splitlines()[-1] == (f"affinitynet: {stopped}; finished work is kept, re-run the same "
                                               f"command to resume")
    assert seconds < 10, f"stopping took {seconds:.1f} s"
    wait_for(lambda: not any(alive(p) for p in children), timeout=10, what="the worker processes gone")
    assert not temp_files(run)

    res = python_cli(*argv)
    assert res.returncode == 0, res.stderr[-3000:]
    if total is None:
        assert re.search(r"epoch [1-3] of 4 done", res.stderr), res.stderr[-3000:]
        assert (run / folder / "final.pt").is_file()
    else:
        assert "images already done, resuming" in res.stderr
        assert file_bytes(run / folder) == file_bytes(reference_run / folder)
