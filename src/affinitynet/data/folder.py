"""A folder of images plus a CSV of tags (``image,labels``), optional class list and mask folder."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SegDataset
from .voc import read_class_list

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_SEP = re.compile(r"[;\s]+")
_HEADER_IMAGE = {"image", "images", "file", "filename", "file_name", "path", "name"}
_HEADER_LABELS = {"labels", "label", "tags", "tag", "classes", "class"}


def read_tag_csv(path) -> list[tuple[int, str, list[str]]]:
    """Rows ``(line number, image, [labels])`` of an ``image,labels`` CSV (header optional, labels split by
    ``;`` or whitespace)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(path, "tag CSV not found") from None
    rows = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        image = row[0].strip()
        labels = [t for cell in row[1:] for t in _SEP.split(cell.strip()) if t]
        if not rows and image.lower() in _HEADER_IMAGE and len(labels) == 1 and labels[0].lower() in _HEADER_LABELS:
            continue  # header
        rows.append((lineno, image, labels))
    if not rows:
        raise DataError(path, "tag CSV has no rows")
    return rows


class FolderDataset(SegDataset):
    """Images under ``image_dir`` tagged by a CSV; classes from ``classes_file`` or the sorted CSV labels.

    ``class_csvs`` are further CSVs (other splits) whose labels join the inferred class list, so that
    train and val agree on class ids. Masks (optional) are ``{mask_dir}/{image stem}.png``.
    """

    def __init__(self, root, csv_file, *, image_dir: str = "", classes_file: str = "",
                 mask_dir: str = "", class_csvs: tuple = ()):
        root = Path(root)
        self.csv_file = root / csv_file
        self.image_root = root / image_dir if image_dir else root
        self.mask_root = root / mask_dir if mask_dir else None
        rows = read_tag_csv(self.csv_file)
        if classes_file:
            classes = read_class_list(root / classes_file)
        else:
            found = {lab for _, _, labs in rows for lab in labs}
            for other in class_csvs:
                other = root / other
                if other != self.csv_file and other.is_file():
                    found |= {lab for _, _, labs in read_tag_csv(other) for lab in labs}
            classes = sorted(found)
        index = {c: i for i, c in enumerate(classes)}
        self._paths: dict[str, Path] = {}
        self._tags: dict[str, np.ndarray] = {}
        for lineno, image, labs in rows:
            where = f"line {lineno}"
            path = self._find_image(image)
            if path is None:
                raise DataError(self.csv_file, f"{where}: image '{image}' not found in {self.image_root}")
            name = Path(image).with_suffix("").as_posix() if Path(image).suffix.lower() in IMAGE_EXTS else image
            if name in self._paths:
                raise DataError(self.csv_file, f"{where}: image '{image}' is listed twice")
            if not labs:
                raise DataError(self.csv_file, f"{where}: image '{image}' has no labels "
                                               f"(a classifier cannot learn from it)")
            tags = np.zeros(len(classes), dtype=np.float32)
            for lab in labs:
                if lab not in index:
                    raise DataError(self.csv_file, f"{where}: unknown class '{lab}' "
                                                   f"(known: {', '.join(classes)})")
                tags[index[lab]] = 1.0
            self._paths[name] = path
            self._tags[name] = tags
        super().__init__(root, classes, list(self._paths))

    def _find_image(self, image: str) -> Path | None:
        path = self.image_root / image
        if path.is_file():
            return path
        if path.suffix.lower() not in IMAGE_EXTS:
            for ext in IMAGE_EXTS:
                for cand in (path.with_name(path.name + ext), path.with_name(path.name + ext.upper())):
                    if cand.is_file():
                        return cand
        return None

    def image_path(self, name: str) -> Path:
        """The image file the CSV names."""
        return self._paths[name]

    def mask_path(self, name: str) -> Path | None:
        """``{mask_dir}/{image stem}.png`` (keeping sub-folders of the image name), or None without masks."""
        if self.mask_root is None:
            return None
        return self.mask_root / f"{name}.png"

    @property
    def has_masks(self) -> bool:
        """True when the mask folder exists."""
        return self.mask_root is not None and self.mask_root.is_dir()

    def _read_labels(self, name: str) -> np.ndarray:
        return self._tags[name]
