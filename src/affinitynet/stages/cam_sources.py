"""Where a run's CAMs come from: one small interface, implementations chosen from a plain dict.

``make_cam`` asks ``CAM_SOURCES[cam.method](ctx)`` for each training image's normalised CAMs of its
present classes and stores them; every later stage reads only those files. A new CAM method is one
subclass here plus its entry in ``CAM_SOURCES``. ``__call__`` runs outside any no-grad context, so a
gradient-based method (Grad-CAM and kin) can take the gradients it needs; the classifier's own CAM
turns gradients off itself.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..conventions import normalize_image
from ..cam_import import import_cams
from ..errors import ConfigError, DataError
from ..models import build_classifier
from ..ops.bound import shrink_image, upsample_to
from ..ops.cam import bicubic_rescaled, model_device, multiscale_cam, normalize_cams
from ..accel import AccelOptions
from .common import build_trained


class CamSource:
    """A CAM method: built once per stage run; called per image."""

    needs_classifier = True  # False: train_cam has nothing to do for it

    def __init__(self, ctx):
        self.ctx = ctx

    def inputs(self) -> Callable[[np.ndarray], object]:
        """Picklable (H, W, 3) uint8 image -> what ``__call__`` takes as ``image``; make_cam runs it ahead in DataLoader
        workers, so it holds no network. The decoded image itself unless a method prepares more."""
        return _decoded

    def __call__(self, name: str, image, tags: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``name`` (``inputs()`` of its pixels, (C,) multi-hot tags) -> (keys (C',) class ids 1..C, maps (C', H, W) in [0, 1])."""
        raise NotImplementedError


def _decoded(image: np.ndarray) -> np.ndarray:
    return image


class CamInput(NamedTuple):
    """One decoded image ready to go to the classifier's device: ``image`` (h, w, 3) uint8 within the size bound,
    ``scaled`` one (h_s, w_s, 3) uint8 image per scale (None: the device resizes ``image`` bilinearly),
    ``size`` the image's own (H, W). Normalised on the device (``input_cams``): a quarter of the bytes to copy."""

    image: torch.Tensor
    scaled: list[torch.Tensor] | None
    size: tuple[int, int]


@dataclass(frozen=True)
class CamInputs:
    """Decoded image -> ``CamInput``: the size bound and, unless bilinear, the release's PIL rescales
    (``cam.resample``). Picklable: make_cam's DataLoader workers run it."""

    scales: tuple[float, ...]
    resample: str
    max_long_side: int

    @classmethod
    def of(cls, cfg) -> "CamInputs":
        """The inputs the ``cam`` section ``cfg`` asks for."""
        if cfg.resample not in ("bilinear", "bicubic"):
            raise ValueError(f"unknown resample {cfg.resample!r} (valid: bilinear, bicubic)")
        return cls(tuple(cfg.scales), cfg.resample, cfg.max_long_side)

    def __call__(self, raw: np.ndarray) -> CamInput:
        """(H, W, 3) uint8 -> ``CamInput``."""
        small = shrink_image(raw, self.max_long_side, max(self.scales))
        scaled = None if self.resample == "bilinear" else [torch.from_numpy(s)
                                                           for s in bicubic_rescaled(small, self.scales)]
        return CamInput(torch.from_numpy(small), scaled, tuple(raw.shape[:2]))


class ClassifierCam(CamSource):
    """The trained classifier's CAM, ReLU(W_c . f), over scales and flips (the AffinityNet paper's)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.model = build_trained(build_classifier, ctx.cfg.cam, ctx.train_set.num_classes,
                                   path=ctx.layout.network("train_cam"), device=ctx.device, stage="train_cam",
                                   accel=AccelOptions.from_runtime(ctx.cfg.runtime))

    def inputs(self) -> CamInputs:
        return CamInputs.of(self.ctx.cfg.cam)

    def __call__(self, name, image: CamInput, tags):
        return input_cams(self.model, [image], [tags], self.ctx.cfg.cam)[0]

    def batch(self, names, images: list[CamInput], tags) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Several images of one size at once (``runtime.batch_images``): one (keys, maps) per image, as ``__call__``."""
        return input_cams(self.model, images, tags, self.ctx.cfg.cam)


def image_cams(model, raw: np.ndarray, labels: np.ndarray, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 image, (C,) tags -> (keys (C',) class ids, maps (C', H, W) on the CPU): one image's CAMs.

    ``cfg`` is the ``cam`` section: scales, flip, batching, resampling and the size bound.
    """
    return batch_image_cams(model, [raw], [labels], cfg)[0]


def batch_image_cams(model, raws: list[np.ndarray], labels: list[np.ndarray], cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``image_cams`` of several (H, W, 3) images of one size, each scale of all of them in one forward pass."""
    prepare = CamInputs.of(cfg)
    return input_cams(model, [prepare(raw) for raw in raws], labels, cfg)


def input_cams(model, inputs: list[CamInput], labels: list[np.ndarray], cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``CamInput`` of B images of one size, (C,) tags each -> (keys (C',), maps (C', H, W) on the CPU) per image.

    Each image goes to the network's device (without waiting, from page-locked memory) and is normalised there.
    """
    device, mean, std = model_device(model), model.backbone.mean, model.backbone.std

    def normalised(image: torch.Tensor) -> torch.Tensor:
        return normalize_image(image.to(device, non_blocking=True), mean, std)

    images = torch.stack([normalised(i.image) for i in inputs])
    scaled = None if inputs[0].scaled is None else [torch.stack([normalised(v) for v in views])
                                                    for views in zip(*(i.scaled for i in inputs))]
    cams = multiscale_cam(model, images, cfg.scales, cfg.flip, batched=cfg.batch_scales, scaled=scaled)
    out = []
    for image_cams_, tags in zip(cams, labels):
        keys, maps = normalize_cams(image_cams_, torch.from_numpy(tags))
        out.append((keys, upsample_to(maps.cpu(), tuple(inputs[0].size))))  # stored at image size
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

    def __call__(self, name, image: np.ndarray, tags):
        keys, maps = import_cams(self.folder / f"{name}.npy", self.ctx.cfg.cam.method, image.shape[:2], tags)
        return torch.from_numpy(keys), torch.from_numpy(maps)


CAM_SOURCES = {"classifier": ClassifierCam, "import_irn": ImportedCam, "import_psa": ImportedCam}


def cam_source(ctx) -> CamSource:
    """The configured CAM method (``cam.method``), built for this run."""
    method = ctx.cfg.cam.method
    if method not in CAM_SOURCES:
        raise ConfigError(f"unknown cam.method '{method}' (valid: {', '.join(CAM_SOURCES)})")
    return CAM_SOURCES[method](ctx)
