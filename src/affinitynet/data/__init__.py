"""Datasets: VOC layout (and the synthetic set, written in it), COCO 2014, a custom folder with a tag CSV."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import DataConfig
from ..errors import ConfigError
from .base import SegDataset
from .coco import COCODataset
from .folder import FolderDataset
from .voc import VOC_CLASSES, VOCDataset


class SyntheticDataset(VOCDataset):
    """The built-in synthetic set: a VOC-layout folder with its own ``classes.txt``."""


def synthetic_params(cfg: DataConfig) -> dict:
    """The synthetic set's generation parameters (as its marker file records them; the default style unnamed)."""
    params = dataclasses.asdict(cfg.synthetic)
    if params.get("style") == "parts":
        del params["style"]
    return params


def ensure_synthetic(cfg: DataConfig) -> Path:
    """Generate the synthetic set into ``cfg.root`` unless a complete one (marker file present) is there."""
    from .synthetic import generate, read_marker

    root = Path(cfg.root)
    params = synthetic_params(cfg)
    marker = read_marker(root)
    if marker is None:
        return generate(root, **params)
    if marker.get("params") != params:
        raise ConfigError(f"{root} holds a synthetic set made with {marker.get('params')}, but the config asks "
                          f"for {params}: point data.root elsewhere or delete that folder")
    return root


def _voc(cfg: DataConfig, split: str) -> SegDataset:
    return VOCDataset(cfg.root, split, mask_dir=cfg.voc.mask_dir, labels_from=cfg.voc.labels_from)


def _synthetic(cfg: DataConfig, split: str) -> SegDataset:
    ensure_synthetic(cfg)
    return SyntheticDataset(cfg.root, split, mask_dir="SegmentationClass", labels_from="auto")


def _coco(cfg: DataConfig, split: str) -> SegDataset:
    return COCODataset(cfg.root, split, image_dir=cfg.coco.image_dir, annotation_file=cfg.coco.annotation_file)


def _folder(cfg: DataConfig, split: str) -> SegDataset:
    f = cfg.folder
    pattern = f.csv or "{split}.csv"
    return FolderDataset(cfg.root, pattern.format(split=split), image_dir=f.image_dir.format(split=split),
                         classes_file=f.classes_file, mask_dir=f.mask_dir,
                         class_csvs=tuple(pattern.format(split=s) for s in (cfg.train_split, cfg.val_split)))


DATASETS = {"synthetic": _synthetic, "voc": _voc, "coco": _coco, "folder": _folder}


def build_dataset(cfg: DataConfig, split: str) -> SegDataset:
    """The dataset of ``split`` (a split name or list file) described by ``cfg``."""
    try:
        make = DATASETS[cfg.kind]
    except KeyError:
        raise ConfigError(f"unknown data.kind '{cfg.kind}' (valid: {', '.join(DATASETS)})") from None
    return make(cfg, split)


__all__ = ["SegDataset", "VOCDataset", "SyntheticDataset", "COCODataset", "FolderDataset", "VOC_CLASSES",
           "DATASETS", "build_dataset", "ensure_synthetic", "synthetic_params"]
