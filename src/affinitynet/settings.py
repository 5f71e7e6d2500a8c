"""The run's settings as typed dataclasses, one per pipeline section; ``affinitynet.config`` reads and writes them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class VocOptions:
    """``data.kind: voc`` (VOC 2012 layout, SBD's SegmentationClassAug)."""

    mask_dir: str = "SegmentationClass"  # SegmentationClass, SegmentationClassAug ('affinitynet data voc-aug'), "": none
    labels_from: str = "auto"  # image-level tags: auto (XML, else masks) | xml | masks


@dataclass
class CocoOptions:
    """``data.kind: coco`` (MS-COCO 2014 instances files)."""

    image_dir: str = ""  # image folder (relative to root; default {split}); {split} is filled in
    annotation_file: str = ""  # instances JSON (relative to root); {split} is filled in


@dataclass
class FolderOptions:
    """``data.kind: folder`` (a folder of images and a tag CSV)."""

    csv: str = ""  # CSV "image,labels" (relative to root; default {split}.csv); {split} is filled in
    classes_file: str = ""  # one class name per line (default: the sorted labels in the CSVs)
    image_dir: str = ""  # image folder (relative to root); {split} is filled in
    mask_dir: str = "SegmentationClass"  # masks for evaluation (relative to root; an absent folder: no masks)


@dataclass
class SyntheticOptions:
    """``data.kind: synthetic`` (the built-in set, generated into ``data.root`` when absent)."""

    train: int = 240
    val: int = 60
    size: int = 128
    classes: int = 5
    seed: int = 0
    style: str = "parts"  # parts: the class is told by a patch on the body | shapes: by body shape + a small mark


@dataclass
class DataConfig:
    """Which dataset, where it lives, which splits; each kind's own keys in its sub-section."""

    kind: str = "synthetic"  # synthetic | voc | coco | folder
    root: str = "data/synthetic"
    train_split: str = "train"  # split name or path to a list file (psa/irn train_aug.txt style)
    val_split: str = "val"
    voc: VocOptions = field(default_factory=VocOptions)
    coco: CocoOptions = field(default_factory=CocoOptions)
    folder: FolderOptions = field(default_factory=FolderOptions)
    synthetic: SyntheticOptions = field(default_factory=SyntheticOptions)


@dataclass
class CamConfig:
    """Classification network (train_cam) and class activation maps (make_cam)."""

    backbone: str = "tiny"  # see affinitynet.models.BACKBONES
    pretrained: str = ""  # local path to ImageNet (or reference) weights; empty: from scratch
    checkpoint: str = ""  # a trained classifier (ours, or the release's res38_cls.pth): train_cam uses it as is
    output_stride: int = 8
    epochs: int = 15
    batch_size: int = 16  # images per step, over all processes
    accumulation: int = 1  # parts each process splits its share of a batch into (less memory; docs/distributed.md)
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
    method: str = "classifier"  # where CAMs come from (affinitynet.stages.cam_sources.CAM_SOURCES)
    import_dir: str = ""  # method import_irn / import_psa: the folder of another method's {name}.npy CAM files
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
    embed_stride: int = 0  # the embedding's grid: 0 = output_stride; 8 on a stride-16 backbone upsamples its deeper depths
    fine_depth: bool = False  # a fourth branch from the backbone's stride-4 depth (its object edges), pooled onto the grid
    radius: int = 5
    reference_pairs: bool = False  # train on the release's border-trimmed pair set
    epochs: int = 8
    batch_size: int = 8  # images per step, over all processes
    accumulation: int = 1  # parts each process splits its share of a batch into (less memory; docs/distributed.md)
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
class RelationLabelConfig:
    """Inter-pixel relation labels for the boundary network (make_ir_labels; IRN, docs/irn.md)."""

    fg_threshold: float = 0.30  # background score that foreground must beat to be confident
    bg_threshold: float = 0.05  # background score that every class must stay under for confident background
    crf: bool = True  # refine each thresholded argmax with a dense CRF on hard labels
    crf_gt_prob: float = 0.7
    crf_iters: int = 10
    crf_gauss_sxy: float = 3.0
    crf_gauss_compat: float = 3.0
    crf_bilateral_sxy: float = 50.0
    crf_bilateral_srgb: float = 5.0
    crf_bilateral_compat: float = 10.0
    workers: int = 2  # worker processes (the CRF is CPU-bound)


@dataclass
class BoundaryConfig:
    """The class boundary network (train_boundary; IRN, docs/irn.md)."""

    backbone: str = "tiny"
    pretrained: str = ""  # ImageNet weights, or "classifier" (this run's); the backbone stays frozen
    checkpoint: str = ""  # a trained boundary network (ours): used as is, no training
    output_stride: int = 16
    dilated: bool = True  # false: layers past the output stride undilated (IRN's ResNet-50, strides 2, 2, 2, 1)
    radius: int = 10  # pairs of the training loss (the walk uses random_walk.radius)
    reference_pairs: bool = False  # train on the border-trimmed pair set of IRN's path index
    epochs: int = 3
    batch_size: int = 32  # images per step, over all processes
    accumulation: int = 1  # parts each process splits its share of a batch into (less memory; docs/distributed.md)
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    crop_size: int = 512
    resize_long: list[int] = field(default_factory=list)  # [] : no resizing to a long side
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    resample: str = "bicubic"  # bilinear | bicubic
    color_jitter: float = 0.0
    hue: float = 0.0
    crop_pad: str = "mean"  # mean | black
    # the walk's boundary maps (inference only: changing these does not retrain)
    test_flip: bool = True  # average the logits of the image and its mirror image
    test_pad: bool = True  # pad smaller images to crop_size, as training crops are (GroupNorm sees the same size)


@dataclass
class RandomWalkConfig:
    """Semantic propagation (random_walk)."""

    affinity: str = "affinitynet"  # where pair affinities come from (affinitynet.stages.affinity_sources)
    background: str = "power"  # power: (1 - max CAM)^alpha walks with the CAMs | threshold: bg_threshold after the walk
    bg_threshold: float = 0.25  # background: threshold: constant score against the walked CAMs, scaled to max 1
    alpha: float = 16.0
    # label-free alpha for each run: of ``alpha_candidates``, the one whose labels' borders cross the least affinity
    # on the walk's own graph (as ``affinitynet calibrate``); ``alpha`` is then unused (random_walk/alpha.json)
    choose_alpha: bool = False
    alpha_candidates: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0,
                                                                    32.0, 48.0, 64.0])
    scale: float = 1.0  # image scale for AffinityNet and the walk (1.0 as in the paper)
    beta: float = 8.0
    logt: int = 8
    radius: int = 5
    reference_pairs: bool = False  # reproduce the reference code's border-trimmed pair set
    crf: bool = False  # dense CRF on the propagated scores
    cache_affinity: bool = False  # keep each image's pair affinities (random_walk/affinity/): sweeps of alpha, beta, logt
    workers: int = 1
    max_long_side: int = 1000  # long side of AffinityNet's input (after scale); larger images shrink (0: no bound)


@dataclass
class SegmentationConfig:
    """DeepLab-style network (train_segmentation, segment)."""

    backbone: str = "tiny"
    pretrained: str = ""  # a weights file, or "classifier": this run's trained classifier backbone
    head: str = "largefov"  # largefov | aspp
    head_rate: int = 12  # LargeFOV dilation (ASPP: rate/2, rate, 1.5 rate, 2 rate); 12 suits 40-60 cell feature maps
    head_dropout: float = 0.5  # LargeFOV's element-wise dropout after each of its two hidden layers (DeepLab-v1's)
    output_stride: int = 8
    labels: str = "pseudo"  # pseudo (this run's random-walk labels) | gt (fully supervised upper bound) | a folder
    epochs: int = 20
    batch_size: int = 10  # images per step, over all processes
    accumulation: int = 1  # parts each process splits its share of a batch into (less memory; docs/distributed.md)
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
    crf_rows: bool = False  # also score CAM + CRF, random walk + CRF, segmentation + CRF (dense CRF on the soft scores)


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
    crf_workers: int = 2  # segment: processes running the dense CRFs while the network goes on (0: one by one here)


@dataclass
class Config:
    """The whole run configuration; the resolved copy is saved as RUN_DIR/config.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    affinity_labels: AffinityLabelConfig = field(default_factory=AffinityLabelConfig)
    affinitynet: AffinityNetConfig = field(default_factory=AffinityNetConfig)
    ir_labels: RelationLabelConfig = field(default_factory=RelationLabelConfig)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
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
    "data.voc.labels_from": ("auto", "xml", "masks"),
    "cam.resample": ("bilinear", "bicubic"),
    "cam.crop_pad": ("mean", "black"),
    "affinitynet.resample": ("bilinear", "bicubic"),
    "affinitynet.crop_pad": ("mean", "black"),
    "affinity_labels.crf_unary": ("normalized", "clipped"),
    "affinity_labels.grid_labels": ("pixels", "scores"),
    "random_walk.affinity": ("affinitynet", "boundary"),
    "random_walk.background": ("power", "threshold"),
    "boundary.resample": ("bilinear", "bicubic"),
    "boundary.crop_pad": ("mean", "black"),
}
