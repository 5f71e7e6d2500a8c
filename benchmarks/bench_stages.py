"""Images per second of every pipeline stage at a preset's settings, each next to a baseline from the same run.

    python benchmarks/bench_stages.py [--preset paper cpu] [--device auto] [--max-batch N] [--steps S]
                                      [--only STAGE ...] [--json PATH]

``paper`` is the ``voc12_resnet38`` preset (ResNet-38, 448 crops, its batch sizes, scales and CRF settings),
``cpu`` the ``synthetic_cpu`` preset (tiny backbones, 128-px images), ``photos`` the ``photos_cpu`` preset
(EfficientNet-Lite0, 256-px crops, 500 x 375 test images).

``--backbones`` compares backbones instead of options: every stage at the ``photos_cpu`` settings (crops, batches,
scales, image size) with the networks of ``photos_cpu`` (EfficientNet-Lite0), of ``synthetic_cpu`` (the tiny
from-scratch backbone at stride 8, LargeFOV) and ResNet-50 (stride 16 as IRN's CAMs, ASPP), each in the way the
pipeline runs it (float32 training; flip batched per scale; the walk's ``auto`` method), with its speed against
ResNet-50's in the same run. Networks start from random weights
(throughput does not depend on them); inference runs on random images of a typical VOC size (500 x 375,
or the preset's synthetic size), training on random crops. For each stage the baseline is the release's way
(inference: one image, one scale and one view per forward, the dense random walk on gathered pair
affinities) or, for training, float32 without any option; every other row adds options
(``affinitynet.accel``, ``runtime`` keys) and shows its speed-up over that baseline. The dense CRF has no
option: its row is its own baseline. The stages' own per-image machinery (pools, prefetching, the CRF pool
beside segment's network) is timed by ``bench_pipeline.py``. Prints a markdown table; --json saves the rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import affinitynet
from affinitynet import config as config_mod
from affinitynet.accel import AccelOptions
from affinitynet.models import build_affinitynet, build_classifier, build_deeplab
from affinitynet.ops.affinity import pair_affinity, radius_pair_affinity
from affinitynet.ops.cam import multiscale_cam
from affinitynet.ops.inference import multiscale_predict
from affinitynet.ops.pairs import pair_indices
from affinitynet.ops.randomwalk import walk_method
from affinitynet.randomwalk import dense_propagate_reference, propagate_with_affinity
from affinitynet.stages.train_affinitynet import AffinityLoss
from affinitynet.stages.train_cam import classification_loss
from affinitynet.stages.train_segmentation import segmentation_loss

PRESETS = {"paper": "voc12_resnet38.yaml", "cpu": "synthetic_cpu.yaml", "photos": "photos_cpu.yaml"}
STAGES = ("train_cam", "make_cam", "make_affinity_labels", "train_affinitynet", "random_walk",
          "train_segmentation", "segment")
WALK_CHANNELS = 3  # background + the two classes a typical image carries


def _synthetic(cfg, key: str):
    """data.synthetic.<key> (data.synth_<key> in configs from before the data section's split)."""
    data = cfg.data
    return getattr(data.synthetic, key) if hasattr(data, "synthetic") else getattr(data, f"synth_{key}")


def num_classes(cfg) -> int:
    """Foreground classes: the synthetic set's, or VOC's 20."""
    return _synthetic(cfg, "classes") if cfg.data.kind == "synthetic" else 20


def image_size(cfg, args) -> tuple[int, int]:
    """(H, W) of the test images: the synthetic set's size, or --image-size (VOC's typical 375 x 500)."""
    return (_synthetic(cfg, "size"),) * 2 if cfg.data.kind == "synthetic" else tuple(args.image_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = [1]  # untimed runs before each timing (--warmup)


def timed(fn, device: torch.device, repeats: int, warmup: int | None = None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(WARMUP[0] if warmup is None else warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wanted(variant: str, args) -> bool:
    """Whether a variant survives ``--drop`` (words that remove every variant naming them)."""
    return not any(word in variant for word in args.drop)


def variants(device: torch.device) -> list[tuple[str, AccelOptions]]:
    """The training options to compare with float32, in order."""
    return [
        ("float32 (baseline)", AccelOptions()),
        ("amp", AccelOptions(amp=True)),
        ("channels_last", AccelOptions(channels_last=True)),
        ("amp + channels_last + step_sync=false", AccelOptions(amp=True, channels_last=True, step_sync=False)),
    ]


# ----------------------------------------------------------------------------- training stages


def train_rows(stage: str, cfg, device, args) -> list[dict]:
    """Images per second of one training stage's step (forward, loss, backward, SGD) for each option set."""
    section = {"train_cam": cfg.cam, "train_affinitynet": cfg.affinitynet, "train_segmentation": cfg.segmentation}[stage]
    section = dataclasses.replace(section, pretrained="")
    size, batch = section.crop_size, min(section.batch_size, args.max_batch or section.batch_size)
    classes = num_classes(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    if stage == "train_cam":
        build, loss_fn = (lambda: build_classifier(section, classes)), classification_loss
        target = (torch.rand(batch, classes, generator=gen) > 0.7).float()
    elif stage == "train_affinitynet":
        build = lambda: build_affinitynet(section)  # noqa: E731
        stride = section.embed_stride or section.output_stride
        g = -(-size // stride)
        target = torch.randint(0, 3, (batch, g, g), generator=gen)
        target[:, : g // 4] = 255
        loss_fn = AffinityLoss(section.radius, section.reference_pairs)
    else:
        build, loss_fn = (lambda: build_deeplab(section, classes + 1)), segmentation_loss
        target = torch.randint(0, classes + 1, (batch, size, size), generator=gen)
    if device.type == "cuda":
        x, target = x.pin_memory(), target.pin_memory()
    rows = []
    for name, opts in variants(device):
        if not wanted(name, args):
            continue
        torch.manual_seed(0)
        model = build().to(device).train()
        if opts.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        scaler, net = opts.grad_scaler(device), opts.wrap(model, device)

        def step():
            loss, _ = loss_fn(net, (x, target), device)
            if opts.step_sync:
                torch.isfinite(loss).item()  # the loop's per-step read of the loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        try:
            seconds = timed(step, device, args.steps)
        except RuntimeError as e:  # out of memory, or an autocast dtype this CPU build does not support
            rows.append({"variant": name, "error": str(e).splitlines()[0][:80]})
            del model, optimizer, net
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        rows.append({"variant": name, "images_per_s": batch / seconds, "batch": batch, "size": f"{size}x{size}"})
        del model, optimizer, net
    return rows


# ----------------------------------------------------------------------------- inference stages


def test_images(cfg, args, count: int) -> torch.Tensor:
    """(count, 3, H, W) normalised random images of one typical size."""
    h, w = image_size(cfg, args)
    return torch.randn(count, 3, h, w, generator=torch.Generator().manual_seed(1))


def release_cam(model, image: torch.Tensor, scales, flip: bool) -> torch.Tensor:
    """The release's make-CAM loop: one image, one scale and one view per forward."""
    return multiscale_cam(model, image, scales, flip, batched=False)


def make_cam_rows(cfg, device, args) -> list[dict]:
    section = dataclasses.replace(cfg.cam, pretrained="")
    classes = num_classes(cfg)
    torch.manual_seed(0)
    model = build_classifier(section, classes).to(device).eval()
    n = args.batch_images
    images = test_images(cfg, args, n).to(device)
    scales, flip = section.scales, section.flip
    size = f"{images.shape[-1]}x{images.shape[-2]}"
    rows = []

    def one_image(net, batched):
        return lambda: multiscale_cam(net, images[0], scales, flip, batched=batched)

    cases = [("release: 1 image, 1 scale, 1 view per forward (baseline)", one_image(model, False), 1),
             ("flip batched per scale (cam.batch_scales)", one_image(model, True), 1),
             (f"+ {n} images per batch (runtime.batch_images={n})",
              lambda: multiscale_cam(model, images, scales, flip), n)]
    for name, opts in (("+ amp", AccelOptions(amp=True)), ("+ channels_last", AccelOptions(channels_last=True))):
        if not wanted(name, args):
            continue
        net = opts.for_inference(build_classifier(section, classes).to(device).eval(), device)
        cases.append((f"{n} images per batch {name}", lambda net=net: multiscale_cam(net, images, scales, flip), n))
    for name, fn, count in cases:
        seconds = timed(fn, device, args.repeats)
        rows.append({"variant": name, "images_per_s": count / seconds, "batch": count, "size": size})
    return rows


def crf_rows(cfg, device, args) -> list[dict]:
    """make_affinity_labels: two dense CRFs per image (low and high alpha), CPU only; no option."""
    from affinitynet.ops.crf import dense_crf

    if not cfg.affinity_labels.crf:
        return [{"variant": "CRF off in this preset", "images_per_s": float("nan")}]
    c = cfg.affinity_labels
    h, w = image_size(cfg, args)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    scores = rng.random((WALK_CHANNELS, h, w), dtype=np.float32)

    def two_crfs():
        for _ in range(2):
            dense_crf(image, scores, iters=c.crf_iters, gauss_sxy=c.crf_gauss_sxy, gauss_compat=c.crf_gauss_compat,
                      bilateral_sxy=c.crf_bilateral_sxy, bilateral_srgb=c.crf_bilateral_srgb,
                      bilateral_compat=c.crf_bilateral_compat, unary=c.crf_unary)

    seconds = timed(two_crfs, torch.device("cpu"), args.repeats)
    return [{"variant": f"2 dense CRFs, {c.crf_iters} iterations, {WALK_CHANNELS} labels (no option)",
             "images_per_s": 1 / seconds, "batch": 1, "size": f"{w}x{h}"}]


def random_walk_rows(cfg, device, args) -> list[dict]:
    """AffinityNet on one image + pair affinities + the walk of background and two classes."""
    rw = cfg.random_walk
    section = dataclasses.replace(cfg.affinitynet, pretrained="")
    torch.manual_seed(0)
    image = test_images(cfg, args, 1)
    if rw.scale != 1.0:
        image = F.interpolate(image, scale_factor=rw.scale, mode="bilinear", align_corners=False)
    h, w = image.shape[-2:]
    stride = section.embed_stride or section.output_stride
    gh, gw = -(-h // stride), -(-w // stride)
    image = F.pad(image, (0, gw * stride - w, 0, gh * stride - h)).to(device)
    cam = torch.rand(1, WALK_CHANNELS, gh, gw, generator=torch.Generator().manual_seed(2)).to(device)
    idx_from, idx_to = pair_indices(gh, gw, rw.radius, reference=rw.reference_pairs, device=device)
    n = gh * gw

    def stage(net, method):
        def run():
            with torch.inference_mode():
                feat = net(image).float()
                if method == "dense":  # the release gathers both ends of every pair
                    aff = pair_affinity(feat, idx_from, idx_to)
                else:  # what the stage does: shifted slices of the embedding (the same values)
                    aff = radius_pair_affinity(feat, rw.radius, reference=rw.reference_pairs)
                if method == "dense":
                    dense_propagate_reference(cam[0].reshape(WALK_CHANNELS, n), aff[0], idx_from, idx_to, n,
                                              rw.beta, rw.logt)
                else:
                    propagate_with_affinity(cam, aff, gh, gw, rw.radius, beta=rw.beta, logt=rw.logt,
                                            reference_pairs=rw.reference_pairs, method=method)
        return run

    model = build_affinitynet(section).to(device).eval()
    amp = AccelOptions(amp=True, channels_last=True).for_inference(build_affinitynet(section).to(device).eval(), device)
    auto = "stencil (Numba)" if walk_method("auto", device, WALK_CHANNELS) == "stencil" else "sparse CSR"
    cases = [("release: dense walk (baseline)", stage(model, "dense"), args.repeats),
             ("sparse CSR walk", stage(model, "sparse"), args.repeats),
             (f"walk method=auto: {auto}", stage(model, "auto"), args.repeats),
             ("method=auto + amp + channels_last network", stage(amp, "auto"), args.repeats)]
    rows = []
    for name, fn, repeats in cases:
        if not wanted(name, args):
            continue
        seconds = timed(fn, device, repeats)
        rows.append({"variant": name, "images_per_s": 1 / seconds, "batch": 1, "size": f"{w}x{h}",
                     "note": f"grid {gw}x{gh}, {WALK_CHANNELS} channels"})
    return rows


def segment_rows(cfg, device, args) -> list[dict]:
    s = dataclasses.replace(cfg.segmentation, pretrained="")
    classes = num_classes(cfg)
    torch.manual_seed(0)
    image = test_images(cfg, args, 1)[0].to(device)
    scales, flip = s.test_scales, s.test_flip

    def release(net):  # one scale and one view per forward
        def run():
            h, w = image.shape[-2:]
            total = 0
            with torch.inference_mode():
                for sc in scales:
                    size = (max(1, round(h * sc)), max(1, round(w * sc)))
                    xs = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
                    for view, flipped in ((xs, False), (xs.flip(-1), True))[: 2 if flip else 1]:
                        logits = F.interpolate(net(view), size=(h, w), mode="bilinear", align_corners=False)
                        prob = logits.softmax(1)
                        total = total + (prob.flip(-1) if flipped else prob)
        return run

    def ours(net):
        def run():
            with torch.inference_mode():
                multiscale_predict(net, image, scales, flip)
        return run

    model = build_deeplab(s, classes + 1).to(device).eval()
    fast = AccelOptions(amp=True, channels_last=True).for_inference(build_deeplab(s, classes + 1).to(device).eval(),
                                                                    device)
    cases = [("release: 1 scale, 1 view per forward (baseline)", release(model)),
             ("flip batched per scale", ours(model)),
             ("flip batched + amp + channels_last", ours(fast))]
    rows = []
    for name, fn in cases:
        if not wanted(name, args):
            continue
        seconds = timed(fn, device, args.repeats)
        rows.append({"variant": name, "images_per_s": 1 / seconds, "batch": 1,
                     "size": f"{image.shape[-1]}x{image.shape[-2]}",
                     "note": f"{len(scales)} scales{' + flip' if flip else ''}; CRF not included"})
    return rows


# ----------------------------------------------------------------------------- table


def run_stage(stage: str, cfg, device, args) -> list[dict]:
    if stage.startswith("train_"):
        return train_rows(stage, cfg, device, args)
    return {"make_cam": make_cam_rows, "make_affinity_labels": crf_rows, "random_walk": random_walk_rows,
            "segment": segment_rows}[stage](cfg, device, args)


# --backbones: (backbone, output stride, segmentation head) swapped into every network of the photos_cpu preset
BACKBONE_SETS = {"photos_cpu: efficientnet_lite0": ("efficientnet_lite0", 16, "aspp"),
                 "synthetic_cpu: tiny": ("tiny", 8, "largefov"),
                 "resnet50": ("resnet50", 16, "aspp")}
# the variant of each stage's rows that the pipeline runs
PIPELINE_VARIANT = {"train_cam": "float32", "train_affinitynet": "float32", "train_segmentation": "float32",
                    "make_cam": "flip batched per scale", "make_affinity_labels": "2 dense CRFs",
                    "random_walk": "walk method=auto", "segment": "flip batched per scale"}


def with_backbone(cfg, backbone: str, stride: int, head: str):
    """The config with ``backbone`` at ``stride`` in every network section (AffinityNet's embedding at stride 8)."""
    cfg = dataclasses.replace(cfg)
    for name in ("cam", "affinitynet", "segmentation", "boundary"):
        sec = dataclasses.replace(cfg.section(name), backbone=backbone, output_stride=stride, pretrained="")
        setattr(cfg, name, sec)
    cfg.affinitynet = dataclasses.replace(cfg.affinitynet, embed_stride=8)
    cfg.segmentation = dataclasses.replace(cfg.segmentation, head=head)
    return cfg


def backbone_table(cfg, device, args) -> list[dict]:
    """Each stage's images/s with each of ``BACKBONE_SETS``, the pipeline's own variant, against ResNet-50's."""
    records = []
    for stage in args.only:
        row = {"stage": stage}
        for label, (backbone, stride, head) in BACKBONE_SETS.items():
            stage_args = argparse.Namespace(**vars(args))
            stage_args.drop = [w for w in ("amp", "channels_last") if w not in PIPELINE_VARIANT[stage]]
            rows = run_stage(stage, with_backbone(cfg, backbone, stride, head), device, stage_args)
            picked = next((r for r in rows if r["variant"].startswith(PIPELINE_VARIANT[stage])), rows[0])
            row[label] = picked.get("images_per_s", float("nan"))
            row["input"] = picked.get("size", "-")
            print(f"  {stage:20s} {label:32s} {row[label]:9.3f} img/s", file=sys.stderr)
        records.append(row)
    return records


def print_backbone_table(records, where: str) -> None:
    labels = list(BACKBONE_SETS)
    header = ["stage", "input", *(f"{label} (img/s)" for label in labels), "lite0 vs resnet50", "lite0 vs tiny"]
    print(f"device: {where}; torch {torch.__version__}; load average at the end {os.getloadavg()[0]:.2f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in records:
        lite, tiny, resnet = (r[label] for label in labels)
        print("| " + " | ".join([r["stage"], r["input"], *(f"{r[label]:.3g}" for label in labels),
                                 f"{lite / resnet:.2f}x", f"{lite / tiny:.2f}x"]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["cpu", "paper"])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--max-batch", type=int, default=0,
                        help="cap on the training batch (default: the preset's; 2 on the CPU at the paper preset)")
    parser.add_argument("--batch-images", type=int, default=4, help="same-size images per batch in make_cam")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per option set (median)")
    parser.add_argument("--repeats", type=int, default=1, help="timed inference runs per variant (median)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--drop", nargs="+", default=[], metavar="WORD",
                        help="skip the variants whose name contains WORD (e.g. amp: bfloat16 on a CPU without AMX)")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--backbones", action="store_true",
                        help="compare EfficientNet-Lite0, the tiny backbone and ResNet-50 at the photos_cpu settings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    WARMUP[0] = args.warmup
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.backbones:
        cfg = config_mod.load(Path(affinitynet.__file__).parent / "configs" / PRESETS["photos"])
        records = backbone_table(cfg, device, args)
        print_backbone_table(records, where)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"device": where, "torch": torch.__version__, "rows": records}, f, indent=1, default=str)
        return
    records = []
    for preset in args.preset:
        cfg = config_mod.load(Path(affinitynet.__file__).parent / "configs" / PRESETS[preset])
        preset_args = argparse.Namespace(**vars(args))
        if preset == "paper" and device.type == "cpu" and not args.max_batch:
            preset_args.max_batch = 2  # ResNet-38 at 448 with the preset's batches of 8-16 does not fit 2 cores' RAM
        for stage in args.only:
            start = time.perf_counter()
            rows = run_stage(stage, cfg, device, preset_args)
            base = rows[0].get("images_per_s", float("nan"))
            for r in rows:
                r.update(preset=preset, stage=stage, speedup=r.get("images_per_s", float("nan")) / base)
                records.append(r)
                ips = r.get("images_per_s")
                print(f"  {preset:5s} {stage:20s} {r['variant']:60s} "
                      + (f"{ips:9.3f} img/s  x{r['speedup']:.2f}" if ips is not None else r.get("error", "")),
                      file=sys.stderr)
            print(f"  ({stage}: {time.perf_counter() - start:.0f} s)", file=sys.stderr)

    header = ["preset", "stage", "variant", "batch", "input", "images/s", "vs baseline"]
    print(f"device: {where}; torch {torch.__version__}; load average at the end {os.getloadavg()[0]:.2f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in records:
        ips = r.get("images_per_s")
        cells = [r["preset"], r["stage"], r["variant"] + (f" ({r['note']})" if r.get("note") else ""),
                 str(r.get("batch", "-")), r.get("size", "-"),
                 f"{ips:.3g}" if ips is not None else f"failed: {r.get('error', '')}",
                 f"{r['speedup']:.2f}x" if ips is not None else "-"]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": where, "torch": torch.__version__, "rows": records}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
