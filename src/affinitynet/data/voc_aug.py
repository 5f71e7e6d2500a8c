"""``affinitynet data voc-aug``: PASCAL VOC 2012 and SBD, as downloaded, into what the VOC presets read.

SBD (Hariharan et al., ICCV 2011) unpacks to ``benchmark_RELEASE/dataset/{cls,img,inst,train.txt,val.txt}``;
``cls/{name}.mat`` holds a MATLAB struct ``GTcls`` whose field ``Segmentation`` is the (H, W) class map
(0 background, 1..20, no void). This writes into the VOC folder

- ``SegmentationClassAug/{name}.png``, 8-bit class ids, for every image of SBD train + val and of VOC's
  ``SegmentationClass`` (12,031 on the real data): VOC's own mask wherever VOC has one (its train and val
  images, 255 on object borders), SBD's elsewhere. Every score the presets report is on VOC train or val
  images, so scoring against these PNGs is scoring against VOC's ``SegmentationClass``, as IRN evaluates;
- ``ImageSets/Segmentation/train_aug.txt``: SBD train + SBD val + VOC train, minus VOC val, one name a
  line (10,582 on the real data), the list psa and irn train on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io import image_size, load_label_png, save_label_png, write_text
from .voc import VOC_CLASSES, find_voc_root, read_split_list

AUG_DIR = "SegmentationClassAug"
TRAIN_AUG = "train_aug"


def find_sbd(path) -> Path:
    """SBD's ``dataset`` folder (``cls/``, ``train.txt``, ``val.txt``): ``path``, ``path/dataset`` or
    ``path/benchmark_RELEASE/dataset``."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "SBD folder not found (--sbd)")
    for cand in (path, path / "dataset", path / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir() and (cand / "train.txt").is_file():
            return cand
    raise DataError(path, "not SBD's folder: no cls/ and train.txt here, in dataset/ or in benchmark_RELEASE/dataset/")


def read_sbd_mask(path) -> np.ndarray:
    """SBD's ``cls/{name}.mat`` -> (H, W) uint8 class ids (``GTcls.Segmentation``)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ConfigError("reading SBD's .mat files needs scipy, which is not installed: pip install scipy "
                          "(or 'affinitynet[voc]')") from None
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise DataError(path, "SBD mask not found (the image is listed in SBD's train.txt or val.txt)") from None
    except (ValueError, TypeError, OSError) as e:
        raise DataError(path, f"not a readable MATLAB file ({e})") from None
    gt = mat.get("GTcls")
    mask = getattr(gt, "Segmentation", None)
    if mask is None or np.ndim(mask) != 2:
        raise DataError(path, "holds no GTcls.Segmentation class map (is it from SBD's cls/ folder?)")
    mask = np.asarray(mask)
    if mask.min() < 0 or (mask.max() > len(VOC_CLASSES) and mask.max() != 255):
        raise DataError(path, f"class ids outside 0..{len(VOC_CLASSES)}: {sorted(set(np.unique(mask).tolist()))[:8]}")
    return mask.astype(np.uint8)


def train_aug_names(sbd_train, sbd_val, voc_train, voc_val) -> list[str]:
    """The train_aug list: (SBD train | SBD val | VOC train) - VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def prepare_voc_aug(voc_root, sbd_root, *, progress=None) -> dict:
    """Write ``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt`` into the VOC folder
    (``find_voc_root``) from SBD's (``find_sbd``); returns the counts and paths it wrote."""
    voc, sbd = find_voc_root(voc_root), find_sbd(sbd_root)
    lists = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_split_list(lists / "train.txt"), read_split_list(lists / "val.txt")
    sbd_train, sbd_val = read_split_list(sbd / "train.txt"), read_split_list(sbd / "val.txt")
    names = train_aug_names(sbd_train, sbd_val, voc_train, voc_val)
    missing = [n for n in names if not (voc / "JPEGImages" / f"{n}.jpg").is_file()]
    if missing:
        raise DataError(voc / "JPEGImages" / f"{missing[0]}.jpg",
                        f"image not found: {len(missing)} of the {len(names)} train_aug images are not in VOC's "
                        f"JPEGImages (is this VOC 2012's trainval?)")
    own = set(voc_train) | set(voc_val)  # VOC's own masks win where both exist
    masks = sorted(own | set(sbd_train) | set(sbd_val))
    out = voc / AUG_DIR
    out.mkdir(exist_ok=True)
    it = progress(masks, desc="SegmentationClassAug") if progress else masks
    for name in it:
        size = image_size(voc / "JPEGImages" / f"{name}.jpg")
        if name in own:
            mask = load_label_png(voc / "SegmentationClass" / f"{name}.png", expect_size=size)
        else:
            path = sbd / "cls" / f"{name}.mat"
            mask = read_sbd_mask(path)
            if mask.shape != size:
                raise DataError(path, f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {size[1]}x{size[0]}")
        save_label_png(out / f"{name}.png", mask, palette=False)
    listing = lists / f"{TRAIN_AUG}.txt"
    write_text(listing, "".join(f"{n}\n" for n in names))
    return {"masks": len(masks), "from_voc": len(own), "from_sbd": len(masks) - len(own), "train_aug": len(names),
            "folder": str(out), "list": str(listing)}
