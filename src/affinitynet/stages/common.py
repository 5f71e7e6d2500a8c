"""Pieces several stages share: CAM files, the feature grid, the scoring split, loading and adopting networks."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StageError


def stride_grid(h: int, w: int, stride: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Feature grid (ceil(h/stride), ceil(w/stride)) of an h x w image and the F.pad amounts that fill it exactly."""
    gh, gw = -(-h // stride), -(-w // stride)
    return (gh, gw), (0, gw * stride - w, 0, gh * stride - h)


def scoring_split(ctx) -> str:
    """The split that scores the training split's labels: ``eval.score_split``, or the training split itself."""
    return ctx.cfg.eval.score_split or ctx.cfg.data.train_split


def scoring_set(ctx):
    """The dataset of ``scoring_split``: its images and masks score the training split's labels.

    VOC's protocol runs the stages on train_aug and scores the pseudo labels on train (1,464 images);
    every image of the scoring split must belong to the training split.
    """
    split = scoring_split(ctx)
    if split == ctx.cfg.data.train_split:
        return ctx.train_set
    scored = ctx.dataset(split)
    outside = sorted(set(scored.names) - set(ctx.train_set.names))
    if outside:
        raise StageError(f"eval.score_split={split}: {len(outside)} of its {len(scored)} images are not in the "
                         f"training split {ctx.cfg.data.train_split} (first: {outside[0]})")
    return scored


def require(path: Path, stage: str) -> Path:
    """``path`` if it exists, else a StageError saying which stage makes it."""
    if not Path(path).exists():
        raise StageError(f"{path} is missing: run the '{stage}' stage first")
    return Path(path)


def build_trained(build, section, *args, path: Path, device: torch.device, stage: str,
                  accel=None) -> torch.nn.Module:
    """``build(section, *args)`` without the section's initial weights (the checkpoint replaces every one), loaded from ``path``.

    ``accel`` (``affinitynet.accel.AccelOptions``, from ``runtime``): channels-last and autocast for inference.
    """
    import dataclasses

    model = load_trained(build(dataclasses.replace(section, pretrained=""), *args), path, device, stage)
    return model if accel is None else accel.for_inference(model, device)


CLASSIFIER = "classifier"  # a network's ``pretrained`` value: its backbone starts from this run's classifier's


def build_pretrained(ctx, section, name: str, build, *args) -> torch.nn.Module:
    """``build(section, *args)`` with ``section.pretrained`` in its backbone; ``classifier``: this run's classifier's.

    ``name`` is the section's name, for the error when its backbone is not the classifier's.
    """
    import dataclasses

    from ..errors import ConfigError
    from ..models import load_backbone_weights

    if section.pretrained != CLASSIFIER:
        return build(section, *args)
    if section.backbone != ctx.cfg.cam.backbone:
        raise ConfigError(f"{name}.pretrained=classifier needs the classifier's backbone ({ctx.cfg.cam.backbone}), "
                          f"not {section.backbone}")
    model = build(dataclasses.replace(section, pretrained=""), *args)
    load_backbone_weights(model.backbone, require(ctx.layout.network("train_cam"), "train_cam"))
    return model


def load_trained(model: torch.nn.Module, path: Path, device: torch.device, stage: str) -> torch.nn.Module:
    """Load the weights a training stage saved at ``path`` into ``model``, move it to ``device``, eval mode."""
    from ..models import load_checkpoint_into

    load_checkpoint_into(model, require(path, stage))
    return model.to(device).eval()


def use_given_checkpoint(ctx, model: torch.nn.Module, path: str) -> dict:
    """Adopt a trained network instead of training one: the stage's ``final.pt`` links to ``path``.

    The file is loaded into ``model`` first (a file that does not fit fails here, naming it);
    ``source.json`` beside the link records its absolute path and sha256. Returns the stage's summary.
    """
    import os

    from ..io import atomic_path, file_sha256, write_json
    from ..models import load_checkpoint_into

    source = Path(path).expanduser().resolve()
    load_checkpoint_into(model, source)
    digest = file_sha256(source)
    final = ctx.layout.network(ctx.stage)
    if ctx.is_main:
        final.parent.mkdir(parents=True, exist_ok=True)
        write_json(final.parent / "source.json", {"checkpoint": str(source), "sha256": digest})
        with atomic_path(final) as tmp:
            tmp.unlink()  # the placeholder file atomic_path made: a link takes its name
            os.symlink(source, tmp)
    ctx.log.info(f"  using the trained network {source} (sha256 {digest[:16]}) instead of training one")
    return {"checkpoint": str(source), "sha256": digest[:16]}


def train_network(ctx, model: torch.nn.Module, section, dataset, loss_fn, *, validate=None) -> dict:
    """Shared wiring of the training stages: SGD with the x1/x2/x10/x20 groups, poly LR, ``fit``.

    ``section`` is the stage's config section (lr, weight_decay, momentum, poly_power, epochs, batch_size,
    accumulation). Checkpoints, ``history.jsonl`` and ``final.pt`` go to the stage's folder. Running out of
    memory stops the stage with a one-line StageError naming the key that lets each process hold fewer images.
    """
    from ..accel import AccelOptions
    from ..context import is_out_of_memory
    from ..dist import DistInfo
    from ..engine import fit, param_groups_sgd
    from ..global_batch import split_batch
    from . import stage_spec

    name = stage_spec(ctx.stage).trains
    model = model.to(ctx.device)
    optimizer = param_groups_sgd(model.param_groups(), section.lr, section.weight_decay, section.momentum)
    rt = ctx.cfg.runtime
    try:
        return fit(model, loss_fn, dataset, optimizer=optimizer, epochs=section.epochs,
                   batch_size=section.batch_size, ckpt_dir=ctx.layout.folder(ctx.stage), device=ctx.device,
                   poly_power=section.poly_power, dist_info=DistInfo(ctx.rank, ctx.world_size, ctx.local_rank),
                   seed=rt.seed, num_workers=rt.num_workers, progress=rt.progress and ctx.is_main,
                   log_every=rt.log_every, log=ctx.log, validate=validate, config=ctx.cfg.to_dict(),
                   accel=AccelOptions.from_runtime(rt), accumulation=section.accumulation,
                   batch_key=f"{name}.batch_size")
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        images = split_batch(section.batch_size, ctx.world_size, section.accumulation)
        what = (f"raise {name}.accumulation (now {section.accumulation}; each process holds {images} of the "
                f"{section.batch_size} images of a step at a time) to run them in smaller parts"
                if images > 1 else f"each process holds 1 image at a time already: lower {name}.crop_size "
                                   f"(now {section.crop_size})")
        raise StageError(f"out of memory in {ctx.stage} on {ctx.device}; {what}, and re-run the same command to "
                         f"resume from the last finished epoch") from None
