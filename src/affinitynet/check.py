"""``affinitynet check``: validate a config and its dataset before a long run, reporting every problem at once.

Config values are checked against what the stages need (sizes, epochs, backbone names, weight files,
device); the dataset is opened split by split and every image is decoded, its tags read and its mask
checked (present where the split has masks, image size, palette mode, class ids). Nothing is written.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .errors import AffinityNetError, DataError

MIN_CROP = 16
MIN_SYNTH_SIZE = 48


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``where`` is a file or a config key, ``problem`` says what is wrong with it."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class CheckReport:
    """What ``run_check`` found: images checked per split, problems, and notes that are not problems."""

    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, where, problem: str) -> None:
        """Record a problem once (the same message from two checks is kept once)."""
        p = Problem(str(where), problem)
        if p not in self.problems:
            self.problems.append(p)

    def add_error(self, err: AffinityNetError) -> None:
        """Record an exception raised by the readers (DataError names its file)."""
        if isinstance(err, DataError):
            self.add(err.path, err.problem)
        else:
            where, _, what = str(err).partition(": ")
            self.add(where, what) if what else self.add("config", str(err))

    def summary(self) -> str:
        """``checked N images in train, M in val: K problems``."""
        parts = [f"{n} images in {split}" if i == 0 else f"{n} in {split}"
                 for i, (split, n) in enumerate(self.counts.items())]
        k = len(self.problems)
        return f"checked {', '.join(parts) or 'no images'}: {k} problem{'' if k == 1 else 's'}"


# ----------------------------------------------------------------------------- config

def _at_least(report: CheckReport, key: str, value, low, what: str = "") -> None:
    if value < low:
        report.add(key, f"must be at least {low}{what}, got {value}")


def _positive(report: CheckReport, key: str, value) -> None:
    if not value > 0:
        report.add(key, f"must be positive, got {value}")


def _check_weights(report: CheckReport, key: str, path: str, backbone: str) -> None:
    """A ``pretrained`` file: present, readable as a state dict, and for the configured backbone."""
    from .models import guess_backbone, read_state_dict

    if not path or (key == "segmentation.pretrained" and path == "classifier"):  # this run's classifier
        return
    if not Path(path).is_file():
        report.add(path, f"pretrained weights not found ({key})")
        return
    try:
        state = read_state_dict(path)
    except DataError as e:
        report.add(e.path, f"{e.problem} ({key})")
        return
    theirs = guess_backbone(state.keys())
    if theirs is not None and theirs != backbone:
        report.add(path, f"weights are for backbone {theirs}, {key.rsplit('.', 1)[0]}.backbone is {backbone}")


def _check_network(report: CheckReport, name: str, sec, *, resize: bool) -> None:
    from .models import BACKBONES

    if sec.backbone not in BACKBONES:
        report.add(f"{name}.backbone", f"unknown backbone '{sec.backbone}' (valid: {', '.join(BACKBONES)})")
    else:
        _check_weights(report, f"{name}.pretrained", sec.pretrained, sec.backbone)
    if sec.output_stride not in (8, 16):
        report.add(f"{name}.output_stride", f"must be 8 or 16, got {sec.output_stride}")
    _at_least(report, f"{name}.epochs", sec.epochs, 1)
    _at_least(report, f"{name}.batch_size", sec.batch_size, 1)
    _at_least(report, f"{name}.crop_size", sec.crop_size, MIN_CROP, " pixels")
    _positive(report, f"{name}.lr", sec.lr)
    if sec.weight_decay < 0:
        report.add(f"{name}.weight_decay", f"must not be negative, got {sec.weight_decay}")
    if not 0 <= sec.momentum < 1:
        report.add(f"{name}.momentum", f"must lie in [0, 1), got {sec.momentum}")
    if sec.poly_power < 0:
        report.add(f"{name}.poly_power", f"must not be negative, got {sec.poly_power}")
    if sec.color_jitter < 0:
        report.add(f"{name}.color_jitter", f"must not be negative, got {sec.color_jitter}")
    if resize:
        r = sec.resize_long
        if len(r) != 2 or not MIN_CROP <= r[0] <= r[1]:
            report.add(f"{name}.resize_long", f"must be [low, high] with {MIN_CROP} <= low <= high, got {r}")


def _check_scales(report: CheckReport, key: str, scales) -> None:
    if not scales or any(not s > 0 for s in scales):
        report.add(key, f"must be a non-empty list of positive scales, got {scales}")


def check_config(cfg: Config, report: CheckReport | None = None) -> CheckReport:
    """Check every config value that a stage would reject late or that makes no sense; adds to ``report``."""
    from .data import DATASETS
    from .data.voc import LABEL_SOURCES
    from .dist import resolve_device
    from .models import HEADS

    report = report or CheckReport()
    d = cfg.data
    if d.kind not in DATASETS:
        report.add("data.kind", f"unknown dataset kind '{d.kind}' (valid: {', '.join(DATASETS)})")
    if d.labels_from not in LABEL_SOURCES:
        report.add("data.labels_from", f"must be one of {', '.join(LABEL_SOURCES)}, got '{d.labels_from}'")
    if d.kind == "synthetic":
        from .data.synthetic import PATTERNS

        _at_least(report, "data.synth_train", d.synth_train, 1)
        _at_least(report, "data.synth_val", d.synth_val, 1)
        _at_least(report, "data.synth_size", d.synth_size, MIN_SYNTH_SIZE, " pixels")
        if not 1 <= d.synth_classes <= len(PATTERNS):
            report.add("data.synth_classes", f"the synthetic set has 1 to {len(PATTERNS)} classes, "
                                             f"got {d.synth_classes}")

    _check_network(report, "cam", cfg.cam, resize=True)
    _check_scales(report, "cam.scales", cfg.cam.scales)
    _check_network(report, "affinitynet", cfg.affinitynet, resize=True)
    _at_least(report, "affinitynet.radius", cfg.affinitynet.radius, 1)
    _check_network(report, "segmentation", cfg.segmentation, resize=False)
    s = cfg.segmentation
    if s.head not in HEADS:
        report.add("segmentation.head", f"unknown segmentation head '{s.head}' (valid: {', '.join(HEADS)})")
    if s.labels not in ("pseudo", "gt") and not Path(s.labels).is_dir():
        report.add("segmentation.labels", f"must be pseudo, gt or a folder of label PNGs; {s.labels} is not a folder")
    r = s.scale_range
    if len(r) != 2 or not 0 < r[0] <= r[1]:
        report.add("segmentation.scale_range", f"must be [low, high] with 0 < low <= high, got {r}")
    _check_scales(report, "segmentation.test_scales", s.test_scales)

    a = cfg.affinity_labels
    _positive(report, "affinity_labels.alpha_low", a.alpha_low)
    if not a.alpha_high > a.alpha_low:
        report.add("affinity_labels.alpha_high", f"must be above alpha_low ({a.alpha_low}) so that confident "
                                                 f"background is stricter than confident foreground, got {a.alpha_high}")
    _at_least(report, "affinity_labels.workers", a.workers, 1)
    if a.crf:
        _at_least(report, "affinity_labels.crf_iters", a.crf_iters, 1)
    if a.crf or cfg.random_walk.crf or s.crf:
        from .ops.crf import _densecrf

        try:
            _densecrf()
        except AffinityNetError as e:
            report.add("crf", str(e))

    w = cfg.random_walk
    _positive(report, "random_walk.alpha", w.alpha)
    _positive(report, "random_walk.beta", w.beta)
    _at_least(report, "random_walk.logt", w.logt, 0)
    _at_least(report, "random_walk.radius", w.radius, 1)
    _at_least(report, "random_walk.workers", w.workers, 1)
    for key in ("cam.max_long_side", "random_walk.max_long_side", "segmentation.max_long_side",
                "segmentation.test_max_long_side"):
        section, name = key.split(".")
        bound = getattr(cfg.section(section), name)
        if bound != 0 and bound < MIN_CROP:
            report.add(key, f"must be 0 (no bound) or at least {MIN_CROP} pixels, got {bound}")

    e = cfg.eval
    if not 0 < e.cam_bg_threshold < 1:
        report.add("eval.cam_bg_threshold", f"must lie in (0, 1), got {e.cam_bg_threshold}")
    if any(not 0 < t < 1 for t in e.cam_sweep):
        report.add("eval.cam_sweep", f"thresholds must lie in (0, 1), got {e.cam_sweep}")
    _at_least(report, "eval.report_images", e.report_images, 0)

    rt = cfg.runtime
    try:
        resolve_device(rt.device)
    except AffinityNetError as err:
        report.add("runtime.device", str(err).split(": ", 1)[-1])
    _at_least(report, "runtime.num_workers", rt.num_workers, 0)
    _at_least(report, "runtime.threads", rt.threads, 0)
    _at_least(report, "runtime.log_every", rt.log_every, 0)
    return report


# ----------------------------------------------------------------------------- data

def check_split(ds, report: CheckReport, *, progress=None, desc: str = "check") -> int:
    """Decode every image of ``ds``, read its tags and check its mask; adds problems; returns images checked."""
    it = progress(ds.names, desc=desc) if progress else ds.names
    mask_root = getattr(ds, "mask_root", None)
    for name in it:
        for step in (ds.load_image, ds.load_labels):
            try:
                step(name)
            except DataError as e:
                report.add(e.path, e.problem)
        if not ds.has_masks:
            continue
        path = ds.mask_path(name)
        if path is not None and not Path(path).is_file():
            report.add(path, f"mask missing (the split has masks in {mask_root})")
            continue
        try:
            ds.load_mask(name)
        except DataError as e:
            report.add(e.path, e.problem)
    return len(ds.names)


def _open_voc(d, split: str, report: CheckReport, tmp_dir: Path):
    """A VOC-layout split; listed images whose file is missing are reported each and left out."""
    from .data.voc import VOCDataset, find_voc_root, read_split_list

    mask_dir = "SegmentationClass" if d.kind == "synthetic" else d.mask_dir
    root = find_voc_root(d.root)
    split_file = VOCDataset._split_file(root, split)
    names = read_split_list(split_file)
    present = []
    for name in names:
        path = root / "JPEGImages" / f"{name}.jpg"
        if path.is_file():
            present.append(name)
        else:
            report.add(path, f"image file not found (listed in {split_file})")
    if not present:
        return None
    listing = split_file
    if len(present) < len(names):
        listing = tmp_dir / f"{len(list(tmp_dir.iterdir()))}.txt"
        listing.write_text("".join(n + "\n" for n in present), encoding="utf-8")
    return VOCDataset(root, str(listing), mask_dir=mask_dir, labels_from=d.labels_from)


def check_data(cfg: Config, report: CheckReport | None = None, *, progress=None) -> CheckReport:
    """Open the train and val splits and check every image, tag list and mask; adds to ``report``."""
    from .data import DATASETS, build_dataset
    from .data.synthetic import read_marker

    report = report or CheckReport()
    d = cfg.data
    if d.kind not in DATASETS:
        return report  # reported by check_config
    root = Path(d.root)
    params = {"train": d.synth_train, "val": d.synth_val, "size": d.synth_size,
              "classes": d.synth_classes, "seed": d.synth_seed}
    if d.kind == "synthetic":
        try:
            marker = read_marker(root)
        except DataError as e:
            report.add(e.path, e.problem)
            return report
        if marker is None:
            report.notes.append(f"{root}: no synthetic set yet; 'affinitynet run' generates it there")
            return report
        if marker.get("params") != params:
            report.add(root, f"holds a synthetic set made with {marker.get('params')}, but the config asks for "
                             f"{params}: point data.root elsewhere or delete that folder")
            return report
    elif not root.exists():
        report.add(root, "dataset root not found (data.root)")
        return report
    splits = {"train": d.train_split, "val": d.val_split}
    with tempfile.TemporaryDirectory(prefix="affinitynet-check-") as tmp:
        for label, split in splits.items():
            try:
                if d.kind in ("voc", "synthetic"):
                    ds = _open_voc(d, split, report, Path(tmp))
                else:
                    ds = build_dataset(d, split)
            except AffinityNetError as e:
                report.add_error(e)
                ds = None
            key = label if split == label else f"{label} ({split})"
            report.counts[key] = 0 if ds is None else check_split(ds, report, progress=progress,
                                                                   desc=f"check {label}")
    train_n = next(iter(report.counts.values()), 0)
    if train_n:
        for sec in ("cam", "affinitynet", "segmentation"):
            bs = cfg.section(sec).batch_size
            if bs > train_n:
                report.add(f"{sec}.batch_size", f"{bs} is more than the {train_n} training images: "
                                                 f"training would have no full batch")
    return report


def run_check(cfg: Config, *, progress=None) -> CheckReport:
    """Config checks, then data checks: every problem found, not just the first."""
    report = check_config(cfg)
    return check_data(cfg, report, progress=progress)


def check_command(cfg: Config) -> int:
    """``affinitynet check``: print a summary and one line per problem; 0 when clean, 1 when problems were found."""
    from .runs import progress

    def bar(items, desc):
        return progress(items, desc=desc, enabled=cfg.runtime.progress)

    report = run_check(cfg, progress=bar)
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary())
    for p in report.problems:
        print(f"  {p}")
    sys.stdout.flush()
    return 1 if report.problems else 0
