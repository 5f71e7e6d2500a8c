"""``affinitynet sweep`` (same mIoU as re-running the stage at that value) and ``affinitynet export`` (read back)."""
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from affinitynet import cli, config, runner
from affinitynet.commands.export import VOC_TEST_DIR, confidence_of, export_labels
from affinitynet.commands.sweep import parse_param, sweep_command
from affinitynet.errors import ConfigError
from affinitynet.io import load_label_png, voc_palette
from affinitynet.layout import RunLayout
from affinitynet.stages.random_walk import load_walk_scores

TINY = ["data.synthetic.train=16", "data.synthetic.val=4", "data.synthetic.size=64", "data.synthetic.classes=3",
        "cam.epochs=4", "affinitynet.epochs=2", "segmentation.epochs=1", "cam.batch_size=4",
        "affinitynet.batch_size=4", "segmentation.batch_size=4", "cam.crop_size=64", "affinitynet.crop_size=64",
        "segmentation.crop_size=64", "cam.resize_long=[56,72]", "affinitynet.resize_long=[56,72]", "cam.scales=[1.0]",
        "cam.overlays=0", "segmentation.test_scales=[1.0]", "affinity_labels.workers=1", "eval.report_images=2",
        "runtime.device=cpu", "runtime.threads=1", "runtime.progress=false", "random_walk.scale=1.0",
        "random_walk.cache_affinity=true", "eval.crf_rows=true"]


def _cfg(root, *extra):
    return config.load(config.resolve_config_path("synthetic_cpu"), [f"data.root={root}", *TINY, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run with the walk's affinity cache and the CRF rows (built once, copied before changes)."""
    base = tmp_path_factory.mktemp("sweeps")
    out = base / "run"
    runner.run_pipeline(_cfg(base / "data"), out, verbose=False)
    return out


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", symlinks=True)


def _rerun_stage(run_dir, stage, *extra) -> dict:
    """The stage re-run from scratch with the run's saved config plus ``extra``; its own metrics.json."""
    cfg = config.load(RunLayout(run_dir).config, list(extra))
    runner.run_pipeline(cfg, run_dir, start=stage, stop=stage, force=[stage], verbose=False)
    return json.loads(RunLayout(run_dir).stage_metrics(stage).read_text())


# ----------------------------------------------------------------------------- sweeps

@pytest.mark.parametrize("param, values, other", [("alpha", "4,32", 32.0), ("beta", "4,8", 4.0), ("logt", "3,6", 3)])
def test_walk_sweep_equals_a_rerun_at_that_value(run, tmp_path, param, values, other, capsys):
    r = _copy(run, tmp_path)
    result = sweep_command(r, "random_walk", f"{param}={values}", device="cpu")
    assert result["inputs"] == "cached"
    assert "best" in capsys.readouterr().out
    swept = dict(zip(result["values"], result["miou"]))
    rerun = _rerun_stage(r, "random_walk", f"random_walk.{param}={other}")
    assert swept[other] == pytest.approx(rerun["miou"], abs=1e-3)  # the JSON keeps 4 decimals
    assert len(set(result["miou"])) == 2  # the values do change the labels of this run


def test_walk_bg_threshold_relabels_saved_scores_like_a_rerun(run, tmp_path):
    r = _copy(run, tmp_path)
    _rerun_stage(r, "random_walk", "random_walk.background=threshold")
    shutil.rmtree(RunLayout(r).folder("random_walk") / "affinity")  # not needed: the walk itself is not redone
    result = sweep_command(r, "random_walk", "bg_threshold=0.1,0.25", device="cpu")
    assert result["inputs"] == "saved scores"
    rerun = _rerun_stage(r, "random_walk", "random_walk.background=threshold", "random_walk.bg_threshold=0.1")
    assert result["miou"][0] == pytest.approx(rerun["miou"], abs=1e-3)
    assert result["miou"][0] != result["miou"][1]
    with pytest.raises(ConfigError, match="does not use alpha"):
        sweep_command(r, "random_walk", "alpha=4,8", device="cpu")


def test_walk_sweep_without_the_cache_computes_affinities_once(run, tmp_path):
    r = _copy(run, tmp_path)
    cached = sweep_command(r, "random_walk", "alpha=8,16", device="cpu")
    shutil.rmtree(RunLayout(r).folder("random_walk") / "affinity")
    fresh = sweep_command(r, "random_walk", "alpha=8,16", device="cpu")
    assert fresh["inputs"].startswith("computed for 16 of 16")
    assert fresh["miou"] == cached["miou"]


def test_cam_sweep_equals_a_rerun_and_writes_its_files(run, tmp_path):
    r = _copy(run, tmp_path)
    result = sweep_command(r, "cam", "bg_threshold=0.1,0.3", device="cpu")
    layout = RunLayout(r)
    assert json.loads(layout.sweep("cam", "bg_threshold").read_text())["miou"] == result["miou"]
    with Image.open(layout.sweep("cam", "bg_threshold", ".png")) as img:
        assert img.mode == "RGB" and img.size == (640, 400)
    rerun = _rerun_stage(r, "make_cam", "eval.cam_bg_threshold=0.3")
    assert result["miou"][1] == pytest.approx(rerun["miou"], abs=1e-3)
    page = layout.report.read_text()
    assert 'data-sweep="cam_bg_threshold"' in page  # the sweep rewrote the report with its plot


@pytest.mark.parametrize("stage, text, match", [
    ("random_walk", "gamma=1,2", "random_walk sweeps alpha, beta, logt, bg_threshold"),
    ("random_walk", "alpha", "expected NAME=V1,V2"),
    ("random_walk", "logt=2.5", "values must be integers"),
    ("cam", "bg_threshold=0.2,1.5", r"must be in \(0, 1\)"),
    ("segment", "alpha=1", "sweeps run on cam, random_walk"),
])
def test_sweep_parameter_errors(stage, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_param(stage, text)


# ----------------------------------------------------------------------------- CRF rows, confusion

def test_crf_rows_and_confusion_in_metrics(run):
    m = json.loads(RunLayout(run).metrics.read_text())
    keys = list(m)
    for key in ("cam_crf", "random_walk_crf", "segmentation_crf"):
        assert m[key]["crf"] is True and 0.0 <= m[key]["miou"] <= 100.0
        base = key.removesuffix("_crf")
        assert keys.index(key) == keys.index(base) + 1
    conf = np.array(m["random_walk"]["confusion"])
    assert conf.shape == (4, 5) and conf.sum() == m["random_walk"]["pixels"]
    tp = conf[0, 0]
    assert m["random_walk"]["recall"]["background"] == pytest.approx(100.0 * tp / conf[0].sum())
    assert m["random_walk"]["precision"]["background"] == pytest.approx(100.0 * tp / conf[:, 0].sum())


# ----------------------------------------------------------------------------- exports

def _pseudo(run):
    layout = RunLayout(run)
    return {p.stem: load_label_png(p) for p in sorted(layout.folder("random_walk").glob("*.png"))}


def test_export_index_and_palette(run, tmp_path):
    want = _pseudo(run)
    export_labels(run, "index", tmp_path / "index")
    export_labels(run, "palette", tmp_path / "palette")
    for name, label in want.items():
        with Image.open(tmp_path / "index" / f"{name}.png") as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), label)
        with Image.open(tmp_path / "palette" / f"{name}.png") as img:
            assert img.mode == "P"
            np.testing.assert_array_equal(np.asarray(img), label)
            pal = np.array(img.getpalette()[:768], np.uint8).reshape(-1, 3)
            np.testing.assert_array_equal(pal, voc_palette())


def test_export_confidence_threshold(run, tmp_path):
    written = export_labels(run, "index", tmp_path / "out", confidence=0.6)
    layout = RunLayout(run)
    low_total = 0
    for name, label in _pseudo(run).items():
        got = load_label_png(tmp_path / "out" / f"{name}.png")
        low = confidence_of(load_walk_scores(layout.walk_scores(name))[1]) < 0.6
        np.testing.assert_array_equal(got, np.where(low, 255, label))
        low_total += int(low.sum())
    assert low_total > 0 and written["unsure_percent"] > 0


def test_export_voc_aug_reads_back_like_the_tools(run, tmp_path):
    out = tmp_path / "voc"
    written = export_labels(run, "voc-aug", out)
    want = _pseudo(run)
    mmseg, deeplab = written["lists"]
    assert mmseg.endswith("ImageSets/Segmentation/train.txt")
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == list(want)
    for line in (out / "ImageSets" / "SegmentationAug" / "train.txt").read_text().splitlines():
        image, label = line.split(" ")  # deeplab-pytorch's VOCAug: two root-relative paths, leading "/" dropped
        name = image.split("/")[-1].split(".")[0]
        assert image == f"/JPEGImages/{name}.jpg"
        np.testing.assert_array_equal(np.asarray(Image.open(out / label[1:]), dtype=np.int32), want[name])


def test_export_voc_test_archive(run, tmp_path):
    written = export_labels(run, "voc-test", tmp_path / "t", stage="segment")
    layout = RunLayout(run)
    preds = sorted(p for p in layout.folder("segment").glob("*.png"))
    assert preds
    with tarfile.open(written["archive"]) as tar:
        members = {m.name for m in tar.getmembers() if m.isfile()}
        for p in preds:
            member = str(VOC_TEST_DIR / p.name)
            assert member in members
            with Image.open(tar.extractfile(member)) as img:
                assert img.mode == "P"
                np.testing.assert_array_equal(np.asarray(img), load_label_png(p))


def test_export_coco_masks_and_classes(tmp_path):
    from test_data import make_coco

    from affinitynet.data import build_dataset
    from affinitynet.io import save_label_png, write_text

    make_coco(tmp_path / "coco", split="train2014")
    cfg = config.Config()
    cfg.data.kind, cfg.data.root, cfg.data.train_split = "coco", str(tmp_path / "coco"), "train2014"
    run = tmp_path / "run"
    write_text(RunLayout(run).config, config.dump(cfg))
    ds = build_dataset(cfg.data, "train2014")
    for name in ds.names:
        save_label_png(RunLayout(run).pseudo_label(name), ds.load_mask(name))
    written = export_labels(run, "coco", tmp_path / "out")
    for name in ds.names:
        with Image.open(tmp_path / "out" / f"{name}.png") as img:
            assert img.mode == "L"
            np.testing.assert_array_equal(np.asarray(img), ds.load_mask(name))
    classes = json.loads(open(written["classes"]).read())
    assert [(c["index"], c["name"], c["category_id"]) for c in classes] == [
        (0, "background", None), (1, "person", 1), (2, "airplane", 5), (3, "toothbrush", 90)]


def test_export_errors(run, tmp_path):
    with pytest.raises(ConfigError, match="exports a COCO run"):
        export_labels(run, "coco", tmp_path / "x")
    with pytest.raises(ConfigError, match="use it with --stage random_walk"):
        export_labels(run, "index", tmp_path / "x", stage="segment", confidence=0.5)


def test_cli_sweep_and_export(run, tmp_path, capsys):
    r = _copy(run, tmp_path)
    assert cli.main(["sweep", str(r), "--stage", "random_walk", "--param", "alpha=8,16", "--device", "cpu"]) == 0
    assert cli.main(["export", str(r), "--format", "palette", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "wrote 16 palette labels" in out
    assert cli.main(["sweep", str(tmp_path / "nothing"), "--stage", "cam", "--param", "bg_threshold=0.1"]) == 2


def test_report_shows_crf_rows_confusion_and_precision(run):
    import re

    page = RunLayout(run).report.read_text()
    m = json.loads(RunLayout(run).metrics.read_text())
    for title, key in (("CAM labels + CRF", "cam_crf"), ("random walk + CRF", "random_walk_crf"),
                       ("segmentation + CRF", "segmentation_crf")):
        assert f"<td>{title}</td>" in page  # a row of the per-stage table
        assert f'data-row="{key}"' in page  # a per-class card
    card = re.search(r'<div class="card" data-row="random_walk">(.*?)</div></div>', page, re.S).group(1)
    assert card.count('<table class="confusion">') == 1
    conf = np.array(m["random_walk"]["confusion"], float)
    share = 100 * conf[0, 0] / conf[0].sum()
    assert f'title="background as background: {share:.1f}%"' in card
    assert f"<td class=\"num\">{m['random_walk']['precision']['background']:.1f}</td>" in card


def test_changed_cam_threshold_rescores_the_cams_without_recomputing_them(run, tmp_path):
    r = _copy(run, tmp_path)
    layout = RunLayout(r)
    cam_file = layout.cam(sorted(p.stem for p in layout.folder("make_cam").glob("*.npz"))[0])
    before = cam_file.stat().st_mtime_ns
    old = json.loads(layout.stage_metrics("make_cam").read_text())
    cfg = config.load(layout.config, ["eval.cam_bg_threshold=0.35"])
    results = runner.run_pipeline(cfg, r, verbose=False)
    assert {x.name for x in results if x.status == "done"} == {"evaluate"}  # nothing upstream redone
    cam = json.loads(layout.metrics.read_text())["cam"]
    assert cam["threshold"] == 0.35 and cam["miou"] == pytest.approx(old["sweep"]["0.35"], abs=0.01)
    assert json.loads(layout.stage_metrics("make_cam").read_text())["threshold"] == 0.35
    assert cam_file.stat().st_mtime_ns == before
