"""CAMs of other methods: irn's and psa's ``.npy`` dicts read through the restricted unpickler, checked, and run."""
import os
import pickle

import numpy as np
import pytest
import torch

from affinitynet import cli
from affinitynet.cam_import import import_cams
from affinitynet.errors import DataError
from affinitynet.safe_pickle import read_npy

H, W = 6, 7
TAGS = np.array([1, 0, 1, 0], np.float32)  # 0-based foreground classes 0 and 2


def _maps(n=2, seed=0):
    m = np.random.default_rng(seed).random((n, H, W)).astype(np.float32)
    return m / m.reshape(n, -1).max(1)[:, None, None]


def save_irn(path, keys, high_res, *, tensors=True, drop=()):
    """A file as irn's step/make_cam.py writes it: keys and cam are tensors, high_res an array."""
    keys_ = torch.as_tensor(keys) if tensors else np.asarray(keys)
    d = {"keys": keys_, "cam": torch.from_numpy(high_res[:, ::2, ::2].copy()), "high_res": high_res}
    np.save(path, {k: v for k, v in d.items() if k not in drop})
    return path


def save_psa(path, maps_by_class):
    np.save(path, dict(maps_by_class))
    return path


def _one_line_error(path, fmt, match, tags=TAGS, size=(H, W)):
    with pytest.raises(DataError, match=match) as e:
        import_cams(path, fmt, size, tags)
    text = str(e.value)
    assert "\n" not in text and str(path) in text
    return text


def test_irn_file_with_tensors_imports(tmp_path):
    maps = _maps()
    p = save_irn(tmp_path / "a.npy", [0, 2], maps)
    keys, got = import_cams(p, "import_irn", (H, W), TAGS)
    np.testing.assert_array_equal(keys, [1, 3])  # 0-based foreground index -> class id
    np.testing.assert_allclose(got, maps)
    assert got.dtype == np.float32


def test_psa_file_imports_sorted_by_class(tmp_path):
    maps = _maps()
    p = save_psa(tmp_path / "a.npy", {2: maps[1], 0: maps[0]})
    keys, got = import_cams(p, "import_psa", (H, W), TAGS)
    np.testing.assert_array_equal(keys, [1, 3])
    np.testing.assert_allclose(got, maps)


def test_read_npy_plain_and_fortran_arrays(tmp_path):
    a = np.arange(12.0).reshape(3, 4)
    np.save(tmp_path / "c.npy", a)
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.testing.assert_array_equal(read_npy(tmp_path / "c.npy"), a)
    np.testing.assert_array_equal(read_npy(tmp_path / "f.npy"), a)


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    box = np.empty((), dtype=object)
    box[()] = {"keys": _Shell(marker), "high_res": np.zeros((0, H, W), np.float32)}
    p = tmp_path / "evil.npy"
    np.save(p, box, allow_pickle=True)
    text = _one_line_error(p, "import_irn", "refused to load")
    assert "system" in text
    assert not marker.exists()


def test_pickle_naming_another_module_is_refused(tmp_path):
    p = tmp_path / "x.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(pickle.dumps(np.array({"keys": pickle.PickleBuffer}, dtype=object)))
    _one_line_error(p, "import_psa", r"refused to load pickle\.PickleBuffer")


@pytest.mark.parametrize("case, fmt, match", [
    ("missing high_res", "import_irn", r"missing entry 'high_res'"),
    ("not a dict", "import_irn", r"expected irn's dict"),
    ("wrong size", "import_irn", r"CAM size 5x4 differs from the image's 7x6"),
    ("class not in tags", "import_psa", r"class index 1, which is not among the image's tags \[0, 2\]"),
    ("tag without a map", "import_psa", r"no map for class index 2"),
    ("class outside", "import_psa", r"class index 7 outside 0\.\.3"),
    ("keys and maps disagree", "import_irn", r"'high_res' must be \(2, H, W\)"),
    ("not normalised", "import_psa", r"expected maps normalised to \[0, 1\]"),
    ("key not an index", "import_psa", r"key 'cat' is not a class index"),
    ("truncated", "import_psa", r"cannot read the pickled array"),
    ("not npy", "import_psa", r"not a \.npy file"),
])
def test_malformed_files_one_line_errors(tmp_path, case, fmt, match):
    p = tmp_path / "bad.npy"
    maps = _maps()
    if case == "missing high_res":
        save_irn(p, [0, 2], maps, drop=("high_res",))
    elif case == "not a dict":
        np.save(p, np.array([maps], dtype=object), allow_pickle=True)
    elif case == "wrong size":
        save_irn(p, [0, 2], _maps()[:, :4, :5].copy())
    elif case == "class not in tags":
        save_psa(p, {0: maps[0], 1: maps[1], 2: maps[1]})
    elif case == "tag without a map":
        save_psa(p, {0: maps[0]})
    elif case == "class outside":
        save_psa(p, {0: maps[0], 7: maps[1]})
    elif case == "keys and maps disagree":
        save_irn(p, [0, 2], maps[:1].copy())
    elif case == "not normalised":
        save_psa(p, {0: maps[0] * 3, 2: maps[1]})
    elif case == "key not an index":
        save_psa(p, {"cat": maps[0]})
    elif case == "truncated":
        save_psa(tmp_path / "full.npy", {0: maps[0], 2: maps[1]})
        p.write_bytes((tmp_path / "full.npy").read_bytes()[:300])
    elif case == "not npy":
        p.write_bytes(b"PNG not numpy")
    _one_line_error(p, fmt, match)


def test_missing_file_names_it(tmp_path):
    _one_line_error(tmp_path / "nope.npy", "import_irn", "no CAM file for this image")


def test_pipeline_runs_on_imported_cams(tmp_path, capsys):
    """Perfect CAMs (the masks) in psa's format: train_cam is skipped, CAM labels score 100, the walk runs on them."""
    from affinitynet.data.synthetic import generate
    from affinitynet.io import load_cam

    root = generate(tmp_path / "data", train=6, val=2, size=48, classes=3)
    from affinitynet import config
    from affinitynet.data import build_dataset

    cfg = config.Config()
    cfg.data.root = str(root)
    syn = cfg.data.synthetic
    syn.train, syn.val, syn.size, syn.classes = 6, 2, 48, 3
    ds = build_dataset(cfg.data, "train")
    cams = tmp_path / "psa_cams"
    cams.mkdir()
    for name in ds.names:
        mask = ds.load_mask(name)
        tags = np.flatnonzero(ds.load_labels(name))
        save_psa(cams / f"{name}.npy", {int(c): (mask == c + 1).astype(np.float32) for c in tags})
    sets = [f"data.root={root}", "data.synthetic.train=6", "data.synthetic.val=2", "data.synthetic.size=48",
            "data.synthetic.classes=3", "cam.method=import_psa", f"cam.import_dir={cams}",
            "segmentation.pretrained=", "affinitynet.epochs=1", "affinitynet.batch_size=4",
            "affinitynet.crop_size=48", "affinitynet.resize_long=[40,56]", "affinity_labels.workers=1",
            "runtime.device=cpu", "runtime.progress=false", "runtime.threads=1"]
    argv = ["run", "synthetic_cpu", "--out", str(tmp_path / "run"), "--to", "random_walk"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "train_cam" in out.out + out.err and "not needed" in out.out + out.err
    assert not (tmp_path / "run" / "classifier" / "final.pt").exists()
    import json

    cam_metrics = json.loads((tmp_path / "run" / "cam" / "metrics.json").read_text())
    assert cam_metrics["miou"] == pytest.approx(100.0)
    keys, maps = load_cam(tmp_path / "run" / "cam" / f"{ds.names[0]}.npz")
    np.testing.assert_array_equal(keys, np.flatnonzero(ds.load_labels(ds.names[0])) + 1)
    assert (tmp_path / "run" / "random_walk" / f"{ds.names[0]}.png").is_file()


def test_config_rules_for_imported_cams(tmp_path):
    from affinitynet import config
    from affinitynet.validate import config_problems

    cfg = config.Config()
    cfg.cam.method = "import_irn"
    cfg.segmentation.pretrained = "classifier"
    found = dict(config_problems(cfg, files=False))
    assert "reads the CAM files of this folder" in found["cam.import_dir"]
    assert "does not train" in found["segmentation.pretrained"]
    cfg.cam.import_dir, cfg.segmentation.pretrained = str(tmp_path), ""
    assert not [k for k, _ in config_problems(cfg, files=False) if k.startswith(("cam.", "segmentation."))]
