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

from ..conventions import IGNORE, IMAGENET_MEAN, IMAGENET_STD, normalize_image

from ..ops.bound import bounded_size

CROP_PADS = ("mean", "black")


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _resize(img: np.ndarray, label: np.ndarray | None, size_hw: tuple[int, int], resample: str = "bilinear"):
    """Resize an (H, W, 3) uint8 image (PIL ``resample``) and its label to ``size_hw``.

    A label map (H, W) uint8 is resized by nearest neighbour, a score label (H, W, K) float32 bilinearly.
    """
    h, w = max(1, int(size_hw[0])), max(1, int(size_hw[1]))
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), RESAMPLE[resample]))
    if label is not None and label.shape[:2] != (h, w):
        if label.ndim == 3:
            t = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1))).unsqueeze(0)
            t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
            label = t[0].numpy().transpose(1, 2, 0)
        else:
            label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return img, label


def random_resize_long(img: np.ndarray, label: np.ndarray | None, long_range: Sequence[int],
                       rng: np.random.Generator, resample: str = "bilinear"):
    """Resize so the long side is uniform in [lo, hi] (inclusive): image (H,W,3) by ``resample``, label (H,W) nearest."""
    lo, hi = int(long_range[0]), int(long_range[-1])
    target = int(rng.integers(lo, hi + 1))
    h, w = img.shape[:2]
    s = target / max(h, w)
    return _resize(img, label, (round(h * s), round(w * s)), resample)


def random_scale(img: np.ndarray, label: np.ndarray | None, scale_range: Sequence[float],
                 rng: np.random.Generator, resample: str = "bilinear"):
    """Rescale by a factor uniform in [lo, hi]: image (H,W,3) by ``resample``, label (H,W) nearest."""
    s = float(rng.uniform(float(scale_range[0]), float(scale_range[-1])))
    h, w = img.shape[:2]
    return _resize(img, label, (round(h * s), round(w * s)), resample)


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


def shift_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of an (H, W, 3) uint8 image by ``shift`` of a full turn (in [-0.5, 0.5]), through PIL's HSV."""
    hsv = np.array(Image.fromarray(img).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator, hue: float = 0.0) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1-s, 1+s] and, when ``hue`` > 0, a hue shift
    uniform in [-hue, hue], applied in random order: (H,W,3) uint8 -> same."""
    if strength <= 0 and hue <= 0:
        return img
    x = img.astype(np.float32)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    if strength <= 0:
        factors[:] = 1.0
    order = rng.permutation(3)
    if hue > 0:  # only drawn when used, so hue=0 keeps the random stream of earlier versions
        order = rng.permutation(4)
        factors = np.append(factors, rng.uniform(-hue, hue))
    for op in order:
        f = float(factors[op])
        if op == 3:
            x = shift_hue(np.rint(x).astype(np.uint8), f).astype(np.float32)
            continue
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
    """Random size x size window of image (H,W,C) and label (H,W) or (H,W,K); a side shorter than ``size`` is
    padded (image with ``img_fill``, label with ``label_fill``) and placed at a random offset, like the reference."""
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
        out_label = np.full((size, size) + label.shape[2:], label_fill, dtype=label.dtype)
        out_label[ct:ct + ch, cl:cl + cw] = label[it:it + ch, il:il + cw]
    return out, out_label


class TrainTransform:
    """Augmentation of one training stage: ``kind`` "cls" (image only), "aff" or "seg" (image + label map).

    Order: resize long side (``cfg.resize_long``, if the section has it), shrink an image whose largest
    scale would exceed ``max_long_side`` (when given), random scale (``cfg.scale_range``, if it has it),
    horizontal flip, colour jitter (``cfg.color_jitter``, ``cfg.hue``), normalise, crop
    ``cfg.crop_size``. Geometric steps act identically on both. ``cfg.crop_pad`` "mean" pads the image with 0
    after normalisation (the mean colour), "black" with pixel value 0 (the crop taken before normalising,
    as the release's AffinityNet training does); a label map is padded with 255, a score label with 0.
    """

    KINDS = ("cls", "aff", "seg")

    def __init__(self, kind: str, cfg, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 *, max_long_side: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown transform kind {kind!r} (valid: {', '.join(self.KINDS)})")
        self.kind = kind
        self.crop_size = int(cfg.crop_size)
        self.resize_long = list(getattr(cfg, "resize_long", None) or [])
        self.scale_range = list(getattr(cfg, "scale_range", None) or [])
        self.jitter = float(getattr(cfg, "color_jitter", 0.0) or 0.0)
        self.hue = float(getattr(cfg, "hue", 0.0) or 0.0)
        self.resample = getattr(cfg, "resample", "bilinear")
        self.crop_pad = getattr(cfg, "crop_pad", "mean")
        self.max_long_side = int(max_long_side)  # images are first shrunk so the largest scale stays within it
        if self.resample not in RESAMPLE:
            raise ValueError(f"unknown resample {self.resample!r} (valid: {', '.join(RESAMPLE)})")
        if self.crop_pad not in CROP_PADS:
            raise ValueError(f"unknown crop_pad {self.crop_pad!r} (valid: {', '.join(CROP_PADS)})")
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def needs_label(self) -> bool:
        """True for the stages that train on a label map."""
        return self.kind != "cls"

    def __call__(self, img: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
        """(H,W,3) uint8 image, label or None -> (image (3,S,S) float32, label or None).

        A label map (H,W) uint8 comes back (S,S) int64; a label on a coarser grid (e.g. the stride-8
        feature grid) is first upsampled to the image size by nearest neighbour. A score label
        (H,W,K) float comes back (K,S,S) float32.
        """
        if self.needs_label and label is None:
            raise ValueError(f"transform kind {self.kind!r} needs a label map")
        if not self.needs_label:
            label = None
        scores = label is not None and np.asarray(label).ndim == 3
        if label is not None:
            label = np.asarray(label, dtype=np.float32 if scores else np.uint8)
            if label.shape[:2] != img.shape[:2]:
                _, label = _resize(img, label, img.shape[:2])
        if self.resize_long:
            img, label = random_resize_long(img, label, self.resize_long, rng, self.resample)
        if self.max_long_side:
            size = bounded_size(*img.shape[:2], self.max_long_side, max(self.scale_range, default=1.0))
            img, label = _resize(img, label, size, self.resample)
        if self.scale_range:
            img, label = random_scale(img, label, self.scale_range, rng, self.resample)
        img, label = random_hflip(img, label, rng)
        img = color_jitter(img, self.jitter, rng, self.hue)
        label_fill = 0 if scores else IGNORE
        if self.crop_pad == "black":
            img, label = random_crop(img, label, self.crop_size, rng, img_fill=0, label_fill=label_fill)
            x = normalize_image(img, self.mean, self.std).permute(1, 2, 0).numpy()
        else:
            x = normalize_image(img, self.mean, self.std).permute(1, 2, 0).numpy()
            x, label = random_crop(x, label, self.crop_size, rng, img_fill=0.0, label_fill=label_fill)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        if label is None:
            return x, None
        if scores:
            return x, torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))
        return x, torch.from_numpy(label.astype(np.int64))


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
    """Images with a label from ``label_fn(name)``: item i -> (image (3,S,S), label).

    The label is a map (H,W) uint8 -> (S,S) int64, or a score label (H,W,K) float -> (K,S,S) float32;
    ``reduce`` (optional) maps the transformed label to what the loss takes (e.g. labels on the feature grid).
    """

    def __init__(self, dataset, names: Sequence[str], label_fn: Callable[[str], np.ndarray],
                 transform: TrainTransform, seed: int = 0, reduce: Callable | None = None):
        super().__init__(seed)
        if not transform.needs_label:
            raise ValueError("LabelMapSet needs a transform of kind 'aff' or 'seg'")
        self.dataset = dataset
        self.names = list(names)
        self.label_fn = label_fn
        self.transform = transform
        self.reduce = reduce

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        name = self.names[index]
        x, y = self.transform(self.dataset.load_image(name), self.label_fn(name), self.rng(index))
        return x, (y if self.reduce is None else self.reduce(y))
