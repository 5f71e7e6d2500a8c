"""Dataset readers on tiny trees built in tmp_path: VOC layout, COCO JSON, folder + CSV, and every bad input."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from affinitynet.config import DataConfig, FolderOptions, VocOptions
from affinitynet.data import (VOC_CLASSES, COCODataset, FolderDataset, SegDataset, VOCDataset, build_dataset)
from affinitynet.errors import AffinityNetError, ConfigError, DataError
from affinitynet.io import save_label_png

H, W = 12, 16


def write_jpeg(path, h=H, w=W, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def write_xml(path, names):
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax>"
                   f"</bndbox></object>" for n in names)
    path.write_text(f"<annotation><filename>x.jpg</filename><size><width>{W}</width><height>{H}</height>"
                    f"<depth>3</depth></size>{objs}</annotation>")


def mask_with(ids, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    for k, c in enumerate(ids):
        m[2:6, 2 + 4 * k:5 + 4 * k] = c
    m[0, :] = 255
    return m


# image -> (XML object names, mask ids, Aug mask ids)
VOC_TREE = {
    "2007_000032": (["aeroplane", "person", "aeroplane"], [1, 15], [1]),
    "2007_000039": (["tvmonitor"], [20], [20, 9]),
    "2008_000001": (["dog", "cat"], [12, 8], [12]),
}


def make_voc(base, tree=VOC_TREE, classes=None):
    voc = base / "VOCdevkit" / "VOC2012"
    for i, (name, (objs, ids, aug)) in enumerate(tree.items()):
        write_jpeg(voc / "JPEGImages" / f"{name}.jpg", seed=i)
        write_xml(voc / "Annotations" / f"{name}.xml", objs)
        save_label_png(voc / "SegmentationClass" / f"{name}.png", mask_with(ids))
        save_label_png(voc / "SegmentationClassAug" / f"{name}.png", mask_with(aug))
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    names = list(tree)
    (sets / "train.txt").write_text("\n".join(names[:2]) + "\n")
    (sets / "val.txt").write_text(names[2] + "\n")
    if classes:
        (voc / "classes.txt").write_text("\n".join(classes) + "\n")
    return voc


def multi_hot(ids, c=20):
    v = np.zeros(c, np.float32)
    v[np.asarray(ids, int) - 1] = 1
    return v


def test_voc_reads_labels_masks_in_every_root_layout(tmp_path):
    voc = make_voc(tmp_path)
    for root in (voc, voc.parent, tmp_path):
        ds = VOCDataset(root, "train")
        assert ds.root == voc
        assert ds.names == ["2007_000032", "2007_000039"]
        assert ds.classes == VOC_CLASSES and ds.num_classes == 20
        assert ds.label_names[0] == "background" and ds.label_names[20] == "tvmonitor"
        assert ds.has_masks
    np.testing.assert_array_equal(ds.load_labels("2007_000032"), multi_hot([1, 15]))
    np.testing.assert_array_equal(ds.load_labels("2007_000039"), multi_hot([20]))
    item = ds[1]
    assert item["name"] == "2007_000039" and item["image"].shape == (H, W, 3) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["mask"], mask_with([20]))
    assert item["labels"].dtype == np.float32 and item["labels"].shape == (20,)
    assert ds.index_of("2007_000039") == 1
    assert ds.image_size("2007_000039") == (H, W)
    assert isinstance(ds, SegDataset) and len(ds) == 2
    with pytest.raises(KeyError):
        ds.index_of("nope")


def test_voc_list_files_in_psa_styles_and_aug_masks(tmp_path):
    voc = make_voc(tmp_path)
    psa = tmp_path / "train_aug.txt"
    psa.write_text("/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n"
                   "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n")
    irn = tmp_path / "lists" / "val.txt"
    irn.parent.mkdir()
    irn.write_text("2007_000032\n\nJPEGImages/2008_000001.jpg\n")
    ds = VOCDataset(voc, str(psa), mask_dir="SegmentationClassAug")
    assert ds.names == ["2008_000001", "2007_000039"]
    np.testing.assert_array_equal(ds.load_mask("2007_000039"), mask_with([20, 9]))
    assert VOCDataset(voc, str(irn)).names == ["2007_000032", "2008_000001"]
    # labels from the masks instead of the XML
    ds = VOCDataset(voc, str(psa), mask_dir="SegmentationClassAug", labels_from="masks")
    np.testing.assert_array_equal(ds.load_labels("2007_000039"), multi_hot([20, 9]))


def test_voc_auto_labels_fall_back_to_masks_and_missing_mask_is_none(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "Annotations" / "2007_000039.xml").unlink()
    ds = VOCDataset(voc, "train")
    np.testing.assert_array_equal(ds.load_labels("2007_000039"), multi_hot([20]))  # from SegmentationClass
    (voc / "SegmentationClass" / "2007_000039.png").unlink()
    ds = VOCDataset(voc, "train")
    assert ds.load_mask("2007_000039") is None
    with pytest.raises(DataError, match="2007_000039.png"):
        ds.load_labels("2007_000039")
    with pytest.raises(DataError, match="2007_000039.xml"):
        VOCDataset(voc, "train", labels_from="xml").load_labels("2007_000039")
    with pytest.raises(DataError, match=r"VOC2012/nothing: mask folder not found \(data.voc.mask_dir\)"):
        VOCDataset(voc, "train", mask_dir="nothing")  # configured but absent: no scores skipped in silence
    no_masks = VOCDataset(voc, "train", mask_dir="")
    assert not no_masks.has_masks and no_masks.load_mask("2007_000032") is None


def test_voc_layout_with_own_class_list(tmp_path):
    tree = {"a1": (["ring"], [2], [2]), "a2": (["star", "ring"], [1, 2], [1]), "a3": (["star"], [1], [1])}
    voc = make_voc(tmp_path, tree, classes=["star", "ring"])
    ds = VOCDataset(voc, "train")
    assert ds.classes == ["star", "ring"]
    np.testing.assert_array_equal(ds.load_labels("a2"), [1, 1])
    np.testing.assert_array_equal(ds.load_labels("a1"), [0, 1])


@pytest.fixture()
def voc(tmp_path):
    return make_voc(tmp_path)


def test_voc_missing_image(voc):
    (voc / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(DataError) as e:
        VOCDataset(voc, "train")
    assert str(voc / "JPEGImages" / "2007_000039.jpg") in str(e.value)


def test_voc_missing_split_list(voc, tmp_path):
    with pytest.raises(DataError) as e:
        VOCDataset(voc, "trainval")
    assert str(voc / "ImageSets" / "Segmentation" / "trainval.txt") in str(e.value)
    missing = tmp_path / "nope" / "list.txt"
    with pytest.raises(DataError) as e:
        VOCDataset(voc, str(missing))
    assert str(missing) in str(e.value)


def test_voc_not_a_voc_root(tmp_path):
    with pytest.raises(DataError) as e:
        VOCDataset(tmp_path, "train")
    assert str(tmp_path) in str(e.value)


def test_voc_xml_does_not_parse(voc):
    xml = voc / "Annotations" / "2007_000032.xml"
    xml.write_text("<annotation><object><name>cat</name></annotation")
    with pytest.raises(DataError, match="does not parse") as e:
        VOCDataset(voc, "train").load_labels("2007_000032")
    assert str(xml) in str(e.value)


def test_voc_unknown_class_in_xml(voc):
    xml = voc / "Annotations" / "2007_000032.xml"
    write_xml(xml, ["person", "unicorn"])
    with pytest.raises(DataError, match="unicorn") as e:
        VOCDataset(voc, "train").load_labels("2007_000032")
    assert str(xml) in str(e.value)


def test_voc_mask_wrong_size(voc):
    png = voc / "SegmentationClass" / "2007_000032.png"
    save_label_png(png, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DataError, match="size") as e:
        VOCDataset(voc, "train").load_mask("2007_000032")
    assert str(png) in str(e.value)


def test_voc_rgb_mask(voc):
    png = voc / "SegmentationClass" / "2007_000032.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(png)
    with pytest.raises(DataError, match="RGB") as e:
        VOCDataset(voc, "train").load_mask("2007_000032")
    assert str(png) in str(e.value)


def test_voc_mask_with_class_id_above_c(voc):
    png = voc / "SegmentationClass" / "2007_000032.png"
    save_label_png(png, mask_with([1, 21]))
    with pytest.raises(DataError, match=r"\[21\]") as e:
        VOCDataset(voc, "train").load_mask("2007_000032")
    assert str(png) in str(e.value)


def test_voc_empty_tag_list(voc):
    xml = voc / "Annotations" / "2007_000032.xml"
    write_xml(xml, [])
    with pytest.raises(DataError, match="no foreground") as e:
        VOCDataset(voc, "train").load_labels("2007_000032")
    assert str(xml) in str(e.value)
    png = voc / "SegmentationClass" / "2007_000039.png"
    save_label_png(png, mask_with([]))
    with pytest.raises(DataError, match="no foreground") as e:
        VOCDataset(voc, "train", labels_from="masks").load_labels("2007_000039")
    assert str(png) in str(e.value)


def test_build_dataset_kinds_and_unknown_kind(voc, tmp_path):
    ds = build_dataset(DataConfig(kind="voc", root=str(tmp_path), voc=VocOptions(mask_dir="SegmentationClassAug")),
                       "val")
    assert isinstance(ds, VOCDataset) and ds.names == ["2008_000001"]
    np.testing.assert_array_equal(ds.load_mask("2008_000001"), mask_with([12]))
    with pytest.raises(ConfigError) as e:
        build_dataset(DataConfig(kind="imagenet", root=str(tmp_path)), "train")
    for kind in ("synthetic", "voc", "coco", "folder"):
        assert kind in str(e.value)


# ---- COCO ---------------------------------------------------------------------------------------

def rle_uncompressed(m):
    """Column-major run lengths starting with zeros (COCO's uncompressed RLE)."""
    flat = m.reshape(-1, order="F").astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat.tolist():
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def make_coco(root, split="val2014"):
    from pycocotools import mask as mu

    h, w = 20, 24
    for k in (1, 2, 3):
        write_jpeg(root / split / f"COCO_{split}_{k:012d}.jpg", h, w, seed=k)
    small = np.zeros((h, w), np.uint8)
    small[6:10, 6:10] = 1
    crowd = np.zeros((h, w), np.uint8)
    crowd[14:18, 16:22] = 1
    person3 = np.zeros((h, w), np.uint8)
    person3[0:5, 0:24] = 1
    comp = mu.encode(np.asfortranarray(person3))
    comp["counts"] = comp["counts"].decode("ascii")
    anns = [
        # image 1: a large polygon (cat id 5), a smaller uncompressed RLE (cat id 90) on top, a crowd (cat id 1)
        {"id": 11, "image_id": 1, "category_id": 5, "iscrowd": 0, "area": 120.0,
         "segmentation": [[2.0, 2.0, 14.0, 2.0, 14.0, 12.0, 2.0, 12.0]]},
        {"id": 12, "image_id": 1, "category_id": 90, "iscrowd": 0, "area": 16.0,
         "segmentation": rle_uncompressed(small)},
        {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 24.0,
         "segmentation": rle_uncompressed(crowd)},
        # image 3: a compressed RLE (cat id 1)
        {"id": 31, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 120.0,
         "segmentation": comp},
    ]
    images = [{"id": k, "file_name": f"COCO_{split}_{k:012d}.jpg", "height": h, "width": w} for k in (3, 1, 2)]
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return small, crowd, person3


def test_coco_tiny_json(tmp_path):
    small, crowd, person3 = make_coco(tmp_path)
    ds = COCODataset(tmp_path, "val2014")
    assert ds.classes == ["person", "airplane", "toothbrush"]  # category-id order
    # image 2 has no annotations: excluded
    assert ds.names == ["COCO_val2014_000000000001", "COCO_val2014_000000000003"]
    np.testing.assert_array_equal(ds.load_labels(ds.names[0]), [1, 1, 1])  # the crowd's class counts as a tag
    np.testing.assert_array_equal(ds.load_labels(ds.names[1]), [1, 0, 0])
    m = ds.load_mask(ds.names[0])
    assert m.shape == (20, 24) and m.dtype == np.uint8
    assert (m[small == 1] == 3).all()  # the smaller instance lies on top of the polygon
    assert (m[crowd == 1] == 255).all()
    assert (m[3:11, 3:6] == 2).all() and (m[3:11, 11:14] == 2).all()  # polygon interior
    assert (m[:, 16:][crowd[:, 16:] == 0] == 0).all()
    np.testing.assert_array_equal(ds.load_mask(ds.names[1]), person3)
    assert ds[1]["image"].shape == (20, 24, 3)
    assert ds.has_masks
    # "val" names the 2014 folder; build_dataset goes through the same reader
    ds2 = build_dataset(DataConfig(kind="coco", root=str(tmp_path)), "val")
    assert ds2.names == ds.names and ds2.split == "val2014"


def test_coco_custom_paths_and_missing_file(tmp_path):
    make_coco(tmp_path / "x")
    ds = COCODataset(tmp_path, "val2014", image_dir="x/{split}",
                     annotation_file="x/annotations/instances_{split}.json")
    assert len(ds) == 2 and ds.load_image(ds.names[0]).shape == (20, 24, 3)
    with pytest.raises(DataError) as e:
        COCODataset(tmp_path, "train2014")
    assert "instances_train2014.json" in str(e.value)


def test_coco_without_pycocotools(tmp_path, monkeypatch):
    make_coco(tmp_path)
    ds = COCODataset(tmp_path, "val2014")
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    np.testing.assert_array_equal(ds.load_labels(ds.names[1]), [1, 0, 0])  # tags need no pycocotools
    with pytest.raises(AffinityNetError, match=r"affinitynet\[coco\]"):
        ds.load_mask(ds.names[0])


# ---- folder + CSV --------------------------------------------------------------------------------

def make_folder(root):
    for k, name in enumerate(["a.jpg", "b.png", "sub/c.jpg"]):
        path = root / "imgs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 10, 3), 40 * k, np.uint8)).save(path)
    (root / "train.csv").write_text("image,labels\na.jpg,cat;dog\nb,dog\n\nsub/c.jpg,\"cat dog\"\n")
    (root / "val.csv").write_text("a.jpg,bird\n")
    save_label_png(root / "masks" / "a.png", np.array([[0, 1, 2, 255, 3, 0, 0, 0, 0, 0]] * 8, np.uint8))


def test_folder_csv_both_separators_and_classes_from_all_splits(tmp_path):
    make_folder(tmp_path)
    cfg = DataConfig(kind="folder", root=str(tmp_path),
                     folder=FolderOptions(csv="{split}.csv", image_dir="imgs", mask_dir="masks"))
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, FolderDataset)
    assert ds.classes == ["bird", "cat", "dog"]  # "bird" only occurs in val.csv
    assert ds.names == ["a", "b", "sub/c"]
    np.testing.assert_array_equal(ds.load_labels("a"), [0, 1, 1])
    np.testing.assert_array_equal(ds.load_labels("b"), [0, 0, 1])
    np.testing.assert_array_equal(ds.load_labels("sub/c"), [0, 1, 1])
    assert ds.image_path("b").name == "b.png"
    assert ds.has_masks and ds.load_mask("b") is None
    assert ds.load_mask("a")[0, 4] == 3
    assert build_dataset(cfg, "val").classes == ds.classes


def test_folder_classes_file_order(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("dog\ncat\nbird\n")
    ds = FolderDataset(tmp_path, "train.csv", image_dir="imgs", classes_file="classes.txt")
    assert ds.classes == ["dog", "cat", "bird"]
    np.testing.assert_array_equal(ds.load_labels("b"), [1, 0, 0])
    assert not ds.has_masks and ds.load_mask("a") is None


def test_folder_errors_name_csv_and_line(tmp_path):
    make_folder(tmp_path)
    csv = tmp_path / "bad.csv"
    csv.write_text("a.jpg,cat\nmissing.jpg,dog\n")
    with pytest.raises(DataError, match="line 2: image 'missing.jpg' not found") as e:
        FolderDataset(tmp_path, "bad.csv", image_dir="imgs")
    assert str(csv) in str(e.value)
    csv.write_text("image,labels\na.jpg,cat\nb.png,\n")
    with pytest.raises(DataError, match="line 3: image 'b.png' has no labels") as e:
        FolderDataset(tmp_path, "bad.csv", image_dir="imgs")
    assert str(csv) in str(e.value)
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    csv.write_text("a.jpg,cat\nb.png,dog;zebra\n")
    with pytest.raises(DataError, match="line 2: unknown class 'zebra'") as e:
        FolderDataset(tmp_path, "bad.csv", image_dir="imgs", classes_file="classes.txt")
    assert str(csv) in str(e.value)
    with pytest.raises(DataError) as e:
        FolderDataset(tmp_path, "none.csv", image_dir="imgs")
    assert str(tmp_path / "none.csv") in str(e.value)
