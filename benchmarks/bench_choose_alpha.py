"""What ``random_walk.choose_alpha`` costs over the walk at one alpha, on one image's grid (CPU).

    python benchmarks/bench_choose_alpha.py [--preset photos_cpu] [--size 400 300] [--classes 2] [--threads 1]
                                            [--repeat 5]

On a grid of the preset's walk (stride 8 for photos_cpu: 50 x 38 cells at 400 x 300 px), random CAMs of
``--classes`` classes and random pair affinities, the median of ``--repeat`` timings of:

- ``one alpha``: ``walk_from_affinity`` at the preset's alpha, what the walk stage does per image (the baseline);
- ``every candidate, one walk``: ``walk_candidates`` over the 12 default candidates plus the border criterion of
  each, what ``choose_alpha`` adds per image;
- ``every candidate, one walk each``: a walk per candidate, as ``affinitynet calibrate`` re-walks them.

Prints a markdown table with each case's time and its ratio to the baseline. The network's forward pass, which
every case shares and which costs more than the walk, is not in it.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="photos_cpu")
    p.add_argument("--size", type=int, nargs=2, default=(400, 300), metavar=("W", "H"))
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()

    import numpy as np
    import torch

    from affinitynet.config import load, resolve_config_path
    from affinitynet.ops.pairs import pair_indices
    from affinitynet.stages.affinity_sources import AFFINITY_SOURCES
    from affinitynet.stages.random_walk import walk_from_affinity, walk_grid
    from affinitynet.stages.walk_alpha import border_affinities, walk_candidates

    torch.set_num_threads(a.threads)
    cfg = load(resolve_config_path(a.preset), ["runtime.device=cpu"])
    rw = cfg.random_walk
    stride = cfg.affinitynet.embed_stride or AFFINITY_SOURCES[rw.affinity].stride
    w, h = a.size
    g = walk_grid(h, w, rw, stride)
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(a.classes, h, w, generator=gen).numpy()
    aff = torch.rand(1, pair_indices(*g.grid, rw.radius)[0].numel(), generator=gen)
    keys = np.arange(1, a.classes + 1)
    alphas = rw.alpha_candidates
    cpu = torch.device("cpu")

    def one():
        walk_from_affinity(g, maps, aff, rw, cpu)

    def together():
        out = walk_candidates(g, maps, aff, rw, cpu, alphas)
        border_affinities(g, out, keys, aff, len(alphas), rw)

    def each():
        for v in alphas:
            walk_from_affinity(g, maps, aff, dataclasses.replace(rw, alpha=v), cpu)

    cases = {"one alpha (baseline)": one, f"every candidate ({len(alphas)}), one walk": together,
             f"every candidate ({len(alphas)}), one walk each": each}
    times = {}
    for name, fn in cases.items():
        fn()  # the first call compiles the CPU stencil
        runs = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs)
    base = times["one alpha (baseline)"]
    print(f"{a.preset}: grid {g.grid[1]} x {g.grid[0]} (stride {stride}), radius {rw.radius}, 2^{rw.logt} steps, "
          f"{a.classes} classes, {a.threads} thread(s)\n")
    print("| case | ms | x baseline |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
