"""random_walk: propagate each training image's CAMs with pair affinities -> pseudo label PNGs.

As in the released code: the image is padded to a multiple of the stride, the affinity source
(``random_walk.affinity``, ``stages/affinity_sources.py``; AffinityNet by default) gives the affinities of
the pairs within the radius, the score stack [(1 - max CAM)^alpha, CAMs] is zero-padded and
average-pooled to the grid, propagated (``affinitynet.randomwalk``), upsampled bilinearly, cropped back
and argmaxed. The propagated scores stay on the grid in ``random_walk/scores/{name}.npz`` (float32, present
classes only, ~40 KB per VOC image) so that later steps (the CRF row, exports with a confidence threshold)
relabel without the network; with ``random_walk.cache_affinity`` the pair affinities are kept too, so
``affinitynet sweep`` re-walks at other alpha / beta / logt without running the affinity source again.
With ``random_walk.choose_alpha`` the stage chooses alpha itself, label-free (``stages/walk_alpha.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..conventions import normalize_image
from ..scoring import score_labels
from ..io import load_cam, load_npz, save_label_png, save_npz, write_json
from ..layout import RunLayout
from ..ops.bound import bound_factor
from ..ops.cam import cam_scores_with_bg, class_lut
from ..randomwalk import propagate_with_affinity
from .affinity_sources import AffinitySource, affinity_source
from .common import scoring_set, scoring_split, stride_grid


@dataclass(frozen=True)
class WalkGrid:
    """Where one image's walk runs: image size (H, W), scaled size (sh, sw), grid (gh, gw) of ``stride`` pixels."""

    size: tuple[int, int]
    scaled: tuple[int, int]
    grid: tuple[int, int]
    stride: int
    pad: tuple[int, int, int, int]
    shrunk: bool  # below cfg.scale because of the size bound: resized with antialiasing


def walk_grid(h: int, w: int, cfg, stride: int) -> WalkGrid:
    """The walk's geometry for an h x w image: ``cfg.scale``, less when the long side would exceed ``cfg.max_long_side``."""
    s = cfg.scale * bound_factor(h, w, cfg.max_long_side, cfg.scale)
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    grid, pad = stride_grid(sh, sw, stride)
    return WalkGrid((h, w), (sh, sw), grid, stride, pad, s < cfg.scale)


def at_scale(g: WalkGrid, x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (1, C, gh * stride, gw * stride): resized to the scaled size, zero-padded to the grid."""
    x = x.unsqueeze(0)
    if g.scaled != g.size:
        x = F.interpolate(x, size=g.scaled, mode="bilinear", align_corners=False, antialias=g.shrunk)
    return F.pad(x, g.pad)


def grid_scores(g: WalkGrid, maps: np.ndarray, alpha: float, background: str = "power") -> torch.Tensor:
    """(C', H, W) CAMs -> (1, 1 + C', gh, gw) walk input: [(1 - max CAM)^alpha, CAMs] average-pooled to the grid.

    ``background="threshold"``: the background channel is zero; ``threshold_background`` fills it after the walk.
    """
    cams = torch.from_numpy(maps)
    stack = (cam_scores_with_bg(cams, alpha) if background == "power"
             else torch.cat([torch.zeros(1, *cams.shape[1:]), cams.float()]))
    return F.avg_pool2d(at_scale(g, stack), g.stride, g.stride)


def threshold_background(g: WalkGrid, out: torch.Tensor, threshold: float) -> torch.Tensor:
    """(1, 1 + C', gh, gw) walked scores -> the same with background ``threshold`` x the walked CAMs' maximum at image
    size: an argmax at image size then picks IRN's background, the threshold against the CAMs scaled to maximum 1."""
    peak = float(grid_to_image(out[:, 1:], g.size, g.scaled, g.stride).max()) if out.shape[1] > 1 else 0.0
    out = out.clone()
    out[:, 0] = threshold * peak if peak > 0 else threshold
    return out


def walk_from_affinity(g: WalkGrid, maps: np.ndarray, aff: torch.Tensor, cfg, device,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """(C', H, W) CAMs, (1, P) pair affinities on ``g``'s grid -> (1, 1 + C', gh, gw) propagated scores on the CPU.

    ``weight`` (1, 1, gh, gw), from sources that give one, multiplies the score stack before the walk;
    ``cfg.background`` says where the background comes from (``grid_scores``, ``threshold_background``).
    """
    with torch.inference_mode():
        scores = grid_scores(g, maps, cfg.alpha, cfg.background).to(device)
        if weight is not None:
            scores = scores * weight.to(device, scores.dtype)
        out = propagate_with_affinity(scores, aff.to(device), *g.grid,
                                      cfg.radius, beta=cfg.beta, logt=cfg.logt, reference_pairs=cfg.reference_pairs)
    out = out.cpu()
    return threshold_background(g, out, cfg.bg_threshold) if cfg.background == "threshold" else out


def grid_to_image(out: torch.Tensor, size, scaled, stride: int) -> torch.Tensor:
    """(1, K, gh, gw) grid scores -> (K, H, W): upsampled bilinearly, cropped to the scaled size, resized to the image."""
    gh, gw = out.shape[-2:]
    with torch.inference_mode():
        out = F.interpolate(out.float(), size=(gh * stride, gw * stride), mode="bilinear", align_corners=False)
        out = out[:, :, :scaled[0], :scaled[1]]
        if tuple(scaled) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    return out[0]


def affinities(source: AffinitySource, image: np.ndarray, cfg, device):
    """(H, W, 3) image -> (grid, (1, P) pair affinities, (1, 1, gh, gw) CAM weight or None) from the source."""
    g = walk_grid(*image.shape[:2], cfg, source.stride)
    x = at_scale(g, normalize_image(image, *source.mean_std())).to(device)
    got = source(x, cfg.radius, cfg.reference_pairs)
    aff, weight = got if isinstance(got, tuple) else (got, None)  # (affinities, CAM weight) or affinities alone
    return g, aff, weight


def walk(source: AffinitySource, image: np.ndarray, maps: np.ndarray, cfg, device):
    """(H, W, 3) image, (C', H, W) CAMs -> (grid, ((1, P) affinities, CAM weight or None), (1, 1 + C', gh, gw) scores)."""
    g, aff, weight = affinities(source, image, cfg, device)
    return g, (aff, weight), walk_from_affinity(g, maps, aff, cfg, device, weight)


def walk_scores(source: AffinitySource, image: np.ndarray, keys: np.ndarray, maps: np.ndarray, cfg,
                device) -> torch.Tensor:
    """(H, W, 3) image, (C',) ids, (C', H, W) CAMs -> (1 + C', H, W) propagated scores (bg first).

    The walk runs at ``cfg.scale``, less for an image whose long side would exceed ``cfg.max_long_side``
    (shrunk with antialiasing); the scores come back at image size.
    """
    g, _, out = walk(source, image, maps, cfg, device)
    return grid_to_image(out, g.size, g.scaled, g.stride)


def scores_to_label(scores: torch.Tensor, keys: np.ndarray) -> np.ndarray:
    """(1 + C', H, W) scores, (C',) class ids -> (H, W) uint8 class-id map."""
    return class_lut(keys).numpy().astype(np.uint8)[scores.argmax(0).numpy()]


def walk_label(scores: torch.Tensor, keys: np.ndarray, image: np.ndarray | None, crf: bool) -> np.ndarray:
    """(1 + C', H, W) scores -> (H, W) uint8 pseudo label, after a dense CRF on the RGB image when ``crf`` (``image``
    is read only then; None without the CRF)."""
    if crf:
        from ..ops.crf import dense_crf

        scores = torch.from_numpy(dense_crf(image, scores.clamp_min(0).numpy()))
    return scores_to_label(scores, keys)


def save_walk(path, g: WalkGrid, keys: np.ndarray, out: torch.Tensor, **extra) -> None:
    """One image's propagated grid scores (float32, present classes only) and the sizes that bring them to the image."""
    save_npz(path, keys=np.asarray(keys, dtype=np.int16), scores=out[0].numpy().astype(np.float32),
             size=np.array(g.size), scaled=np.array(g.scaled), stride=np.array(g.stride), **extra)


def save_affinity(path, g: WalkGrid, aff: torch.Tensor, weight: torch.Tensor | None) -> None:
    """One image's (1, P) pair affinities (float32) and CAM weight (1, 1, gh, gw) or none, with its grid."""
    extra = {} if weight is None else {"weight": weight.cpu().float().numpy()}
    save_npz(path, aff=aff.cpu().float().numpy().reshape(1, -1), grid=np.array(g.grid), stride=np.array(g.stride),
             **extra)


def load_affinity(path, g: WalkGrid) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((1, P) affinities, weight or None) of a ``random_walk/affinity/{name}.npz`` made on grid ``g`` (DataError if not)."""
    from ..errors import DataError

    z = load_npz(path)
    if tuple(z["grid"].tolist()) != g.grid or int(z["stride"]) != g.stride:
        raise DataError(path, f"cached for a {tuple(z['grid'].tolist())} grid at stride {int(z['stride'])}, the "
                              f"config gives {g.grid} at stride {g.stride}: re-run random_walk")
    weight = torch.from_numpy(z["weight"]) if "weight" in z else None
    return torch.from_numpy(z["aff"]), weight


def load_walk_scores(path) -> tuple[np.ndarray, torch.Tensor]:
    """(keys (C',), scores (1 + C', H, W) at image size) of a ``random_walk/scores/{name}.npz`` file."""
    z = load_npz(path)
    out = torch.from_numpy(z["scores"]).unsqueeze(0)
    return z["keys"].astype(np.int64), grid_to_image(out, z["size"].tolist(), z["scaled"].tolist(), int(z["stride"]))


@dataclass
class Walker:
    """Picklable per-image work of the walk: builds the affinity source once per process."""

    dataset: object
    layout: RunLayout
    cfg: object  # Config
    device: torch.device
    _source: object = field(default=None, repr=False)

    def source(self) -> AffinitySource:
        if self._source is None:
            self._source = affinity_source(self.cfg, self.layout, self.device)
        return self._source

    def __call__(self, name: str) -> None:
        image = self.dataset.load_image(name)
        keys, maps = load_cam(self.layout.cam(name))
        cfg = self.cfg.random_walk
        g, (aff, weight), out = walk(self.source(), image, maps, cfg, self.device)
        if cfg.cache_affinity:
            save_affinity(self.layout.walk_affinity(name), g, aff, weight)
        save_walk(self.layout.walk_scores(name), g, keys, out)
        scores = grid_to_image(out, g.size, g.scaled, g.stride)
        save_label_png(self.layout.pseudo_label(name), walk_label(scores, keys, image, cfg.crf))


def run(ctx) -> dict:
    """Write ``random_walk/{name}.png`` for every training image; score them when masks exist."""
    ds = ctx.train_set
    layout = ctx.layout
    rw = ctx.cfg.random_walk
    workers = rw.workers if ctx.device.type == "cpu" else 1
    choice = None
    if rw.choose_alpha and rw.background == "power":
        from .walk_alpha import run_choosing

        choice, counts = run_choosing(ctx, workers)
    else:
        walker = Walker(ds, layout, ctx.cfg, ctx.device)
        counts = ctx.map_images(ds.names, layout.pseudo_label, walker, desc="random_walk", workers=workers,
                                image_of=ds.image_path, memory_key="random_walk.max_long_side")
    summary = {"images": len(ds), "computed": counts["done"]}
    if choice is not None:
        summary.update(alpha=choice["alpha"], alpha_stability=choice["stability"])
    if ctx.is_main and ds.has_masks:
        result = score_labels(layout.pseudo_label, scoring_set(ctx), progress=ctx.progress,
                                 desc="pseudo-label mIoU")
        result["split"] = scoring_split(ctx)
        result["affinity"] = ctx.cfg.random_walk.affinity
        if choice is not None:
            result["alpha_chosen"] = choice
        write_json(layout.stage_metrics(ctx.stage), result)
        summary["miou"] = round(result["miou"], 2)
    return summary
