"""Throughput of multi-scale + flip CAM inference: flip pair batched (one forward a scale) vs the plain loop.

    python benchmarks/bench_make_cam.py [--threads N] [--device cpu] [--images 4] [--repeats 3]

Times the per-image make_cam work (normalise image, ``multiscale_cam`` at scales 1.0/0.5/1.5/2.0 with
flip, ``normalize_cams``) on random images, both variants in the same run on the same inputs, and
prints a markdown table of images/s and the ratio. Models: a tiny conv stand-in; and, when
``affinitynet.models`` is importable, the ``tiny`` backbone classifier at 128x128 and a resnet50
classifier at 320x240 (random weights: throughput does not depend on them).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affinitynet.conventions import normalize_image
from affinitynet.ops.cam import multiscale_cam, normalize_cams

SCALES = (1.0, 0.5, 1.5, 2.0)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class StandIn(nn.Module):
    """Output-stride-8 conv net with a bias-free 1x1 classifier; cam() = ReLU(W f)."""

    def __init__(self, num_classes: int = 20, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(2 * width, num_classes, 1, bias=False)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/8), ceil(W/8))."""
        return F.relu(self.classifier(self.features(x)))


def _cases(num_classes: int):
    """[(name, model, (H, W), images)] to time."""
    cases = [("stand-in conv", StandIn(num_classes), (128, 128), 8)]
    try:
        from affinitynet.models import Classifier, build_backbone
    except ImportError as exc:
        print(f"note: affinitynet.models not importable ({exc}); timing the stand-in only")
        return cases
    for name, size, n in (("tiny", (128, 128), 8), ("resnet50", (240, 320), 2)):
        try:
            model = Classifier(build_backbone(name, output_stride=8), num_classes)
        except Exception as exc:  # report and go on: the benchmark still times what it can
            print(f"note: could not build the {name} classifier ({type(exc).__name__}: {exc}); skipped")
            continue
        cases.append((f"{name} classifier", model, size, n))
    return cases


def _make_cam(model, img, labels, batched, device):
    image = normalize_image(img, MEAN, STD).to(device)
    cams = multiscale_cam(model, image, SCALES, True, batched=batched)
    return normalize_cams(cams, labels)


def _time(model, images, labels, batched, device, repeats):
    """Best-of-repeats images/s over the image list (one warm-up pass first)."""
    _make_cam(model, images[0], labels, batched, device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for img in images:
            _make_cam(model, img, labels, batched, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main(argv=None) -> list[dict]:
    """Run the benchmark, print the markdown table, return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores)")
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument("--images", type=int, default=0, help="images a case (0: per-case default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=20)
    args = parser.parse_args(argv)

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = torch.zeros(args.classes)
    labels[[0, 3]] = 1

    load0 = os.getloadavg()[0]
    rows = []
    for name, model, (h, w), n in _cases(args.classes):
        model = model.to(device).eval()
        n = args.images or n
        images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]
        _, a = _make_cam(model, images[0], labels, True, device)
        _, b = _make_cam(model, images[0], labels, False, device)
        diff = (a - b).abs().max().item()
        loop = _time(model, images, labels, False, device, args.repeats)
        batched = _time(model, images, labels, True, device, args.repeats)
        rows.append(dict(model=name, size=f"{w}x{h}", loop=loop, batched=batched, ratio=batched / loop, diff=diff))

    print(f"\nmake_cam, scales {SCALES} + flip, device {device}, {threads} threads, torch {torch.__version__}, "
          f"load average before/after {load0:.1f}/{os.getloadavg()[0]:.1f} (other processes distort CPU timings)\n")
    print("| model | image (WxH) | loop img/s | batched img/s | batched/loop | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['loop']:.2f} | {r['batched']:.2f} | {r['ratio']:.2f}x | {r['diff']:.1e} |")
    return rows


if __name__ == "__main__":
    main()
