"""Training augmentations applied jointly to an image and its label map, and the Datasets that use them.

Images are (H, W, 3) uint8 numpy arrays, label maps (H, W) uint8 (255 = ignore). All randomness comes
from a ``numpy.random.Generator`` passed in; the Datasets derive it from (seed, epoch, index), so a
sample's augmentation does not depend on the number of DataLoader workers or on resuming.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE = 255


def _resize(img: np.ndarray, label: np.ndarray | None, size_hw: tuple[int, int]):
    """Resize an (H, W, 3) uint8 image bilinearly and an (H, W) label map by nearest neighbour to ``size_hw``."""
    h, w = max(1, int(size_hw[0])), max(1, int(size_hw[1]))
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    if label is not None and label.shape != (h, w):
        label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return img, label


def random_resize_long(img: np.ndarray, label: np.ndarray | None, long_range: Sequence[int],
                       rng: np.random.Generator):
    """Resize so the long side is uniform in [lo, hi] (inclusive): image (H,W,3) bilinear, label (H,W) nearest."""
    lo, hi = int(long_range[0]), int(long_range[-1])
    target = int(rng.integers(lo, hi + 1))
    h, w = img.shape[:2]
    s = target / max(h, w)
    return _resize(img, label, (round(h * s), round(w * s)))


def random_scale(img: np.ndarray, label: np.ndarray | None, scale_range: Sequence[float],
                 rng: np.random.Generator):
    """Rescale by a factor uniform in [lo, hi]: image (H,W,3) bilinear, label (H,W) nearest."""
    s = float(rng.uniform(float(scale_range[0]), float(scale_range[-1])))
    h, w = img.shape[:2]
    return _resize(img, label, (round(h * s), round(w * s)))


def random_hflip(img: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
    """With probability 1/2 mirror image (H,W,C) and label (H,W) left-right together."""
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
        if label is not None:
            label = np.ascontiguousarray(label[:, ::-1])
    return img, label


def _grey(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB -> (H, W) luma (ITU-R 601, as torchvision)."""
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1-s, 1+s], in random order: (H,W,3) uint8 -> same."""
    if strength <= 0:
        return img
    x = img.astype(np.float32)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    for op in rng.permutation(3):
        f = float(factors[op])
        if op == 0:  # brightness: blend with black
            x = x * f
        elif op == 1:  # contrast: blend with the mean grey level
            m = float(_grey(x).mean())
            x = (x - m) * f + m
        else:  # saturation: blend with the pixel's grey level
            g = _grey(x)[..., None]
            x = (x - g) * f + g
        x = np.clip(x, 0.0, 255.0)
    return np.rint(x).astype(np.uint8)


def random_crop(img: np.ndarray, label: np.ndarray | None, size: int, rng: np.random.Generator,
                img_fill: float = 0.0, label_fill: int = IGNORE):
    """Random size x size window of image (H,W,C) and label (H,W); a side shorter than ``size`` is padded
    (image with ``img_fill``, label with ``label_fill``) and placed at a random offset, like the reference."""
    h, w = img.shape[:2]
    offsets = []
    for dim in (h, w):
        space = dim - size
        if space > 0:
            offsets.append((0, int(rng.integers(0, space + 1))))  # (container offset, source offset)
        else:
            offsets.append((int(rng.integers(0, -space + 1)), 0))
    (ct, it), (cl, il) = offsets
    ch, cw = min(size, h), min(size, w)
    out = np.full((size, size) + img.shape[2:], img_fill, dtype=img.dtype)
    out[ct:ct + ch, cl:cl + cw] = img[it:it + ch, il:il + cw]
    out_label = None
    if label is not None:
        out_label = np.full((size, size), label_fill, dtype=label.dtype)
        out_label[ct:ct + ch, cl:cl + cw] = label[it:it + ch, il:il + cw]
    return out, out_label


def normalize(img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              channels_first: bool = True) -> np.ndarray:
    """(H,W,3) uint8 -> float32 (3,H,W) (or (H,W,3) with channels_first=False) as (x/255 - mean) / std."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    x = (img.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)) if channels_first else x


class TrainTransform:
    """Augmentation of one training stage: ``kind`` "cls" (image only), "aff" or "seg" (image + label map).

    Order: resize long side (``cfg.resize_long``, if the section has it), random scale (``cfg.scale_range``,
    if it has it), horizontal flip, colour jitter (``cfg.color_jitter``), normalise, crop ``cfg.crop_size``
    (image padded with 0 after normalisation, label with 255). Geometric steps act identically on both.
    """

    KINDS = ("cls", "aff", "seg")

    def __init__(self, kind: str, cfg, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if kind not in self.KINDS:
            raise ValueError(f"unknown transform kind {kind!r} (valid: {', '.join(self.KINDS)})")
        self.kind = kind
        self.crop_size = int(cfg.crop_size)
        self.resize_long = list(getattr(cfg, "resize_long", None) or [])
        self.scale_range = list(getattr(cfg, "scale_range", None) or [])
        self.jitter = float(getattr(cfg, "color_jitter", 0.0) or 0.0)
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def needs_label(self) -> bool:
        """True for the stages that train on a label map."""
        return self.kind != "cls"

    def __call__(self, img: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
        """(H,W,3) uint8 image, (H,W) uint8 label or None -> (image (3,S,S) float32, label (S,S) int64 or None).

        A label on a coarser grid (e.g. the stride-8 feature grid) is first upsampled to the image size
        by nearest neighbour.
        """
        if self.needs_label and label is None:
            raise ValueError(f"transform kind {self.kind!r} needs a label map")
        if not self.needs_label:
            label = None
        if label is not None:
            label = np.asarray(label, dtype=np.uint8)
            if label.shape != img.shape[:2]:
                _, label = _resize(img, label, img.shape[:2])
        if self.resize_long:
            img, label = random_resize_long(img, label, self.resize_long, rng)
        if self.scale_range:
            img, label = random_scale(img, label, self.scale_range, rng)
        img, label = random_hflip(img, label, rng)
        img = color_jitter(img, self.jitter, rng)
        x = normalize(img, self.mean, self.std, channels_first=False)
        x, label = random_crop(x, label, self.crop_size, rng, img_fill=0.0, label_fill=IGNORE)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        y = None if label is None else torch.from_numpy(label.astype(np.int64))
        return x, y


class _EpochSeeded(torch.utils.data.Dataset):
    """Base: one ``numpy.random.Generator`` per sample, from (seed, epoch, index)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])


class ClassificationSet(_EpochSeeded):
    """Images with their tags: item i -> (image (3,S,S) float32, labels (C,) float32 multi-hot)."""

    def __init__(self, dataset, transform: TrainTransform, seed: int = 0, names: Sequence[str] | None = None):
        super().__init__(seed)
        self.dataset = dataset
        self.names = list(dataset.names if names is None else names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        name = self.names[index]
        img, _ = self.transform(self.dataset.load_image(name), None, self.rng(index))
        labels = torch.as_tensor(np.asarray(self.dataset.load_labels(name), dtype=np.float32))
        return img, labels


class LabelMapSet(_EpochSeeded):
    """Images with a label map from ``label_fn(name) -> (H,W) uint8``: item i -> (image (3,S,S), label (S,S) int64)."""

    def __init__(self, dataset, names: Sequence[str], label_fn: Callable[[str], np.ndarray],
                 transform: TrainTransform, seed: int = 0):
        super().__init__(seed)
        if not transform.needs_label:
            raise ValueError("LabelMapSet needs a transform of kind 'aff' or 'seg'")
        self.dataset = dataset
        self.names = list(names)
        self.label_fn = label_fn
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        name = self.names[index]
        return self.transform(self.dataset.load_image(name), self.label_fn(name), self.rng(index))
