"""The run directory's layout: every file a run holds is named here, and everything else asks.

RUN_DIR/
  config.yaml  manifest.json  log.txt  metrics.json  report.html  .affinitynet.lock
  classifier/        train_cam: final.pt (or a link to a given checkpoint + source.json), last.pt,
                     history.jsonl, metrics.json
  cam/               make_cam: {name}.npz, overlays/{name}.png, metrics.json
  affinity_labels/   make_affinity_labels: {name}.png (and {name}.npz score stacks), metrics.json
  affinitynet/       train_affinitynet: like classifier/
  ir_labels/         make_ir_labels: {name}.png inter-pixel relation labels, metrics.json
  boundary/          train_boundary: like classifier/ (the class boundary network)
  random_walk/       random_walk: {name}.png pseudo labels, scores/{name}.npz propagated scores on the grid,
                     affinity/{name}.npz pair affinities (random_walk.cache_affinity), metrics.json
  deeplab/           train_segmentation: like classifier/
  segmentation/      segment: {name}.png predictions of the evaluation split, preview/{name}.png
                     (the report's training images), crf/{name}.png (eval.crf_rows), metrics.json
  sweeps/            affinitynet sweep: {stage}_{param}.json and .png (mIoU per value)

Folder names are the stages' concept nouns; the metrics key of a folder is its name
(``metrics.json`` holds ``cam``, ``random_walk``, ``segmentation``, ...).
"""
from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
MANIFEST = "manifest.json"
LOG = "log.txt"
METRICS = "metrics.json"
REPORT = "report.html"
LOCK = ".affinitynet.lock"

# stage name -> its folder (= its metrics key)
FOLDERS = {
    "train_cam": "classifier",
    "make_cam": "cam",
    "make_affinity_labels": "affinity_labels",
    "train_affinitynet": "affinitynet",
    "make_ir_labels": "ir_labels",
    "train_boundary": "boundary",
    "random_walk": "random_walk",
    "train_segmentation": "deeplab",
    "segment": "segmentation",
}

# the stages that serve one affinity source (random_walk.affinity); with the other source they have nothing to do
SOURCE_STAGES = {
    "affinitynet": ("make_affinity_labels", "train_affinitynet"),
    "boundary": ("make_ir_labels", "train_boundary"),
}


def idle_stages(affinity: str) -> tuple[str, ...]:
    """The stages of every affinity source but ``affinity``: a run that walks with ``affinity`` skips them."""
    return tuple(stage for source, stages in SOURCE_STAGES.items() if source != affinity for stage in stages)


class RunLayout:
    """Paths inside one run directory."""

    def __init__(self, root):
        self.root = Path(root)

    def __truediv__(self, rel) -> Path:
        return self.root / rel

    # run-level files
    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def log(self) -> Path:
        return self.root / LOG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    # per stage
    def folder(self, key: str) -> Path:
        """A stage's folder, by stage name or by folder/metrics key."""
        return self.root / FOLDERS.get(key, key)

    def stage_metrics(self, key: str) -> Path:
        """``{folder}/metrics.json``: the scores a stage wrote about its own output."""
        return self.folder(key) / METRICS

    def network(self, key: str) -> Path:
        """``{folder}/final.pt``: a training stage's network (``classifier``, ``affinitynet``, ``boundary``, ...)."""
        return self.folder(key) / "final.pt"

    def history(self, key: str) -> Path:
        """``{folder}/history.jsonl``: a training stage's per-epoch log."""
        return self.folder(key) / "history.jsonl"

    # per image
    def cam(self, name: str) -> Path:
        """``cam/{name}.npz``: keys (C',) int16 class ids, cams (C', H, W) float16 in [0, 1]."""
        return self.root / "cam" / f"{name}.npz"

    def cam_overlay(self, name: str) -> Path:
        return self.root / "cam" / "overlays" / f"{name}.png"

    def affinity_label(self, name: str) -> Path:
        """``affinity_labels/{name}.png``: confident class ids, 0 background, 255 unsure."""
        return self.root / "affinity_labels" / f"{name}.png"

    def affinity_scores(self, name: str) -> Path:
        """``affinity_labels/{name}.npz``: CRF score stacks la / ha (``grid_labels: scores``)."""
        return self.root / "affinity_labels" / f"{name}.npz"

    def ir_label(self, name: str) -> Path:
        """``ir_labels/{name}.png``: confident class ids, 0 background, 255 unsure (the boundary network's pairs)."""
        return self.root / "ir_labels" / f"{name}.png"

    def pseudo_label(self, name: str) -> Path:
        """``random_walk/{name}.png``: the pseudo label of a training image."""
        return self.root / "random_walk" / f"{name}.png"

    def walk_scores(self, name: str) -> Path:
        """``random_walk/scores/{name}.npz``: keys (C',), propagated scores (1 + C', h, w) on the walk's grid, sizes."""
        return self.root / "random_walk" / "scores" / f"{name}.npz"

    def walk_affinity(self, name: str) -> Path:
        """``random_walk/affinity/{name}.npz``: the pair affinities (P,) the walk used, and its grid."""
        return self.root / "random_walk" / "affinity" / f"{name}.npz"

    def walk_candidates(self, name: str) -> Path:
        """``random_walk/candidates/{name}.npz`` (``random_walk.choose_alpha``, until the walk finishes): every
        candidate alpha's walked background, the walked CAMs, and each candidate's border affinity."""
        return self.root / "random_walk" / "candidates" / f"{name}.npz"

    def prediction_crf(self, name: str) -> Path:
        """``segmentation/crf/{name}.png``: the segmentation label after a dense CRF (``eval.crf_rows``)."""
        return self.root / "segmentation" / "crf" / f"{name}.png"

    def sweep(self, stage: str, param: str, suffix: str = ".json") -> Path:
        """``sweeps/{stage}_{param}.json`` (or ``.png``): an ``affinitynet sweep`` result."""
        return self.root / "sweeps" / f"{stage}_{param}{suffix}"

    def prediction(self, name: str) -> Path:
        """``segmentation/{name}.png``: the segmentation network's label of an evaluation image."""
        return self.root / "segmentation" / f"{name}.png"

    def preview(self, name: str) -> Path:
        """``segmentation/preview/{name}.png``: its label of a training image shown in the report."""
        return self.root / "segmentation" / "preview" / f"{name}.png"
