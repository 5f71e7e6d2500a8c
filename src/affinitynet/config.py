"""Typed run configuration: one dataclass per pipeline section, YAML presets, ``--set section.key=value`` overrides."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Which dataset, where it lives, which splits."""

    kind: str = "synthetic"  # synthetic | voc | coco | folder
    root: str = "data/synthetic"
    train_split: str = "train"  # split name or path to a list file (psa/irn train_aug.txt style)
    val_split: str = "val"
    mask_dir: str = "SegmentationClass"  # VOC: SegmentationClass, or SegmentationClassAug (SBD)
    labels_from: str = "auto"  # VOC image-level tags: auto (XML, else masks) | xml | masks
    csv: str = ""  # folder: CSV "image,labels" (relative to root); a {split} placeholder is filled in
    classes_file: str = ""  # folder: one class name per line (default: the sorted labels in the CSV)
    image_dir: str = ""  # folder/coco: image folder (relative to root); {split} is filled in
    annotation_file: str = ""  # coco: instances JSON (relative to root); {split} is filled in
    # built-in synthetic set (generated into `root` when kind=synthetic and it is absent)
    synth_train: int = 240
    synth_val: int = 60
    synth_size: int = 128
    synth_classes: int = 5
    synth_seed: int = 0


@dataclass
class CamConfig:
    """Classification network (train_cam) and class activation maps (make_cam)."""

    backbone: str = "tiny"  # see affinitynet.models.BACKBONES
    pretrained: str = ""  # local path to ImageNet (or reference) weights; empty: from scratch
    checkpoint: str = ""  # a trained classifier (ours, or the release's res38_cls.pth): train_cam uses it as is
    output_stride: int = 8
    epochs: int = 15
    batch_size: int = 16
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    crop_size: int = 448
    resize_long: list[int] = field(default_factory=lambda: [448, 768])
    resample: str = "bilinear"  # image resizing: bilinear | bicubic (uint8 image through PIL, as the release)
    color_jitter: float = 0.3  # brightness, contrast and saturation factors in [1 - s, 1 + s]
    hue: float = 0.0  # hue shift in [-h, h] of a full turn (the release: 0.1)
    crop_pad: str = "mean"  # crop padding: mean (0 after normalisation) | black (pixel 0, cropped before normalising)
    # make_cam (inference only: changing these does not retrain)
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True
    batch_scales: bool = True  # batch the flipped pair and share one forward per scale
    overlays: int = 8  # PNG overlays written for the first N images (0: none)
    max_long_side: int = 1000  # long side of the largest-scale input; larger images are shrunk first (0: no bound)


@dataclass
class AffinityLabelConfig:
    """Confident regions (make_affinity_labels)."""

    alpha_low: float = 4.0  # amplified background: what foreground still wins is confident
    alpha_high: float = 32.0  # suppressed background: what background still wins is confident
    crf: bool = True
    crf_iters: int = 10
    crf_gauss_sxy: float = 3.0
    crf_gauss_compat: float = 3.0
    crf_bilateral_sxy: float = 80.0
    crf_bilateral_srgb: float = 13.0
    crf_bilateral_compat: float = 10.0
    crf_unary: str = "normalized"  # -log of the scores normalised per pixel | clipped: of the raw scores (the release)
    grid_labels: str = "pixels"  # pixels: 8x8 vote of per-pixel labels | scores: argmax of 8x8-averaged CRF scores
    fg_threshold: float = 0.30  # CRF-free variant: CAM max above this is confident foreground
    bg_threshold: float = 0.05  # CRF-free variant: CAM max below this is confident background
    workers: int = 2  # worker processes (the CRF is CPU-bound)


@dataclass
class AffinityNetConfig:
    """AffinityNet training (train_affinitynet)."""

    backbone: str = "tiny"
    pretrained: str = ""  # ImageNet weights, never the classifier
    checkpoint: str = ""  # a trained AffinityNet (ours, or the release's res38_aff.pth): used as is, no training
    output_stride: int = 8
    radius: int = 5
    reference_pairs: bool = False  # train on the release's border-trimmed pair set
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    crop_size: int = 448
    resize_long: list[int] = field(default_factory=lambda: [448, 768])  # [] : no rescaling (the release)
    resample: str = "bilinear"  # bilinear | bicubic
    color_jitter: float = 0.3
    hue: float = 0.0
    crop_pad: str = "mean"  # mean | black (the release crops AffinityNet inputs before normalising)


@dataclass
class RandomWalkConfig:
    """Semantic propagation (random_walk)."""

    alpha: float = 16.0
    scale: float = 1.0  # image scale for AffinityNet and the walk (1.0 as in the paper)
    beta: float = 8.0
    logt: int = 8
    radius: int = 5
    reference_pairs: bool = False  # reproduce the reference code's border-trimmed pair set
    crf: bool = False  # dense CRF on the propagated scores
    workers: int = 1
    max_long_side: int = 1000  # long side of AffinityNet's input (after scale); larger images shrink (0: no bound)


@dataclass
class SegmentationConfig:
    """DeepLab-style network (train_segmentation, segment)."""

    backbone: str = "tiny"
    pretrained: str = ""  # a weights file, or "classifier": this run's trained classifier backbone
    head: str = "largefov"  # largefov | aspp
    head_rate: int = 12  # LargeFOV dilation (ASPP: rate/2, rate, 1.5 rate, 2 rate); 12 suits 40-60 cell feature maps
    output_stride: int = 8
    labels: str = "pseudo"  # pseudo (this run's random-walk labels) | gt (fully supervised upper bound) | a folder
    epochs: int = 20
    batch_size: int = 10
    lr: float = 0.001
    weight_decay: float = 5e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    crop_size: int = 321
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    max_long_side: int = 1000  # training images shrink so that the largest scale_range fits it (0: no bound)
    color_jitter: float = 0.0
    # segment (inference only)
    test_scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    test_flip: bool = True
    test_max_long_side: int = 1000  # long side of the largest test-scale input; larger images are shrunk (0: no bound)
    crf: bool = False
    split: str = "val"


@dataclass
class EvalConfig:
    """Evaluation of each stage's labels (evaluate)."""

    cam_bg_threshold: float = 0.2  # constant background score of the CAM labels' headline mIoU (the release: 0.2)
    score_split: str = ""  # score CAM / pseudo-label rows on this split's images (e.g. train while stages ran on train_aug)
    cam_sweep: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 13)])
    report_images: int = 6  # images shown side by side in report.html


@dataclass
class RuntimeConfig:
    """Where and how the run executes; changing these never invalidates finished stages."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    num_workers: int = 0  # DataLoader workers
    threads: int = 0  # torch intra-op threads (0: torch's default)
    progress: bool = True
    log_every: int = 20
    # throughput (affinitynet.accel); like the device, none changes results beyond floating-point rounding
    amp: bool = False  # mixed precision: float16 + loss scaling on CUDA, bfloat16 on the CPU; walk, CRF, losses in float32
    channels_last: bool = False  # NHWC memory format for the networks (faster on tensor-core GPUs)
    pin_memory: bool = True  # page-locked training batches on CUDA, copied without blocking
    prefetch_factor: int = 2  # batches each DataLoader worker prepares ahead (with num_workers > 0)
    step_sync: bool = True  # read the loss every step; false: every log_every steps only (no per-step device sync)
    batch_images: int = 1  # make_cam: up to this many images of one size per forward pass


@dataclass
class Config:
    """The whole run configuration; the resolved copy is saved as RUN_DIR/config.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    affinity_labels: AffinityLabelConfig = field(default_factory=AffinityLabelConfig)
    affinitynet: AffinityNetConfig = field(default_factory=AffinityNetConfig)
    random_walk: RandomWalkConfig = field(default_factory=RandomWalkConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    def section(self, name: str):
        """The dataclass of one section, by name."""
        return getattr(self, name)


SECTIONS = [f.name for f in dataclasses.fields(Config)]

# keys that take one of a few words
CHOICES = {
    "cam.resample": ("bilinear", "bicubic"),
    "cam.crop_pad": ("mean", "black"),
    "affinitynet.resample": ("bilinear", "bicubic"),
    "affinitynet.crop_pad": ("mean", "black"),
    "affinity_labels.crf_unary": ("normalized", "clipped"),
    "affinity_labels.grid_labels": ("pixels", "scores"),
}


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = _section_types()[section]
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotated type ``tp``; return it converted (int -> float, tuple -> list)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str, bool)) and not isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {item_tp.__name__}, got {value!r}")
        return [_coerce(v, item_tp, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _apply(cfg: Config, section: str, key: str, value, where: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"{where}: unknown section '{section}' (valid: {', '.join(SECTIONS)})")
    fields = _section_fields(section)
    if key not in fields:
        raise ConfigError(f"{where}: unknown key '{section}.{key}' (valid keys of {section}: {', '.join(fields)})")
    _, tp = fields[key]
    value = _coerce(value, tp, f"{where}: {section}.{key}")
    allowed = CHOICES.get(f"{section}.{key}")
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{where}: {section}.{key}: expected one of {', '.join(allowed)}, got {value!r}")
    setattr(cfg.section(section), key, value)


def from_dict(d: dict, where: str = "config") -> Config:
    """Build a Config from a nested dict, checking every key and type."""
    cfg = Config()
    if d is None:
        return cfg
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section '{section}' (valid: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{section}' must be a mapping of keys")
        for key, value in values.items():
            _apply(cfg, section, key, value, where)
    return cfg


def load(path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset and apply ``section.key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    cfg = from_dict(d, where=str(path))
    apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply ``section.key=value`` strings in order; a bad key or value is a ConfigError listing valid keys."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _apply(cfg, section.strip(), key.strip(), value, f"--set {item}")
    return cfg


def dump(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def subset_hash(cfg: Config, sections: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str:
    """sha256 over the named sections (or ``section.key`` entries), minus ``exclude``; 16 hex digits."""
    d = cfg.to_dict()
    picked: dict = {}
    for s in sections:
        if "." in s:
            sec, key = s.split(".", 1)
            picked.setdefault(sec, {})[key] = d[sec][key]
        else:
            picked[s] = dict(d[s])
    for e in exclude:
        sec, key = e.split(".", 1)
        picked.get(sec, {}).pop(key, None)
    blob = json.dumps(picked, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
