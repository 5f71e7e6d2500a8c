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

from ..config import Config
from ..errors import AffinityNetError, DataError
from ..validate import config_problems


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


# ----------------------------------------------------------------------------- data

def check_split(ds, report: CheckReport, *, progress=None, desc: str = "check") -> int:
    """Decode every image of ``ds``, read its tags and check its mask; adds problems; returns images checked."""
    it = progress(ds.names, desc=desc) if progress else ds.names
    mask_root = getattr(ds, "mask_root", None)
    unmasked = 0
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
            unmasked += 1  # scores use the images that have masks
            continue
        try:
            ds.load_mask(name)
        except DataError as e:
            report.add(e.path, e.problem)
    if unmasked:
        have = len(ds.names) - unmasked
        report.notes.append(f"{mask_root}: {unmasked} of the {len(ds.names)} images of {desc.removeprefix('check ')} have no mask; scores use "
                            f"the {have} that have one" + ("" if have else " (none: nothing is scored)"))
    return len(ds.names)


def _open_voc(d, split: str, report: CheckReport, tmp_dir: Path):
    """A VOC-layout split; listed images whose file is missing are reported each and left out."""
    from ..data.voc import VOCDataset, find_voc_root, read_split_list

    mask_dir = "SegmentationClass" if d.kind == "synthetic" else d.voc.mask_dir
    root = find_voc_root(d.root)
    split_file = VOCDataset.split_file_of(root, split)
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
    labels_from = "auto" if d.kind == "synthetic" else d.voc.labels_from
    return VOCDataset(root, str(listing), mask_dir=mask_dir, labels_from=labels_from)


def check_data(cfg: Config, report: CheckReport | None = None, *, progress=None) -> CheckReport:
    """Open the train and val splits and check every image, tag list and mask; adds to ``report``."""
    from ..data import DATASETS, build_dataset, synthetic_params
    from ..data.synthetic import read_marker

    report = report or CheckReport()
    d = cfg.data
    if d.kind not in DATASETS:
        return report  # reported by the config rules
    root = Path(d.root)
    params = synthetic_params(d)
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


def run_check(cfg: Config, *, progress=None, processes: int | None = None) -> CheckReport:
    """Config checks, then data checks: every problem found, not just the first. ``processes``: what the run's
    batches must split over (default: the launcher's WORLD_SIZE, else 1)."""
    report = CheckReport()
    for where, problem in config_problems(cfg, files=True, processes=processes):
        report.add(where, problem)
    return check_data(cfg, report, progress=progress)


def check_command(cfg: Config, processes: int | None = None) -> int:
    """``affinitynet check``: print a summary and one line per problem; 0 when clean, 1 when problems were found."""
    from ..logs import progress

    def bar(items, desc):
        return progress(items, desc=desc, enabled=cfg.runtime.progress)

    report = run_check(cfg, progress=bar, processes=processes)
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary())
    for p in report.problems:
        print(f"  {p}")
    sys.stdout.flush()
    return 1 if report.problems else 0
