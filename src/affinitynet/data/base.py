"""The dataset base class every reader (VOC, COCO, folder, synthetic) derives from.

Class ids in masks: 0 is background, ``c + 1`` is ``classes[c]``, 255 is "void" (ignored).
Image-level labels are a (C,) float32 multi-hot vector over the C foreground classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import io
from ..errors import DataError


class SegDataset(torch.utils.data.Dataset):
    """Images of one split with image-level tags and (optionally) segmentation masks.

    Subclasses set ``root``, ``classes`` and ``names`` and override ``image_path``, ``_read_labels`` and,
    when they have masks, ``mask_path`` (or ``_read_mask`` for masks that are not PNG files).
    """

    root: Path
    classes: list[str]
    names: list[str]

    def __init__(self, root, classes: list[str], names: list[str]):
        self.root = Path(root)
        self.classes = list(classes)
        self.names = list(names)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._labels: dict[str, np.ndarray] = {}

    # ---- class list ---------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        """Names of the C + 1 mask ids: ``["background"] + classes``."""
        return ["background"] + self.classes

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes."""
        return len(self.classes)

    # ---- per-image access ---------------------------------------------------------------------
    def image_path(self, name: str) -> Path:
        """The image file of ``name``."""
        raise NotImplementedError

    def mask_path(self, name: str) -> Path | None:
        """The mask PNG of ``name``, or None where the dataset has no mask file for it."""
        return None

    @property
    def has_masks(self) -> bool:
        """Whether this split has ground-truth masks (``load_mask`` may still give None for single images)."""
        return False

    def mask_names(self, names=None) -> list[str]:
        """The names (of ``names``, default the split) that have a mask, in order: scores use these images only.

        A split may have masks for some images only (a folder of tagged photos with masks for ten of them);
        the others are left out of every score, and the scores say how many images they used.
        """
        names = self.names if names is None else list(names)
        if not self.has_masks:
            return []
        out = []
        for name in names:
            path = self.mask_path(name)
            if path is None or path.is_file():  # None while the split has masks: masks rendered, not read (COCO)
                out.append(name)
        return out

    def image_size(self, name: str) -> tuple[int, int]:
        """(H, W) of the image as displayed (EXIF orientation applied), read from the file header."""
        return io.image_size(self.image_path(name))

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB image as displayed (see ``io.load_image``)."""
        return io.load_image(self.image_path(name))

    def load_labels(self, name: str) -> np.ndarray:
        """(C,) float32 multi-hot image-level tags; an image without tags raises DataError."""
        labels = self._labels.get(name)
        if labels is None:
            labels = self._read_labels(name)
            self._labels[name] = labels
        return labels.copy()

    def _read_labels(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def load_mask(self, name: str) -> np.ndarray | None:
        """(H, W) uint8 class ids (0 background, 1..C, 255 void), or None without a mask for ``name``."""
        path = self.mask_path(name)
        if path is None or not path.is_file():
            return None
        mask = io.load_label_png(path, expect_size=self.image_size(name))
        self.check_mask(mask, path)
        return mask

    def check_mask(self, mask: np.ndarray, path) -> None:
        """Raise DataError naming ``path`` if the (H, W) mask holds ids above C other than 255."""
        bad = (mask > self.num_classes) & (mask != 255)
        if bad.any():
            ids = sorted(int(v) for v in np.unique(mask[bad]))
            raise DataError(path, f"mask holds class ids {ids} but the dataset has {self.num_classes} classes "
                                  f"(valid: 0..{self.num_classes} and 255)")

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 mask -> (C,) float32 multi-hot of the foreground ids it contains."""
        ids = np.unique(mask)
        ids = ids[(ids >= 1) & (ids <= self.num_classes)]
        labels = np.zeros(self.num_classes, dtype=np.float32)
        labels[ids.astype(np.int64) - 1] = 1.0
        return labels

    def index_of(self, name: str) -> int:
        """Position of image ``name`` in this split; KeyError if it is not in it."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"image '{name}' is not in this split of {self.root}") from None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        """dict(name, image (H, W, 3) uint8, labels (C,) float32, mask (H, W) uint8 or None)."""
        name = self.names[i]
        return {"name": name, "image": self.load_image(name), "labels": self.load_labels(name),
                "mask": self.load_mask(name)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, classes={self.num_classes})"


def empty_tags_error(path, name: str) -> DataError:
    """The DataError for an image whose tag list is empty (a classifier cannot learn from it)."""
    return DataError(path, f"image '{name}' has no foreground class tags (a classifier cannot learn from it); "
                           f"remove it from the split")
