"""MS-COCO 2014 reader: image tags from the instance annotations, semantic masks rendered from them.

Images without any annotation have no tags; they are left out of every split (a classifier cannot learn
from them, and the usual WSSS COCO lists drop them too).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import io
from ..errors import AffinityNetError, DataError
from .base import SegDataset


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise AffinityNetError("rendering COCO masks needs pycocotools: pip install 'affinitynet[coco]'") from None
    return mask_utils


def _split_dir(root: Path, split: str) -> str:
    """``train`` / ``val`` name the 2014 folders when only those exist."""
    if not (root / split).is_dir() and (root / f"{split}2014").is_dir():
        return f"{split}2014"
    return split


# list -> (what one entry is called, the fields the reader uses)
_REQUIRED = {"images": ("image", ("id", "file_name", "height", "width")),
             "annotations": ("annotation", ("image_id", "category_id", "segmentation")),
             "categories": ("category", ("id", "name"))}


def _checked_entries(data, path) -> dict:
    """``data`` (a parsed instances JSON) once every list and entry has the fields the reader uses; else DataError."""
    if not isinstance(data, dict):
        raise DataError(path, f"not a COCO instances file (a JSON object with images, annotations and categories "
                              f"expected, got a {type(data).__name__})")
    for key, (singular, fields) in _REQUIRED.items():
        if key not in data:
            raise DataError(path, f"not a COCO instances file (missing field '{key}')")
        if not isinstance(data[key], list):
            raise DataError(path, f"'{key}' must be a list, got a {type(data[key]).__name__}")
        for i, entry in enumerate(data[key]):
            what = (f"{singular} {entry['id']}" if isinstance(entry, dict) and "id" in entry
                    else f"{singular} at position {i} of '{key}'")
            if not isinstance(entry, dict):
                raise DataError(path, f"{what} is not a JSON object")
            missing = [f for f in fields if f not in entry]
            if missing:
                raise DataError(path, f"{what} has no '{missing[0]}' field")
            if key == "images" and not all(isinstance(entry[f], int) and entry[f] > 0 for f in ("height", "width")):
                raise DataError(path, f"{what}: height and width must be positive integers, got "
                                      f"{entry['height']!r} x {entry['width']!r}")
    return data


class COCODataset(SegDataset):
    """COCO layout: ``{image_dir}/`` (default ``{split}/``) and ``annotations/instances_{split}.json``.

    The categories of the JSON, in category-id order, become class ids 1..C. Overlapping instances are
    drawn largest first, so smaller instances lie on top; crowd regions become 255.
    """

    def __init__(self, root, split: str = "train2014", *, image_dir: str = "", annotation_file: str = ""):
        root = Path(root)
        split = _split_dir(root, split)
        self.split = split
        self.annotation_file = root / (annotation_file or "annotations/instances_{split}.json").format(split=split)
        self.image_root = root / (image_dir or "{split}").format(split=split)
        if not self.annotation_file.is_file():
            raise DataError(self.annotation_file, "COCO annotation file not found")
        data = _checked_entries(io.read_json(self.annotation_file), self.annotation_file)
        try:
            cats = sorted(data["categories"], key=lambda c: c["id"])
            self._cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
            classes = [str(c["name"]) for c in cats]
            images = {im["id"]: im for im in data["images"]}
            anns: dict[int, list[dict]] = {}
            for a in data["annotations"]:
                if a["image_id"] not in images:
                    raise DataError(self.annotation_file, f"annotation {a.get('id')} refers to unknown image "
                                                          f"{a['image_id']}")
                if a["category_id"] not in self._cat_to_label:
                    ids = sorted(self._cat_to_label)
                    known = f"ids {ids[0]}..{ids[-1]}" if ids else "it is empty"
                    raise DataError(self.annotation_file, f"annotation {a.get('id')} has category_id "
                                                          f"{a['category_id']}, which is not in the category "
                                                          f"list ({known})")
                anns.setdefault(a["image_id"], []).append(a)
        except TypeError as e:  # ids that are lists or objects, names that do not sort
            raise DataError(self.annotation_file, f"not a COCO instances file ({e})") from None
        self._images: dict[str, dict] = {}
        self._anns: dict[str, list[dict]] = {}
        for image_id in sorted(images):
            if image_id not in anns:
                continue  # no tags: excluded (see module docstring)
            im = images[image_id]
            name = Path(im["file_name"]).stem
            self._images[name] = im
            self._anns[name] = anns[image_id]
        super().__init__(root, classes, list(self._images))

    @property
    def category_ids(self) -> list[int]:
        """The COCO category id of each class id 1..C, in order."""
        return sorted(self._cat_to_label, key=self._cat_to_label.get)

    def image_path(self, name: str) -> Path:
        """``{image_dir}/{file_name}``."""
        return self.image_root / self._images[name]["file_name"]

    @property
    def has_masks(self) -> bool:
        """COCO masks are rendered from the instance annotations: always available."""
        return True

    def image_size(self, name: str) -> tuple[int, int]:
        """(H, W) from the annotation file."""
        im = self._images[name]
        return int(im["height"]), int(im["width"])

    def _read_labels(self, name: str) -> np.ndarray:
        labels = np.zeros(self.num_classes, dtype=np.float32)
        for a in self._anns[name]:
            labels[self._cat_to_label[a["category_id"]] - 1] = 1.0
        return labels

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8 semantic mask rendered from the instance polygons / RLEs (needs pycocotools)."""
        mask_utils = _mask_utils()
        h, w = self.image_size(name)
        out = np.zeros((h, w), dtype=np.uint8)
        for a in sorted(self._anns[name], key=lambda a: -float(a.get("area", 0.0))):
            seg = a["segmentation"]
            try:
                if isinstance(seg, list):  # polygons
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(seg, h, w)
                else:  # compressed RLE
                    rle = dict(seg)
                    if isinstance(rle["counts"], str):
                        rle["counts"] = rle["counts"].encode("ascii")
                with warnings.catch_warnings():  # pycocotools' Cython __array__ warns under numpy 2
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = mask_utils.decode(rle).astype(bool)
            except Exception as e:
                raise DataError(self.annotation_file, f"annotation {a.get('id')} of '{name}': bad segmentation "
                                                      f"({e})") from None
            if m.shape != (h, w):
                raise DataError(self.annotation_file, f"annotation {a.get('id')} of '{name}': segmentation size "
                                                      f"{m.shape[1]}x{m.shape[0]} does not match image {w}x{h}")
            out[m] = 255 if a.get("iscrowd", 0) else self._cat_to_label[a["category_id"]]
        return out
