"""Images per second of the per-image stages as they run now against the way they ran before, both measured in the
same run on the same images at the paper preset's image size, with a check that both write the same files.

    python benchmarks/bench_pipeline.py [--network cpu|paper] [--images N] [--only CASE ...] [--repeats R]
                                        [--image-size H W] [--json PATH]

The ``voc12_resnet38`` preset's settings on random 500 x 375 images in a VOC layout whose ``train_aug`` list
holds VOC's 10,582 names with their tags read, as make_cam leaves the dataset before make_affinity_labels
runs in the same process. Cases:

- ``labels``: make_affinity_labels (two dense CRFs an image) in 2 worker processes: the work, which carries
  the dataset, pickled with every image (before) / given to each worker once, names sent (now).
- ``walk``: random_walk (AffinityNet + the walk) in 2 worker processes: the network rebuilt for every image
  (before) / once per worker (now).
- ``segment``: segment with the preset's dense CRF (21 labels): one CRF after another in the network's
  process (before) / in 2 CRF processes while the network goes on (``runtime.crf_workers=2``, now).
- ``make_cam``: decoding, the preset's bicubic rescales and normalising, the network and the ``.npz`` write
  one after another (before) / inputs prepared in 2 DataLoader workers and files written by a thread
  (``runtime.num_workers=2``, now).

``--network cpu`` puts the CPU preset's tiny networks in ResNet-38's place (what these changes remove are
per-image costs outside the network); ``paper`` keeps ResNet-38 (minutes an image on a CPU). ``--idle S``
(with ``cpu``) stands in for a network on a GPU, which leaves the CPU free while it runs: each forward pass
of this process's networks sleeps S seconds and runs the tiny backbone on a 4x smaller input (upsampled back),
so that the CPU work around the network (what prefetching and the CRF pool overlap) shows as it would there.
Networks have random weights (throughput does not depend on them). Each pair runs before, now, before, now... (``--repeats``)
and the median is reported. Prints a markdown table; ``--json`` saves the rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import affinitynet
from affinitynet import config as config_mod
from affinitynet.checkpoints import save_checkpoint
from affinitynet.context import StageContext
from affinitynet.data.voc import VOC_CLASSES
from affinitynet.io import save_cam
from affinitynet.models import build_affinitynet, build_classifier, build_deeplab
from affinitynet.overlap import worker_init
from affinitynet.stages import make_affinity_labels, make_cam, random_walk, segment
from affinitynet.stages.cam_sources import cam_source, image_cams

VOC_TRAIN_AUG = 10582
CASES = ("labels", "walk", "segment", "make_cam")


def make_data(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """A VOC layout: ``n`` random images (smooth colour regions + noise) and their XML tags; ``train_aug`` lists
    VOC's 10,582 names (the rest are links to the first images), ``bench`` the ``n`` real ones."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = [f"2007_{i:06d}" for i in range(VOC_TRAIN_AUG)]
    for i, name in enumerate(names):
        jpg = root / "JPEGImages" / f"{name}.jpg"
        if i < n:
            coarse = torch.from_numpy(rng.random((1, 3, 6, 8), dtype=np.float32))
            smooth = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
            pixels = np.clip(255 * smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(jpg, quality=90)
        else:
            jpg.symlink_to(f"{names[i % n]}.jpg")
        tags = {VOC_CLASSES[i % 20], VOC_CLASSES[(i * 7 + 3) % 20]}
        objects = "".join(f"<object><name>{t}</name></object>" for t in sorted(tags))
        (root / "Annotations" / f"{name}.xml").write_text(f"<annotation>{objects}</annotation>")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(names) + "\n")
    (root / "ImageSets" / "Segmentation" / "bench.txt").write_text("\n".join(names[:n]) + "\n")


def bench_config(root: Path, network: str, threads: int):
    """The paper preset on the benchmark's data (``network=cpu``: the CPU preset's tiny networks)."""
    cfg = config_mod.load(Path(affinitynet.__file__).parent / "configs" / "voc12_resnet38.yaml")
    cfg.data.root, cfg.data.train_split, cfg.data.val_split = str(root), "train_aug", "bench"
    cfg.data.voc.mask_dir = ""  # random images: nothing to score
    for section in (cfg.cam, cfg.affinitynet, cfg.segmentation):
        section.pretrained = ""
        if network == "cpu":
            section.backbone = "tiny"
    cfg.cam.overlays, cfg.eval.report_images = 0, 0
    cfg.runtime.device, cfg.runtime.progress, cfg.runtime.threads = "cpu", False, threads
    return cfg


def save_networks(cfg, run: Path) -> None:
    """Random-weight networks where the stages look for the trained ones, and random CAMs of the real images."""
    layout = StageContext(cfg=cfg, run_dir=run, device=torch.device("cpu")).layout
    torch.manual_seed(0)
    for stage, model in (("train_cam", build_classifier(cfg.cam, 20)), ("train_affinitynet", build_affinitynet(cfg.affinitynet)),
                         ("train_segmentation", build_deeplab(cfg.segmentation, 21))):
        save_checkpoint(layout.network(stage), model=model)


def save_random_cams(ds, names, layout) -> None:
    gen = torch.Generator().manual_seed(1)
    for name in names:
        keys = torch.from_numpy(np.flatnonzero(ds.load_labels(name)) + 1)
        h, w = ds.image_size(name)
        coarse = torch.rand(1, len(keys), 4, 5, generator=gen) ** 2
        maps = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        save_cam(layout.cam(name), keys, maps / maps.flatten(1).amax(1).view(-1, 1, 1))


def pickled_each_image(work, names, workers: int) -> None:
    """How map_images ran a pool before: ``work`` pickled with every task (imap_unordered over the callable)."""
    with mp.get_context("spawn").Pool(workers, initializer=worker_init) as pool:
        for _ in pool.imap_unordered(work, names, chunksize=1):
            pass


def folder_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Watch:
    """When each new file appears under ``folder`` (polled every 10 ms on a thread)."""

    def __init__(self, folder: Path, pattern: str):
        self.folder, self.pattern, self.times, self.stop = folder, pattern, [], threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        seen = 0
        while not self.stop.is_set():
            count = len(list(self.folder.glob(self.pattern))) if self.folder.is_dir() else 0
            self.times += [time.perf_counter()] * (count - seen)
            seen = count
            time.sleep(0.01)

    def __enter__(self) -> "Watch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def timed_pair(before, now, output: Path, pattern: str, repeats: int) -> dict:
    """``before()`` and ``now()``, interleaved, each starting without ``output``: median seconds in all, to the first
    file (start-up: pools, loaders, the network) and per image after it; whether both wrote the same files."""
    runs, files = {"before": [], "now": []}, {}
    for _ in range(repeats):
        for label, fn in (("before", before), ("now", now)):
            shutil.rmtree(output, ignore_errors=True)
            start = time.perf_counter()
            with Watch(output, pattern) as watch:
                fn()
            end = time.perf_counter()
            first = watch.times[0] if watch.times else end
            rest = len(watch.times) - 1
            runs[label].append((end - start, first - start, (end - first) / rest if rest > 0 else float("nan")))
            files[label] = folder_bytes(output)
    out = {"same_files": files["before"] == files["now"] and len(files["now"]) > 0}
    for label, values in runs.items():
        total, first, per = (statistics.median(v) for v in zip(*values))
        out.update({f"{label}_s": total, f"{label}_first_s": first, f"{label}_per_image_s": per})
    return out


def case_labels(ctx, big, names, args):
    work = make_affinity_labels._Labeller(big, ctx.layout, ctx.cfg.affinity_labels)
    size_mb = len(pickle.dumps(work)) / 2**20
    out = ctx.layout.affinity_label(names[0]).parent
    got = timed_pair(lambda: pickled_each_image(work, names, 2),
                     lambda: ctx.map_images(names, ctx.layout.affinity_label, work, desc="labels", workers=2),
                     out, "*.png", args.repeats)
    return got, f"2 CRF workers; the work, pickled, is {size_mb:.2f} MB"


def case_walk(ctx, big, names, args):
    cfg = dataclasses.replace(ctx.cfg, random_walk=dataclasses.replace(ctx.cfg.random_walk, workers=2))
    work = random_walk.Walker(big, ctx.layout, cfg, ctx.device)
    out = ctx.layout.pseudo_label(names[0]).parent
    got = timed_pair(lambda: pickled_each_image(work, names, 2),
                     lambda: ctx.map_images(names, ctx.layout.pseudo_label, work, desc="walk", workers=2),
                     out, "*.png", args.repeats)
    return got, "2 workers; before: AffinityNet built for every image"


def case_segment(ctx, small, names, args):
    def run(workers):
        ctx.cfg.runtime.crf_workers = workers
        segment.run(ctx)

    out = ctx.layout.prediction(names[0]).parent
    got = timed_pair(lambda: run(0), lambda: run(2), out, "*.png", args.repeats)
    s = ctx.cfg.segmentation
    return got, f"{len(s.test_scales)} scales + flip, dense CRF of 21 labels; now 2 CRF processes"


def case_make_cam(ctx, small, names, args):
    def before():  # make_cam's loop before: everything in this process, one step after another
        source = cam_source(ctx)
        for name in small.names:
            save_cam(ctx.layout.cam(name), *image_cams(source.model, small.load_image(name), small.load_labels(name),
                                                       ctx.cfg.cam))

    def now():
        ctx.cfg.runtime.num_workers = 2
        make_cam.run(ctx)
        ctx.cfg.runtime.num_workers = 0

    out = ctx.layout.cam(names[0]).parent
    got = timed_pair(before, now, out, "*.npz", args.repeats)
    c = ctx.cfg.cam
    return got, f"{len(c.scales)} scales + flip, {c.resample}; now 2 DataLoader workers + a writer thread"


def idle_networks(seconds: float) -> None:
    """Each forward pass of the tiny backbone in this process: ``seconds`` of sleep (the CPU free, as while a GPU
    works), then the backbone on a 4x smaller input, its levels upsampled to the sizes of the full input."""
    from affinitynet.models.tiny import TinyNet

    real = TinyNet.forward

    def forward(self, x):
        time.sleep(seconds)
        h, w = x.shape[-2:]
        levels = real(self, F.avg_pool2d(x, 4, ceil_mode=True))
        return [F.interpolate(f, size=(-(-h // s), -(-w // s)), mode="nearest")
                for f, s in zip(levels, (8, self.output_stride, self.output_stride))]

    TinyNet.forward = forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--images", type=int, default=8, help="images each variant processes")
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the main process (0: torch's)")
    parser.add_argument("--idle", type=float, default=0.0, metavar="S",
                        help="with --network cpu: each forward pass sleeps S seconds on a 4x smaller input (a GPU's pass)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.idle:
        if args.network != "cpu":
            parser.error("--idle stands in for the tiny networks (--network cpu)")
        idle_networks(args.idle)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, run = Path(tmp) / "voc", Path(tmp) / "run"
        make_data(root, args.images, tuple(args.image_size))
        cfg = bench_config(root, args.network, args.threads)
        save_networks(cfg, run)
        ctx = StageContext(cfg=cfg, run_dir=run, device=torch.device("cpu"))
        big, small = ctx.train_set, ctx.val_set
        for name in big.names:  # the tags make_cam reads: cached in the dataset the pools pickle
            big.load_labels(name)
        save_random_cams(big, small.names, ctx.layout)
        for case in args.only:
            fn = {"labels": case_labels, "walk": case_walk, "segment": case_segment, "make_cam": case_make_cam}[case]
            if case == "make_cam":
                ctx = dataclasses.replace(ctx, _datasets={cfg.data.train_split: small})  # make_cam over the real images
            got, note = fn(ctx, big if case in ("labels", "walk") else small, small.names, args)
            n = args.images
            rows.append({"case": case, "images": n, "note": note, **got,
                         "speedup": got["before_s"] / got["now_s"],
                         "steady_speedup": got["before_per_image_s"] / got["now_per_image_s"]})
            print(f"  {case}: before {got['before_s']:.1f} s (first file {got['before_first_s']:.1f} s, then "
                  f"{got['before_per_image_s']:.2f} s an image), now {got['now_s']:.1f} s ({got['now_first_s']:.1f} s, "
                  f"{got['now_per_image_s']:.2f} s), same files: {got['same_files']}", file=sys.stderr)
            if case == "make_cam":
                save_random_cams(big, small.names, ctx.layout)  # the walk's inputs as the other cases had them
    load_end = os.getloadavg()
    idle = f" (each forward pass: {args.idle:g} s of sleep + the tiny net at 1/4 size)" if args.idle else ""
    print(f"network: {args.network}{idle}; {args.images} images of {args.image_size[1]}x{args.image_size[0]}; "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
          f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    header = ["stage", "what changed", "images", "before: images/s (first file, s)", "now: images/s (first file, s)",
              "now vs before", "after the first file: before / now images/s", "now vs before", "same files"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        n = r["images"]
        print(f"| {r['case']} | {r['note']} | {n} | {n / r['before_s']:.3g} ({r['before_first_s']:.1f}) | "
              f"{n / r['now_s']:.3g} ({r['now_first_s']:.1f}) | {r['speedup']:.2f}x | "
              f"{1 / r['before_per_image_s']:.3g} / {1 / r['now_per_image_s']:.3g} | {r['steady_speedup']:.2f}x | "
              f"{'yes' if r['same_files'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"network": args.network, "load": [load_start, load_end], "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
