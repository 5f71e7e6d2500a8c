"""report.html: self-contained, shows the run's numbers and images, leaves out what a run lacks."""
import base64
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import config
from affinitynet.data.synthetic import generate
from affinitynet.io import load_label_png, save_cam, save_label_png, write_json
from affinitynet.report import render_report, write_report
from affinitynet.report.charts import Series, nice_ticks, png_data_uri, svg_bar_chart, svg_line_chart
from affinitynet.report.sections import read_history
from affinitynet.visualize import confident_colours, label_colours, thumbnail

METRICS = {
    "classifier": {"map": 91.234, "val_loss": 0.1234},
    "cam": {"miou": 47.861, "iou": {"background": 71.25, "class_a": 40.5, "class_b": None, "class_c": 31.83},
            "threshold": 0.2, "best_threshold": 0.15, "miou_best": 45.07,
            "sweep": {"0.05": 30.0, "0.1": 41.2, "0.15": 47.86, "0.2": 45.07, "0.25": 40.0}},
    "affinity_labels": {"fg_precision": 88.44, "bg_precision": 96.17, "ignored": 37.72},
    "affinitynet": {"ap": 83.19, "positive_pairs": 100, "negative_pairs": 50},
    "random_walk": {"miou": 58.123, "iou": {"background": 80.0, "class_a": 55.55, "class_b": 44.44,
                                            "class_c": 52.5}},
    "segmentation": {"miou": 61.7, "iou": {"background": 82.0, "class_a": 60.0, "class_b": 50.0,
                                           "class_c": 54.8}, "split": "val"},
}
STAGE_SECONDS = {"train_cam": 12.0, "make_cam": 3.5, "make_affinity_labels": 7.25, "train_affinitynet": 20.0,
                 "random_walk": 4.0, "train_segmentation": 30.0, "segment": 2.0}
N_TRAIN = 4


def _history(path, keys, steps=6, epochs=2):
    rows = []
    per = steps // epochs
    for s in range(1, steps + 1):
        rows.append({"kind": "step", "epoch": (s - 1) // per + 1, "step": s, "lr": 0.01,
                     **{k: 1.0 / s + i for i, k in enumerate(keys)}})
        if s % per == 0:
            rows.append({"kind": "epoch", "epoch": s // per, "step": s, "lr": 0.01, "loss": 0.777 / (s // per),
                         "val": {"miou": 12.5 * (s // per)}, "time_s": 1.5 * s})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "synthetic", train=N_TRAIN, val=2, size=64, classes=3)


def _cfg(root, images=3):
    cfg = config.Config()
    cfg.data.kind = "synthetic"
    cfg.data.root = str(root)
    syn = cfg.data.synthetic
    syn.train, syn.val, syn.size, syn.classes = N_TRAIN, 2, 64, 3
    cfg.segmentation.backbone = "tiny"
    cfg.eval.report_images = images
    return cfg


def make_run(run, cfg, *, skip_first_pseudo=False):
    """A fake finished run: metrics, manifest, histories, CAMs and label PNGs for the training images."""
    from affinitynet.data import build_dataset

    write_json(run / "metrics.json", METRICS)
    write_json(run / "manifest.json", {"stages": {
        n: {"status": "done", "seconds": s, "finished": 1.7e9 + i, "summary": {}}
        for i, (n, s) in enumerate(STAGE_SECONDS.items())}})
    _history(run / "classifier" / "history.jsonl", ["loss"])
    _history(run / "affinitynet" / "history.jsonl", ["loss", "bg_loss", "fg_loss", "neg_loss", "bg_count"])
    _history(run / "deeplab" / "history.jsonl", ["loss"])
    ds = build_dataset(cfg.data, "train")
    rng = np.random.default_rng(0)
    for i, name in enumerate(ds.names):
        h, w = ds.image_size(name)
        keys = torch.tensor([1, 3])
        save_cam(run / "cam" / f"{name}.npz", keys, torch.from_numpy(rng.random((2, h, w), dtype=np.float32)))
        aff = rng.choice(np.array([0, 1, 3, 255], np.uint8), size=(h, w))
        save_label_png(run / "affinity_labels" / f"{name}.png", aff)
        if not (skip_first_pseudo and i == 0):
            save_label_png(run / "random_walk" / f"{name}.png", rng.integers(0, 4, (h, w), dtype=np.uint8))
    return ds


def _decode(uri):
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
        return np.asarray(img.convert("RGB"))


def _cells(page, col):
    """{row name: decoded image} of one image column."""
    out = {}
    for m in re.finditer(r'<tr class="sample" data-name="([^"]+)">(.*?)</tr>', page, re.S):
        c = re.search(rf'<td data-col="{col}"><img [^>]*src="([^"]+)"', m.group(2))
        if c:
            out[m.group(1)] = _decode(c.group(1))
    return out


# ----------------------------------------------------------------------------- the whole page

def test_report_of_a_full_run(tmp_path, data_root):
    cfg = _cfg(data_root, images=3)
    run = tmp_path / "run"
    ds = make_run(run, cfg)
    path = write_report(run, cfg)
    assert path == run / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    # numbers from metrics.json, one decimal, as the demo table prints them
    assert ">88.4 / 96.2, 37.7<" in page  # confident regions: fg / bg precision, ignored
    for v in ("91.2", "47.9", "45.1", "83.2", "58.1", "61.7",  # stage table
              "71.2", "40.5", "31.8", "55.5", "44.4", "52.5", "82.0", "54.8"):  # per-class IoU
        assert f">{v}<" in page, v
    assert "bg threshold 0.2" in page and "threshold 0.15, chosen on these images" in page
    assert "1 min 18 s" in page  # total of the manifest's stage times (78.75 s)
    assert "30.0 s" in page and "2.0 s" in page  # the segmentation network's training, then segment
    # self-contained: no network reference, no script
    assert "http" not in page and "<script" not in page and "src=\"data:image/png;base64," in page
    # N image rows with one data-URI image per column; no checkpoint -> no prediction column
    rows = re.findall(r'<tr class="sample" data-name="([^"]+)">(.*?)</tr>', page, re.S)
    assert [r[0] for r in rows] == ds.names[:3]
    for _, cells in rows:
        assert cells.count('src="data:image/png;base64,') == 5  # image, CAM, confident, random walk, GT
    assert 'data-col="segment"' not in page and "segmentation/ not found (segment has not run)" in page
    for col in ("image", "make_cam", "make_affinity_labels", "random_walk", "gt"):
        assert f'<th data-col="{col}">' in page
    # charts: mIoU bars for the three scored stages, loss curves with the affinity terms, the CAM sweep
    assert len(re.findall(r'<rect class="bar"', page)) == 3
    for name in ("loss", "bg_loss", "fg_loss", "neg_loss", "loss (epoch mean)", "CAM mIoU", "bg pairs"):
        assert f'data-name="{name}"' in page, name
    assert "<span class=\"sub\">val</span><br>miou<" in page and ">25<" in page  # epoch table: validation values


def test_image_cells_show_the_run_files(tmp_path, data_root):
    cfg = _cfg(data_root, images=2)
    run = tmp_path / "run"
    ds = make_run(run, cfg)
    page = render_report(run, cfg)
    name = ds.names[1]
    conf = load_label_png(run / "affinity_labels" / f"{name}.png")
    got = _cells(page, "make_affinity_labels")[name]
    assert np.array_equal(got, thumbnail(confident_colours(conf), 160, nearest=True))
    ignored = thumbnail((conf == 255).astype(np.uint8)[..., None].repeat(3, -1), 160, nearest=True)[..., 0] > 0
    assert ignored.any() and np.all(got[ignored] == 232)  # ignored pixels drawn light grey
    pseudo = load_label_png(run / "random_walk" / f"{name}.png")
    assert np.array_equal(_cells(page, "random_walk")[name], thumbnail(label_colours(pseudo), 160, nearest=True))
    assert np.array_equal(_cells(page, "gt")[name], thumbnail(label_colours(ds.load_mask(name)), 160, nearest=True))
    assert _cells(page, "image")[name].shape == (160, 160, 3)


def test_images_skip_those_without_all_files(tmp_path, data_root):
    cfg = _cfg(data_root, images=10)
    run = tmp_path / "run"
    ds = make_run(run, cfg, skip_first_pseudo=True)
    page = render_report(run, cfg)
    names = re.findall(r'<tr class="sample" data-name="([^"]+)">', page)
    assert names == ds.names[1:]  # the first has no pseudo label; fewer images than asked is fine


def test_prediction_column_shows_the_segment_stages_previews(tmp_path, data_root):
    cfg = _cfg(data_root, images=1)
    run = tmp_path / "run"
    ds = make_run(run, cfg)
    name = ds.names[0]
    h, w = ds.image_size(name)
    preview = np.random.default_rng(3).integers(0, 4, (h, w), dtype=np.uint8)
    save_label_png(run / "segmentation" / "preview" / f"{name}.png", preview)
    page = render_report(run, cfg)
    assert '<th data-col="segment">' in page
    assert np.array_equal(_cells(page, "segment")[name], thumbnail(label_colours(preview), 160, nearest=True))


def test_the_report_runs_no_network(tmp_path, data_root):
    """Rendering imports no model code: it only reads what the stages wrote."""
    import subprocess
    import sys

    cfg = _cfg(data_root, images=2)
    run = tmp_path / "run"
    make_run(run, cfg)
    (tmp_path / "cfg.yaml").write_text(config.dump(cfg))
    code = ("import sys; from affinitynet import config; from affinitynet.report import render_report; "
            f"render_report({str(run)!r}, config.load({str(tmp_path / 'cfg.yaml')!r})); "
            "print(sorted(m for m in sys.modules if m.startswith(('affinitynet.models', 'affinitynet.stages'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_stages_are_left_out(tmp_path, data_root):
    cfg = _cfg(data_root, images=2)
    run = tmp_path / "run"
    make_run(run, cfg)
    metrics = {k: v for k, v in METRICS.items() if k not in ("random_walk", "segmentation", "affinitynet")}
    write_json(run / "metrics.json", metrics)
    manifest = json.loads((run / "manifest.json").read_text())
    for n in ("train_affinitynet", "random_walk", "train_segmentation", "segment"):
        del manifest["stages"][n]
    write_json(run / "manifest.json", manifest)
    shutil.rmtree(run / "random_walk")
    for d in ("affinitynet", "deeplab"):
        shutil.rmtree(run / d)
    page = write_report(run, cfg).read_text(encoding="utf-8")
    assert ">58.1<" not in page and ">61.7<" not in page and ">83.2<" not in page
    assert ">47.9<" in page and "Not run: train_affinitynet, random_walk, train_segmentation, segment" in page
    assert 'data-col="random_walk"' not in page and "random_walk/ not found" in page
    assert "No training history for: AffinityNet, segmentation network" in page
    assert len(re.findall(r'<rect class="bar"', page)) == 1
    assert len(re.findall(r'<tr class="sample"', page)) == 2


def test_empty_run_dir(tmp_path, data_root):
    cfg = _cfg(tmp_path / "no-data")
    run = tmp_path / "run"
    run.mkdir()
    page = write_report(run, cfg).read_text(encoding="utf-8")
    assert "metrics.json not found" in page and "not found: no images shown" in page
    assert "http" not in page and "<svg" not in page


# ----------------------------------------------------------------------------- pieces

def test_nice_ticks_cover_the_range_with_round_steps():
    for lo, hi in [(0.0, 1.0), (0.013, 0.87), (3.2, 3.2), (-5.0, 117.0), (0.05, 0.6), (0, 12345)]:
        t = nice_ticks(lo, hi, 5)
        assert t[0] <= min(lo, hi) and t[-1] >= max(lo, hi)
        steps = np.diff(t)
        assert np.allclose(steps, steps[0]) and 2 <= len(t) <= 12
        mant = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert any(abs(mant - m) < 1e-9 for m in (1, 2, 2.5, 5, 10))
    assert nice_ticks(0, 1, 5) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_line_chart_maps_points_into_the_plot():
    svg = svg_line_chart([Series("a", [(0, 0.0), (10, 1.0), (5, float("nan"))])], width=200, height=130)
    pts = re.search(r'data-name="a" points="([^"]+)"', svg).group(1).split()
    assert len(pts) == 2  # the NaN point is dropped
    (x0, y0), (x1, y1) = [tuple(map(float, p.split(","))) for p in pts]
    # plot box: left 52, right 200 - 14, top 30, bottom 130 - 38; ticks 0..10 and 0..1 span it exactly
    assert (x0, y0) == (52.0, 92.0) and (x1, y1) == (186.0, 30.0)
    assert svg_line_chart([Series("empty", [])]) == ""


def test_bar_chart_widths_are_proportional():
    svg = svg_bar_chart([("x", 25.0), ("y", 100.0), ("z", float("nan"))], width=460, vmax=100)
    w = [float(v) for v in re.findall(r'class="bar"[^>]*width="([\d.]+)"', svg)]
    assert len(w) == 2 and w[1] == 460 - 130 - 56 and abs(w[0] - w[1] / 4) < 0.01


def test_png_data_uri_round_trips():
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_decode(png_data_uri(rgb)), rgb)


def test_read_history_skips_a_cut_line(tmp_path):
    p = tmp_path / "history.jsonl"
    p.write_text('{"kind": "step", "step": 1, "loss": 0.5}\n\n{"kind": "step", "st')
    assert read_history(p) == [{"kind": "step", "step": 1, "loss": 0.5}]


def test_demo_table_has_each_scored_stage_and_the_times(tmp_path):
    from affinitynet.commands.demo import demo_table
    from affinitynet.runner import StageResult

    write_json(tmp_path / "metrics.json", METRICS)
    results = [StageResult(n, "done", s) for n, s in STAGE_SECONDS.items()]
    table = demo_table(tmp_path, results).splitlines()
    assert table[0].split() == ["stage", "measure", "value", "time"]
    rows = {line[:19].strip(): line for line in table[2:]}
    assert "91.2" in rows["classifier"] and "12.0s" in rows["classifier"]
    assert "bg threshold 0.2" in rows["CAM labels"] and "47.9" in rows["CAM labels"]
    assert "88.4 / 96.2, 37.7" in rows["confident regions"] and "83.2" in rows["AffinityNet"]
    assert "58.1" in rows["random walk"] and "61.7" in rows["segmentation"] and "2.0s" in rows["segmentation"]
    assert "78.8s" in rows["total"]
    # a stage's further rows follow its headline, without a time of their own
    best = table.index(rows["CAM labels"]) + 1
    assert table[best].startswith(" ") and "chosen on these images" in table[best] and "45.1" in table[best]
    assert not table[best].rstrip().endswith("s")
