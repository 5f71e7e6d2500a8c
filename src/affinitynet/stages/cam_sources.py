"""Where a run's CAMs come from: one small interface, implementations chosen from a plain dict.

``make_cam`` asks ``CAM_SOURCES[cam.method](ctx)`` for each training image's normalised CAMs of its
present classes and stores them; every later stage reads only those files. A new CAM method is one
subclass here plus its entry in ``CAM_SOURCES``. ``__call__`` runs outside any no-grad context, so a
gradient-based method (Grad-CAM and kin) can take the gradients it needs; the classifier's own CAM
turns gradients off itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..conventions import normalize_image
from ..cam_import import import_cams
from ..errors import ConfigError, DataError
from ..models import build_classifier
from ..ops.bound import shrink_image, upsample_to
from ..ops.cam import multiscale_cam, normalize_cams, scaled_images
from ..accel import AccelOptions
from .common import build_trained


class CamSource:
    """A CAM method: built once per stage run; called per image."""

    needs_classifier = True  # False: train_cam has nothing to do for it

    def __init__(self, ctx):
        self.ctx = ctx

    def __call__(self, name: str, image: np.ndarray, tags: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``name`` ((H, W, 3) uint8, (C,) multi-hot tags) -> (keys (C',) class ids 1..C, maps (C', H, W) in [0, 1])."""
        raise NotImplementedError


class ClassifierCam(CamSource):
    """The trained classifier's CAM, ReLU(W_c . f), over scales and flips (the AffinityNet paper's)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.model = build_trained(build_classifier, ctx.cfg.cam, ctx.train_set.num_classes,
                                   path=ctx.layout.network("train_cam"), device=ctx.device, stage="train_cam",
                                   accel=AccelOptions.from_runtime(ctx.cfg.runtime))

    def __call__(self, name, image, tags):
        return image_cams(self.model, image, tags, self.ctx.cfg.cam)

    def batch(self, names, images, tags) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Several images of one size at once (``runtime.batch_images``): one (keys, maps) per image, as ``__call__``."""
        return batch_image_cams(self.model, images, tags, self.ctx.cfg.cam)


def image_cams(model, raw: np.ndarray, labels: np.ndarray, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 image, (C,) tags -> (keys (C',) class ids, maps (C', H, W) on the CPU): one image's CAMs.

    ``cfg`` is the ``cam`` section: scales, flip, batching, resampling and the size bound.
    """
    return batch_image_cams(model, [raw], [labels], cfg)[0]


def batch_image_cams(model, raws: list[np.ndarray], labels: list[np.ndarray], cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``image_cams`` of several (H, W, 3) images of one size, each scale of all of them in one forward pass."""
    mean, std = model.backbone.mean, model.backbone.std
    size = raws[0].shape[:2]
    raws = [shrink_image(raw, cfg.max_long_side, max(cfg.scales)) for raw in raws]
    images = torch.stack([normalize_image(raw, mean, std) for raw in raws])
    scaled = None
    if cfg.resample != "bilinear":
        per_image = [scaled_images(raw, cfg.scales, mean, std, cfg.resample) for raw in raws]
        scaled = [torch.stack(views) for views in zip(*per_image)]  # one (B, 3, h_s, w_s) batch per scale
    cams = multiscale_cam(model, images, cfg.scales, cfg.flip, batched=cfg.batch_scales, scaled=scaled)
    out = []
    for image_cams_, tags in zip(cams, labels):
        keys, maps = normalize_cams(image_cams_, torch.from_numpy(tags))
        out.append((keys, upsample_to(maps.cpu(), size)))  # stored at image size
    return out


class ImportedCam(CamSource):
    """Another method's CAMs, one ``{name}.npy`` per image in ``cam.import_dir`` (``affinitynet.cam_import``)."""

    needs_classifier = False

    def __init__(self, ctx):
        super().__init__(ctx)
        folder = ctx.cfg.cam.import_dir
        if not folder:
            raise ConfigError(f"cam.method {ctx.cfg.cam.method} needs cam.import_dir: the folder of the CAM files")
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(self.folder, "cam.import_dir: folder not found")

    def __call__(self, name, image, tags):
        keys, maps = import_cams(self.folder / f"{name}.npy", self.ctx.cfg.cam.method, image.shape[:2], tags)
        return torch.from_numpy(keys), torch.from_numpy(maps)


CAM_SOURCES = {"classifier": ClassifierCam, "import_irn": ImportedCam, "import_psa": ImportedCam}


def cam_source(ctx) -> CamSource:
    """The configured CAM method (``cam.method``), built for this run."""
    method = ctx.cfg.cam.method
    if method not in CAM_SOURCES:
        raise ConfigError(f"unknown cam.method '{method}' (valid: {', '.join(CAM_SOURCES)})")
    return CAM_SOURCES[method](ctx)
