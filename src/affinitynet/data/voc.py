"""PASCAL VOC 2012 layout reader (also any VOC-layout set with its own ``classes.txt``, e.g. the synthetic set)."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import SegDataset, empty_tags_error

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

LABEL_SOURCES = ("auto", "xml", "masks")


def find_voc_root(root) -> Path:
    """The folder holding ``JPEGImages``: ``root`` itself, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset root not found (data.root)")
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DataError(root, "not a VOC-layout folder: no JPEGImages/ here, in VOC2012/ or in VOCdevkit/VOC2012/")


def read_class_list(path) -> list[str]:
    """One class name per line (blank lines and ``#`` comments skipped); duplicates raise DataError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, "class list not found") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise DataError(path, "class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(path, f"class list repeats {dup}")
    if "background" in names:
        raise DataError(path, "class list must hold only foreground classes ('background' is id 0)")
    return names


def read_split_list(path) -> list[str]:
    """Image ids of a list file: ``2007_000032``, ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` or
    ``JPEGImages/x.jpg`` lines (the stem of the first token)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, "split list not found") from None
    names = [Path(ln.split()[0]).stem for ln in lines if ln.strip()]
    if not names:
        raise DataError(path, "split list is empty")
    return names


class VOCDataset(SegDataset):
    """VOC layout: ``JPEGImages/``, ``Annotations/``, ``ImageSets/Segmentation/{split}.txt``, mask folder.

    ``split`` is a list name in ``ImageSets/Segmentation`` or a path to a list file (psa/irn style).
    Tags come from ``Annotations/{name}.xml`` (``labels_from='xml'``), from the masks (``'masks'``),
    or from the XML where it exists and the mask otherwise (``'auto'``). ``classes.txt`` in the root
    replaces the 20 VOC classes. ``mask_dir`` must exist (a DataError naming it otherwise, so that no score
    is skipped in silence); ``""`` means no masks.
    """

    def __init__(self, root, split: str = "train", *, mask_dir: str = "SegmentationClass",
                 labels_from: str = "auto"):
        if labels_from not in LABEL_SOURCES:
            raise ConfigError(f"data.voc.labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
        root = find_voc_root(root)
        classes_file = root / "classes.txt"
        classes = read_class_list(classes_file) if classes_file.is_file() else list(VOC_CLASSES)
        self.split = split
        self.split_file = self.split_file_of(root, split)
        super().__init__(root, classes, read_split_list(self.split_file))
        self.mask_root = root / mask_dir if mask_dir else None
        if self.mask_root is not None and not self.mask_root.is_dir():
            make = (" ('affinitynet data voc-aug ROOT --sbd SBD' makes it from SBD)" if mask_dir == "SegmentationClassAug"
                    else "")
            raise DataError(self.mask_root, f"mask folder not found (data.voc.mask_dir){make}; set "
                                            f"data.voc.mask_dir='' to run without masks and scores")
        self.labels_from = labels_from
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        for name in self.names:
            path = self.image_path(name)
            if not path.is_file():
                raise DataError(path, f"image file not found (listed in {self.split_file})")

    @staticmethod
    def split_file_of(root: Path, split: str) -> Path:
        named = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if named.is_file():
            return named
        given = Path(split)
        for cand in (given, root / given):
            if cand.is_file():
                return cand
        if "/" in split or "\\" in split or split.endswith(".txt"):
            raise DataError(given, "split list not found")
        raise DataError(named, f"split list not found (split '{split}'; give a name in "
                               f"ImageSets/Segmentation or a path to a list file)")

    def image_path(self, name: str) -> Path:
        """``JPEGImages/{name}.jpg``."""
        return self.root / "JPEGImages" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path | None:
        """``{mask_dir}/{name}.png`` (None without a mask folder)."""
        return None if self.mask_root is None else self.mask_root / f"{name}.png"

    def xml_path(self, name: str) -> Path:
        """``Annotations/{name}.xml``."""
        return self.root / "Annotations" / f"{name}.xml"

    @property
    def has_masks(self) -> bool:
        """True unless ``mask_dir`` is "" (a configured folder exists, or the dataset was not made)."""
        return self.mask_root is not None

    def _read_labels(self, name: str) -> np.ndarray:
        xml = self.xml_path(name)
        use_xml = self.labels_from == "xml" or (self.labels_from == "auto" and xml.is_file())
        if use_xml:
            labels = self._labels_from_xml(xml)
            source = xml
        else:
            source = self.mask_path(name)
            if source is None or not source.is_file():
                raise DataError(source or xml, f"no mask to take image-level tags from for '{name}' "
                                               f"(and no {xml.name} in Annotations/)")
            labels = self.labels_from_mask(self.load_mask(name))
        if not labels.any():
            raise empty_tags_error(source, name)
        return labels

    def _labels_from_xml(self, path: Path) -> np.ndarray:
        try:
            tree = ET.parse(path)
        except FileNotFoundError:
            raise DataError(path, "annotation XML not found") from None
        except ET.ParseError as e:
            raise DataError(path, f"annotation XML does not parse ({e})") from None
        labels = np.zeros(self.num_classes, dtype=np.float32)
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in self._class_index:
                raise DataError(path, f"unknown class '{name}' (known: {', '.join(self.classes)})")
            labels[self._class_index[name]] = 1.0
        return labels
