"""The boundary walk (IRN's class-boundary affinities on the exact sparse walk) on one 512 x 512 image at stride 4.

    python benchmarks/bench_boundary_walk.py [--preset voc12_irn_resnet50] [--size 512] [--dense-grid 40]
                                             [--threads 2] [--json PATH]

Cases, each in a fresh child process on the CPU, whose peak resident memory (``ru_maxrss`` of the child) is its own:

Each times its second call (the first, on a tiny input, compiles the CPU stencil).

- ``image``: the random_walk stage's own per-image code (``random_walk.walk_scores`` with ``BoundaryAffinity``,
  the preset's boundary network with random weights, flip and padding as configured, two classes, radius,
  beta, logt and background of the preset) on a random size x size image: a 128 x 128 grid at 512 px;
- ``walk``: the walk alone on that grid (pair affinities from a random boundary map, three channels);
- ``sparse`` and ``dense``: the walk on a smaller dense-grid x dense-grid grid, ours against the dense
  formulation IRN uses (``dense_propagate_reference``: an N x N matrix squared logt times), the in-run
  baseline of the ratio; the dense walk's memory at the full grid is stated from N^2 (not run: IRN's padded
  N is (128 + 5) x (128 + 10) = 18,354 nodes, 1.3 GB a matrix, several alive at once).
Prints a markdown table and the ratio dense / sparse time on the small grid.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(case: str, preset: str, size: int, dense_grid: int, threads: int) -> dict:
    """Run one case here; return its seconds and this process's RSS before the timed part (KiB)."""
    import numpy as np
    import torch

    from affinitynet.config import load, resolve_config_path
    from affinitynet.ops.pairs import pair_indices
    from affinitynet.ops.paths import path_max_affinity
    from affinitynet.randomwalk import dense_propagate_reference, propagate_with_affinity

    torch.set_num_threads(threads)
    cfg = load(resolve_config_path(preset), ["runtime.device=cpu"])
    walk = cfg.random_walk
    gen = torch.Generator().manual_seed(0)
    if case == "image":
        from affinitynet.layout import RunLayout
        from affinitynet.models import build_boundary
        from affinitynet.stages.affinity_sources import BoundaryAffinity
        from affinitynet.stages.random_walk import walk_scores

        run = tempfile.mkdtemp()
        layout = RunLayout(run)
        torch.manual_seed(0)
        net = build_boundary(type(cfg.boundary)(**{**cfg.boundary.__dict__, "pretrained": ""}))
        layout.network("train_boundary").parent.mkdir(parents=True)
        torch.save({"model": net.state_dict()}, layout.network("train_boundary"))
        source = BoundaryAffinity(cfg, layout, torch.device("cpu"))
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:size, :size] / size
        maps = np.stack([np.exp(-((yy - 0.4) ** 2 + (xx - 0.3) ** 2) * 20),
                         np.exp(-((yy - 0.6) ** 2 + (xx - 0.7) ** 2) * 20)]).astype(np.float32)
        run_it = lambda: walk_scores(source, image, np.array([1, 2]), maps, walk, torch.device("cpu"))  # noqa: E731
        warm_up = lambda: walk_scores(source, image[:32, :32], np.array([1, 2]), maps[:, :32, :32], walk,  # noqa: E731
                                      torch.device("cpu"))
    else:
        g = size // source_stride() if case == "walk" else dense_grid
        edge = torch.rand(1, g, g, generator=gen) ** 4
        cams = torch.rand(1, 3, g, g, generator=gen)
        aff = path_max_affinity(edge, walk.radius)
        if case == "dense":
            f, t = pair_indices(g, g, walk.radius)
            run_it = lambda: dense_propagate_reference(cams[0].reshape(3, -1), aff[0], f, t, g * g,  # noqa: E731
                                                       walk.beta, walk.logt)
        else:
            run_it = lambda: propagate_with_affinity(cams, aff, g, g, walk.radius, beta=walk.beta,  # noqa: E731
                                                     logt=walk.logt)
        warm_up = lambda: propagate_with_affinity(cams[..., :4, :4], path_max_affinity(edge[..., :4, :4], walk.radius),  # noqa: E731
                                                  4, 4, walk.radius, beta=walk.beta, logt=walk.logt)
    with torch.inference_mode():
        warm_up()  # compiles the CPU stencil (Numba) once, as a stage does on its first image
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        t0 = time.perf_counter()
        run_it()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "baseline_kb": baseline}


def source_stride() -> int:
    from affinitynet.models.boundary import STRIDE

    return STRIDE


def measure(case: str, args) -> dict:
    """One case in a child process: its result and peak RSS (MiB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", case, "--preset", args.preset, "--size", str(args.size),
           "--dense-grid", str(args.dense_grid), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_mib"] = result.pop("peak_kb") / 1024
    result["baseline_mib"] = result.pop("baseline_kb") / 1024
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="voc12_irn_resnet50")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dense-grid", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="")
    p.add_argument("--child", default="")
    args = p.parse_args()
    if args.child:
        result = child(args.child, args.preset, args.size, args.dense_grid, args.threads)
        result["peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(result))
        return
    grid = args.size // source_stride()
    cases = {"image": f"boundary walk, {args.size}x{args.size} image ({grid}x{grid} grid, network + walk)",
             "walk": f"sparse walk alone, {grid}x{grid} grid",
             "sparse": f"sparse walk, {args.dense_grid}x{args.dense_grid} grid",
             "dense": f"dense walk (IRN's formulation), {args.dense_grid}x{args.dense_grid} grid"}
    results = {c: measure(c, args) for c in cases}
    print(f"preset {args.preset}, {args.threads} CPU threads\n")
    print("| case | seconds | peak RSS (MiB) | RSS before the timed part (MiB) |")
    print("|---|---:|---:|---:|")
    for c, title in cases.items():
        r = results[c]
        print(f"| {title} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['baseline_mib']:.0f} |")
    ratio = results["dense"]["seconds"] / results["sparse"]["seconds"]
    n_full = (grid + 5) * (grid + 10)
    print(f"\ndense / sparse time on the {args.dense_grid}x{args.dense_grid} grid: {ratio:.1f}x")
    print(f"the dense walk at the {grid}x{grid} grid would hold N x N float32 matrices of "
          f"{(grid * grid) ** 2 * 4 / 2**30:.2f} GiB each ({n_full ** 2 * 4 / 2**30:.2f} GiB for IRN's padded N = {n_full})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"preset": args.preset, "threads": args.threads, "results": results, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
