"""Time to generate the demo's synthetic set, against the floor of writing the same files.

Baseline (same run): encoding and writing 300 random 128 px JPEGs plus 300 palette PNGs and the XML
annotations, i.e. the file I/O the generator cannot avoid. The ratio is the generator's own cost on
top of it.

    .venv/bin/python benchmarks/bench_synthetic.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from affinitynet.data.synthetic import generate
from affinitynet.io import save_label_png


def write_floor(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.jpg", quality=95)
        save_label_png(root / f"{i}.png", rng.integers(0, 6, (size, size), dtype=np.uint8))
        (root / f"{i}.xml").write_text("<annotation><object><name>x</name></object></annotation>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gen, floor = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            generate(Path(tmp) / "s", train=240, val=60, size=128, classes=5, seed=0)
            gen.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            write_floor(Path(tmp), 300, 128)
            floor.append(time.perf_counter() - t)
    g, f = statistics.median(gen), statistics.median(floor)
    print(f"synthetic set, 300 images of 128 px: {g:.2f} s; writing the same files: {f:.2f} s; ratio {g / f:.1f}x "
          f"(median of {args.repeat})")


if __name__ == "__main__":
    main()
