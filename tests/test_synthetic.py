"""The synthetic set: deterministic bytes, VOC layout read back by the VOC reader, and a real CAM-vs-object gap."""
import json
from pathlib import Path

import numpy as np
import pytest

from affinitynet.config import DataConfig, SyntheticOptions
from affinitynet.data import SyntheticDataset, VOCDataset, build_dataset, ensure_synthetic
from affinitynet.data.synthetic import PATTERNS, _pattern, class_names, generate, render_image, render_samples
from affinitynet.errors import ConfigError
from affinitynet.ops.metrics import confusion_matrix, scores

SMALL = dict(train=6, val=3, size=64, classes=4)


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = all_files(generate(tmp_path / "a", seed=3, **SMALL))
    b = all_files(generate(tmp_path / "b", seed=3, **SMALL))
    c = all_files(generate(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert set(a) == set(c)
    differing = [k for k in a if k.endswith((".jpg", ".png")) and a[k] != c[k]]
    assert len(differing) == 2 * (SMALL["train"] + SMALL["val"])
    # no temporary files left behind
    assert not [k for k in a if ".tmp" in k]


def test_layout_and_voc_reader(tmp_path):
    root = generate(tmp_path / "s", seed=0, **SMALL)
    for sub in ("JPEGImages", "SegmentationClass", "Annotations"):
        assert len(list((root / sub).iterdir())) == SMALL["train"] + SMALL["val"]
    marker = json.loads((root / "synthetic.json").read_text())
    assert marker["params"] == {"train": 6, "val": 3, "size": 64, "classes": 4, "seed": 0}
    assert (root / "classes.txt").read_text().split() == class_names(4)
    train, val = VOCDataset(root, "train"), VOCDataset(root, "val")
    assert len(train) == 6 and len(val) == 3 and train.classes == class_names(4)
    for ds in (train, val):
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (64, 64, 3)
            mask = item["mask"]
            assert set(np.unique(mask).tolist()) <= set(range(5)) | {255}
            assert (mask == 255).any()  # void band on the object boundaries
            # XML tags agree with the classes present in the mask
            np.testing.assert_array_equal(item["labels"], ds.labels_from_mask(mask))


def test_render_image_properties():
    size, k = 128, 5
    conf = np.zeros((k + 1, k + 2), np.int64)
    part_fracs, n_objects = [], []
    for i in range(20):
        r = render_image(size, k, np.random.default_rng([0, 9, i]))
        mask, part = r["mask"], r["part"]
        objs = [o for o in r["objects"] if o["kind"] == "object"]
        assert 1 <= len(objs) <= 3
        assert len(r["objects"]) - len(objs) <= 2
        n_objects.append(len(objs))
        for o in objs:
            x0, y0, p = o["part"]
            assert round(0.12 * size) <= p <= round(0.16 * size)
            inside = mask[y0:y0 + p, x0:x0 + p]
            assert (inside == o["cls"]).all()  # the part is visible and labelled with its object's class
            part_fracs.append(p * p / o["area"])
        # the mask marks whole bodies, much more than the parts
        assert ((mask > 0) & (mask < 255)).sum() > 2 * part.sum()
        label = np.where(part, mask, 0)
        conf += confusion_matrix(label, mask, k + 1)
    assert 0.03 < np.mean(part_fracs) < 0.3
    assert len(set(n_objects)) > 1
    # labelling only the class parts (an ideal CAM) is far from the full masks
    assert scores(conf, ["bg"] + class_names(k))["miou"] < 50


def test_class_patterns_are_distinct():
    rng = np.random.default_rng(0)
    pats = {name: _pattern(name, 12, 3, rng) for name in PATTERNS}
    for a in PATTERNS:
        assert 0.1 < pats[a].mean() < 0.9 or a == "dots"
        for b in PATTERNS:
            if a < b:
                assert (pats[a] != pats[b]).any()


def test_bad_parameters(tmp_path):
    with pytest.raises(ConfigError):
        class_names(len(PATTERNS) + 1)
    with pytest.raises(ConfigError):
        generate(tmp_path / "never", size=16)
    assert not (tmp_path / "never").exists()


def test_ensure_synthetic_generates_once_and_checks_params(tmp_path):
    cfg = DataConfig(kind="synthetic", root=str(tmp_path / "syn"),
                     synthetic=SyntheticOptions(train=4, val=2, size=64, classes=3, seed=1))
    root = ensure_synthetic(cfg)
    marker = root / "synthetic.json"
    before = marker.stat().st_mtime_ns
    probe = root / "JPEGImages" / "train_00000.jpg"
    probe.write_bytes(b"left alone")  # a complete set is not regenerated
    assert ensure_synthetic(cfg) == root and marker.stat().st_mtime_ns == before
    assert probe.read_bytes() == b"left alone"
    marker.unlink()  # incomplete: generated again
    ensure_synthetic(cfg)
    assert marker.is_file() and probe.read_bytes() != b"left alone"
    cfg.synthetic.seed = 2
    with pytest.raises(ConfigError, match="synthetic set"):
        ensure_synthetic(cfg)
    cfg.synthetic.seed = 1
    ds = build_dataset(cfg, "val")
    assert isinstance(ds, SyntheticDataset) and len(ds) == 2 and ds.num_classes == 3


def test_render_samples(tmp_path):
    root = generate(tmp_path / "s", seed=0, **SMALL)
    out = render_samples(root, tmp_path / "sheet.png", n=3)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (3 * 68 + 4, 2 * 68 + 4)


def test_shapes_style_ties_each_class_to_a_body_shape_and_is_recorded(tmp_path):
    from affinitynet.data.synthetic import _body_mask

    objects = [o for i in range(30) for o in render_image(96, 5, np.random.default_rng([3, 0, i]), "shapes")["objects"]
               if o["kind"] == "object"]
    assert {o["cls"] for o in objects} == set(range(1, 6))
    assert max(o["part"][2] for o in objects) <= round(96 * 0.09)  # a small mark
    # the class decides the body: the rounded triangles of class 5 fill less of their box than class 1's ellipses
    fill = {c: np.mean([o["area"] / ((o["bbox"][2] - o["bbox"][0] + 1) * (o["bbox"][3] - o["bbox"][1] + 1))
                        for o in objects if o["cls"] == c]) for c in (1, 5)}
    assert fill[5] < fill[1] - 0.05
    tri, _, _ = _body_mask(96, np.random.default_rng(0), family=4)
    ell, _, _ = _body_mask(96, np.random.default_rng(0), family=0)
    assert tri.sum() < ell.sum()  # same axes, same rotation
    cfg = DataConfig(kind="synthetic", root=str(tmp_path / "s"),
                     synthetic=SyntheticOptions(train=3, val=1, size=64, classes=3, style="shapes"))
    root = ensure_synthetic(cfg)
    assert json.loads((root / "synthetic.json").read_text())["params"]["style"] == "shapes"
    assert all_files(root) == all_files(generate(tmp_path / "again", train=3, val=1, size=64, classes=3,
                                                 style="shapes"))
    cfg.synthetic.style = "parts"  # another style is another set
    with pytest.raises(ConfigError, match="synthetic set"):
        ensure_synthetic(cfg)
    with pytest.raises(ConfigError, match="style"):
        generate(tmp_path / "bad", style="stars")
    # the default style's marker names no style, so sets made before styles existed stay valid
    plain = generate(tmp_path / "plain", train=1, val=1, size=64, classes=2)
    assert "style" not in json.loads((plain / "synthetic.json").read_text())["params"]
