"""The config's rules, stated once: ``affinitynet check`` reports them all, the runner refuses to start on any."""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import AffinityNetError, ConfigError, DataError

MIN_CROP = 16
MIN_SYNTH_SIZE = 48
# The oldest PyTorch that runs every stage, also pyproject.toml's lower bound: torch.amp.GradScaler(device)
# (accel.py, built by every training stage) is 2.3's; the rest (LRScheduler, torch.load(weights_only=...),
# sparse CSR products, antialiased interpolation, torch.cuda.OutOfMemoryError) is older.
MIN_TORCH = (2, 3)


def torch_problem(version: str | None = None) -> str:
    """Why the installed torch (or ``version``) is too old for this package ("" when it is not)."""
    import re

    import torch

    version = torch.__version__ if version is None else version
    found = re.match(r"(\d+)\.(\d+)", version)
    if found and tuple(int(g) for g in found.groups()) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        return f"torch {version} is older than the {need} this package needs (torch.amp.GradScaler); " \
               f"pip install 'torch>={need}'"
    return ""


class Problems(list):
    """(where, problem) pairs: ``where`` a config key or a file; a repeated pair is kept once."""

    def add(self, where, problem: str) -> None:
        item = (str(where), problem)
        if item not in self:
            self.append(item)


def _at_least(report: Problems, key: str, value, low, what: str = "") -> None:
    if value < low:
        report.add(key, f"must be at least {low}{what}, got {value}")


def _positive(report: Problems, key: str, value) -> None:
    if not value > 0:
        report.add(key, f"must be positive, got {value}")


def _check_weights(report: Problems, key: str, path: str, backbone: str) -> None:
    """A ``pretrained`` file: present, readable as a state dict, and for the configured backbone."""
    from .models import guess_backbone, read_state_dict

    from .models.pretrained import IMAGENET, IMAGENET_URLS, LITE_WHEELS, resolve_pretrained

    if not path or (key in ("segmentation.pretrained", "boundary.pretrained") and path == "classifier"):  # this run's
        return
    if path in LITE_WHEELS:
        try:
            path = resolve_pretrained(path, backbone)
        except ConfigError as e:
            report.add(key, str(e))
            return
    if path == IMAGENET:
        if backbone not in IMAGENET_URLS:
            report.add(key, f"imagenet is downloadable for {', '.join(IMAGENET_URLS)}, not {backbone}: "
                            f"give a weights file (docs/weights.md)")
        return
    if not Path(path).is_file():
        report.add(path, f"weights file not found ({key})")
        return
    try:
        state = read_state_dict(path)
    except DataError as e:
        report.add(e.path, f"{e.problem} ({key})")
        return
    theirs = guess_backbone(state.keys())
    if theirs is not None and backbone not in theirs.split(" or "):
        report.add(path, f"weights are for backbone {theirs}, {key.rsplit('.', 1)[0]}.backbone is {backbone}")


def _check_network(report: Problems, name: str, sec, *, resize: bool, files: bool) -> None:
    from .models import BACKBONES

    if sec.backbone not in BACKBONES:
        report.add(f"{name}.backbone", f"unknown backbone '{sec.backbone}' (valid: {', '.join(BACKBONES)})")
    else:
        if files:
            _check_weights(report, f"{name}.pretrained", sec.pretrained, sec.backbone)
            if getattr(sec, "checkpoint", ""):
                _check_weights(report, f"{name}.checkpoint", sec.checkpoint, sec.backbone)
    strides = (8, 16, 32) if sec.backbone.startswith("efficientnet_lite") else (8, 16)
    if sec.output_stride not in strides:
        report.add(f"{name}.output_stride", f"must be {' or '.join(map(str, strides))} for {sec.backbone}, "
                                            f"got {sec.output_stride}")
    _at_least(report, f"{name}.epochs", sec.epochs, 1)
    _at_least(report, f"{name}.batch_size", sec.batch_size, 1)
    _at_least(report, f"{name}.accumulation", sec.accumulation, 1)
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
        if r and (len(r) != 2 or not MIN_CROP <= r[0] <= r[1]):
            report.add(f"{name}.resize_long", f"must be [] (no rescaling) or [low, high] with {MIN_CROP} <= low <= "
                                              f"high, got {r}")


def _check_scales(report: Problems, key: str, scales) -> None:
    if not scales or any(not s > 0 for s in scales):
        report.add(key, f"must be a non-empty list of positive scales, got {scales}")


def _check_cam_import(report: Problems, cfg: Config, files: bool) -> None:
    """``cam.method`` import_irn / import_psa: a folder of CAM files, and no classifier asked of it."""
    from .cam_import import FORMATS

    c = cfg.cam
    if c.method not in FORMATS:
        return
    if not c.import_dir:
        report.add("cam.import_dir", f"cam.method {c.method} reads the CAM files of this folder; it is empty")
    elif files and not Path(c.import_dir).expanduser().is_dir():
        report.add(c.import_dir, "cam.import_dir: folder not found")
    if cfg.segmentation.pretrained == "classifier":
        report.add("segmentation.pretrained", f"'classifier' needs this run's classifier, which cam.method "
                                              f"{c.method} does not train; give a weights file or leave it empty")


def _check_boundary(report: Problems, cfg: Config, files: bool) -> None:
    """The boundary network (``boundary``), its relation labels (``ir_labels``) and the walk's background."""
    b, r, w = cfg.boundary, cfg.ir_labels, cfg.random_walk
    _check_network(report, "boundary", b, resize=True, files=files)
    _at_least(report, "boundary.radius", b.radius, 1)
    if not b.dilated and not b.backbone.startswith("resnet"):
        report.add("boundary.dilated", f"false is for the ResNet backbones, not {b.backbone}")
    if len(b.scale_range) not in (0, 2) or (b.scale_range and not 0 < b.scale_range[0] <= b.scale_range[1]):
        report.add("boundary.scale_range", f"must be [] or [low, high] with 0 < low <= high, got {b.scale_range}")
    if not 0 <= r.bg_threshold <= r.fg_threshold:
        report.add("ir_labels.bg_threshold", f"must lie in [0, fg_threshold ({r.fg_threshold})], got {r.bg_threshold}")
    if not 0 < r.crf_gt_prob < 1:
        report.add("ir_labels.crf_gt_prob", f"must lie in (0, 1), got {r.crf_gt_prob}")
    _at_least(report, "ir_labels.crf_iters", r.crf_iters, 1)
    _at_least(report, "ir_labels.workers", r.workers, 1)
    _positive(report, "random_walk.bg_threshold", w.bg_threshold)
    if b.pretrained == "classifier" and w.affinity == "boundary":
        from .cam_import import FORMATS

        if cfg.cam.method in FORMATS:
            report.add("boundary.pretrained", f"'classifier' needs this run's classifier, which cam.method "
                                              f"{cfg.cam.method} does not train; give a weights file")
        if b.backbone != cfg.cam.backbone:
            report.add("boundary.backbone", f"boundary.pretrained=classifier needs the classifier's backbone "
                                            f"({cfg.cam.backbone}), got {b.backbone}")


def batch_split_problems(cfg: Config, processes: int, report: Problems | None = None) -> Problems:
    """Each trained network's ``batch_size`` that does not split evenly over ``processes`` x its ``accumulation``."""
    from .global_batch import batch_split_problem
    from .stages import trained_sections

    report = report if report is not None else Problems()
    for name in trained_sections(cfg):
        sec = cfg.section(name)
        if sec.accumulation >= 1 and sec.batch_size >= 1:  # else reported on their own
            problem = batch_split_problem(sec.batch_size, processes, sec.accumulation, name)
            if problem:
                report.add(f"{name}.batch_size", problem)
    return report


def launched_processes() -> int:
    """The job's number of processes as the launcher (torchrun, SLURM's srun under torchrun) states it: WORLD_SIZE, or 1."""
    from .dist import _env_int

    return max(1, _env_int("WORLD_SIZE", 1))


def config_problems(cfg: Config, report: Problems | None = None, *, files: bool = True,
                    processes: int | None = None) -> Problems:
    """Every config value that a stage would reject late or that makes no sense, each as (key, problem).

    The runner calls it before the first stage (``files=False``); ``affinitynet check`` also looks at
    the files and the environment the config names (weights, label folders, the CRF binding).
    ``processes`` (default: the launcher's WORLD_SIZE, else 1) is what each trained ``batch_size`` must split over.
    """
    from .data import DATASETS
    from .data.voc import LABEL_SOURCES
    from .dist import resolve_device
    from .models import HEADS

    report = report if report is not None else Problems()
    old_torch = torch_problem()
    if old_torch:
        report.add("torch", old_torch)
    d = cfg.data
    if d.kind not in DATASETS:
        report.add("data.kind", f"unknown dataset kind '{d.kind}' (valid: {', '.join(DATASETS)})")
    if d.voc.labels_from not in LABEL_SOURCES:
        report.add("data.voc.labels_from", f"must be one of {', '.join(LABEL_SOURCES)}, got '{d.voc.labels_from}'")
    if d.kind == "synthetic":
        from .data.synthetic import PATTERNS, STYLES

        syn = d.synthetic
        _at_least(report, "data.synthetic.train", syn.train, 1)
        _at_least(report, "data.synthetic.val", syn.val, 1)
        _at_least(report, "data.synthetic.size", syn.size, MIN_SYNTH_SIZE, " pixels")
        if not 1 <= syn.classes <= len(PATTERNS):
            report.add("data.synthetic.classes", f"the synthetic set has 1 to {len(PATTERNS)} classes, "
                                                 f"got {syn.classes}")
        if syn.style not in STYLES:
            report.add("data.synthetic.style", f"unknown style '{syn.style}' (valid: {', '.join(STYLES)})")

    _check_network(report, "cam", cfg.cam, resize=True, files=files)
    _check_scales(report, "cam.scales", cfg.cam.scales)
    _check_cam_import(report, cfg, files)
    _check_network(report, "affinitynet", cfg.affinitynet, resize=True, files=files)
    _check_boundary(report, cfg, files)
    _at_least(report, "affinitynet.radius", cfg.affinitynet.radius, 1)
    _check_network(report, "segmentation", cfg.segmentation, resize=False, files=files)
    s = cfg.segmentation
    if s.head not in HEADS:
        report.add("segmentation.head", f"unknown segmentation head '{s.head}' (valid: {', '.join(HEADS)})")
    if not 0 <= s.head_dropout < 1:
        report.add("segmentation.head_dropout", f"must be in [0, 1), got {s.head_dropout}")
    if files and s.labels not in ("pseudo", "gt") and not Path(s.labels).is_dir():
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
    if files and (a.crf or cfg.random_walk.crf or s.crf or cfg.ir_labels.crf):
        from .ops.crf import _densecrf

        try:
            _densecrf()
        except AffinityNetError as e:
            report.add("crf", str(e))

    w = cfg.random_walk
    _positive(report, "random_walk.alpha", w.alpha)
    if w.choose_alpha and w.background == "power":  # the threshold background uses no alpha: nothing to choose
        if not w.alpha_candidates:
            report.add("random_walk.alpha_candidates", "choose_alpha needs at least one candidate")
        for a in w.alpha_candidates:
            _positive(report, "random_walk.alpha_candidates", a)
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
    if files:
        try:
            resolve_device(rt.device)
        except AffinityNetError as err:
            report.add("runtime.device", str(err).split(": ", 1)[-1])
    _at_least(report, "runtime.num_workers", rt.num_workers, 0)
    _at_least(report, "runtime.crf_workers", rt.crf_workers, 0)
    _at_least(report, "runtime.threads", rt.threads, 0)
    _at_least(report, "runtime.log_every", rt.log_every, 0)
    batch_split_problems(cfg, launched_processes() if processes is None else processes, report)
    return report


def require_valid(cfg: Config) -> None:
    """ConfigError listing every broken config value (files not opened), so no stage starts on a bad config."""
    found = config_problems(cfg, files=False)
    if found:
        raise ConfigError("; ".join(f"{where}: {problem}" for where, problem in found))
