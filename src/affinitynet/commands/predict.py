"""``affinitynet predict``: masks for a user's own images from a trained segmentation checkpoint, as palette
PNGs, or in the layout of the VOC evaluation server (``--format voc-test``)."""
from __future__ import annotations

from pathlib import Path

from ..config import from_dict
from ..context import OutOfMemoryReport
from ..dist import resolve_device
from ..checkpoints import load_checkpoint
from ..errors import DataError
from ..io import load_image, save_label_png
from ..logs import progress
from ..models import build_from_args, load_checkpoint_into
from ..stages.segment import predict_label

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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
    """Segment image files (or folders of them) with a segmentation checkpoint (``deeplab/final.pt``) -> PNGs.

    The network is rebuilt from the ``model_args`` the checkpoint stores. ``max_long_side`` bounds the
    largest scale's input (default: the checkpoint's ``segmentation.test_max_long_side``).
    """
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    kind = (ckpt.get("model_args") or {}).get("network")
    if kind != "deeplab":
        what = f"a {kind} checkpoint" if kind else "a checkpoint without model_args (affinitynet 0.1: retrain it)"
        raise DataError(checkpoint, f"not a segmentation network but {what}; predict takes RUN/deeplab/final.pt")
    model = build_from_args(ckpt["model_args"])
    load_checkpoint_into(model, checkpoint)
    model = model.to(dev).eval()
    cfg = from_dict(ckpt.get("config", {}), where=str(checkpoint))
    out = Path(out)
    if fmt == "voc-test":
        out = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    bound = cfg.segmentation.test_max_long_side if max_long_side is None else max_long_side
    written = []

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
