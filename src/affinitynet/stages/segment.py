"""segment: the trained segmentation network on an evaluation split (multi-scale + flip, optional CRF).

Also ``predict_images`` behind ``affinitynet predict``: masks for a user's own images from a checkpoint,
as palette PNGs, or in the layout of the VOC evaluation server (``--format voc-test``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..evaluation import score_label_dir
from ..io import load_image, save_label_png, write_json
from ..models import build_deeplab
from ..ops.bound import shrink_image, upsample_to
from ..ops.cam import normalize_image
from ..ops.inference import multiscale_predict
from ..accel import AccelOptions
from .common import build_trained

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def predict_label(model, image: np.ndarray, device, *, scales=(1.0,), flip=False, crf=False,
                  max_long_side: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 image -> (H, W) uint8 class ids from the segmentation network.

    An image whose largest scale would exceed ``max_long_side`` (0: no bound) is shrunk first; the scores
    are upsampled back to its size.
    """
    small = shrink_image(image, max_long_side, max(scales))
    x = normalize_image(small, model.backbone.mean, model.backbone.std).to(device)
    with torch.inference_mode():
        prob = upsample_to(multiscale_predict(model, x, scales, flip).float().cpu(), image.shape[:2])
    if crf:
        from ..ops.crf import dense_crf

        prob = torch.from_numpy(dense_crf(image, prob.numpy()))
    return prob.argmax(0).numpy().astype(np.uint8)


def eval_split(ctx) -> str:
    """The dataset split ``segmentation.split`` names: ``val``/``train`` mean the data section's splits."""
    s = ctx.cfg.segmentation.split
    return {"val": ctx.cfg.data.val_split, "train": ctx.cfg.data.train_split}.get(s, s)


@dataclass
class _Segmenter:
    dataset: object
    out_dir: Path
    model_path: Path
    cfg: object  # Config
    device: torch.device
    _model: object = field(default=None, repr=False)

    def __call__(self, name: str) -> None:
        c = self.cfg.segmentation
        if self._model is None:
            self._model = build_trained(build_deeplab, c, self.dataset.num_classes + 1, path=self.model_path,
                                        device=self.device, stage="train_segmentation",
                                        accel=AccelOptions.from_runtime(self.cfg.runtime))
        label = predict_label(self._model, self.dataset.load_image(name), self.device, scales=c.test_scales,
                              flip=c.test_flip, crf=c.crf, max_long_side=c.test_max_long_side)
        save_label_png(self.out_dir / f"{name}.png", label)


def run(ctx) -> dict:
    """Write ``predictions/{name}.png`` for the evaluation split; score them when masks exist."""
    split = eval_split(ctx)
    ds = ctx.dataset(split)
    out_dir = ctx.path("predictions")
    work = _Segmenter(ds, out_dir, ctx.path("segmentation", "final.pt"), ctx.cfg, ctx.device)
    counts = ctx.map_images(ds.names, lambda n: out_dir / f"{n}.png", work, desc=f"segment {split}",
                            image_of=ds.image_path, memory_key="segmentation.test_max_long_side")
    summary = {"split": split, "images": len(ds), "computed": counts["done"]}
    if ctx.is_main and ds.has_masks:
        result = score_label_dir(out_dir, ds, progress=ctx.progress, desc="segmentation mIoU")
        result["split"] = split
        write_json(out_dir / "metrics.json", result)
        summary["miou"] = round(result["miou"], 2)
    return summary


def _expand(paths) -> list[Path]:
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise DataError(p, "image file not found")
    return files


def predict_images(checkpoint: Path, images, out: Path, *, device="auto", scales=(1.0,), flip=False, crf=False,
                   fmt: str = "png", max_long_side: int | None = None) -> list[Path]:
    """Segment image files (or folders of them) with a ``segmentation/final.pt`` checkpoint -> palette PNGs.

    ``max_long_side`` bounds the largest scale's input (default: the checkpoint's ``test_max_long_side``).
    """
    from ..config import from_dict
    from ..dist import resolve_device
    from ..engine import load_checkpoint
    from ..models import deeplab_num_classes

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    if "config" not in ckpt or "model" not in ckpt:
        raise DataError(checkpoint, "not a segmentation checkpoint of this project (no model/config inside)")
    cfg = from_dict(ckpt["config"], where=str(checkpoint))
    model = build_trained(build_deeplab, cfg.segmentation, deeplab_num_classes(ckpt["model"], checkpoint),
                          path=checkpoint, device=dev, stage="train_segmentation")
    out = Path(out)
    if fmt == "voc-test":
        out = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    bound = cfg.segmentation.test_max_long_side if max_long_side is None else max_long_side
    written = []
    from ..runs import OutOfMemoryReport, progress

    def work(path: Path) -> None:
        label = predict_label(model, load_image(path), dev, scales=scales, flip=flip, crf=crf, max_long_side=bound)
        target = out / f"{path.stem}.png"
        save_label_png(target, label)
        written.append(target)

    work = OutOfMemoryReport(work, Path, f"predict on {dev}", "--max-long-side", bound)
    for path in progress(_expand(images), desc="predict"):
        work(path)
    print(f"wrote {len(written)} masks to {out}")
    return written
