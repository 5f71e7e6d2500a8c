"""Benchmark the random walk: sparse CSR propagation (ours) against the reference's dense matrix power.

    python benchmarks/bench_randomwalk.py [--threads N] [--repeats R] [--dense-large]

Every method runs in a fresh subprocess on identical seeded inputs (K=21 CAM channels, 448-dim
embeddings with region structure -> pair affinities at radius 5, beta 8, logt 8), so each one's
peak resident memory (VmHWM, reset before the timed runs) is its own. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet.ops.affinity import pair_affinity
from affinitynet.ops.pairs import pair_indices
from affinitynet.randomwalk import dense_propagate_reference, propagate_with_affinity

K, D, RADIUS, BETA, LOGT, UPSAMPLE = 21, 448, 5, 8.0, 8, 8
SMALL, LARGE = (63, 47), (125, 94)  # stride 8 and stride 4 grids of a ~500 x 375 image


def make_inputs(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded CAM (K, h, w) and embedding (D, h, w): ~8 regions with distinct embeddings plus noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=gen) * torch.tensor([h, w])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grid = torch.stack([ys, xs], dim=-1).reshape(-1, 1, 2)
    region = ((grid - centres) ** 2).sum(-1).argmin(1).reshape(h, w)
    region_vectors = torch.randn(8, D, generator=gen)
    feat = region_vectors[region].permute(2, 0, 1) + 0.1 * torch.randn(D, h, w, generator=gen)
    coarse = torch.rand(1, K, 4, 3, generator=gen) ** 3
    cam = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return cam.contiguous(), feat.contiguous()


def save_inputs(h: int, w: int, seed: int, path: str) -> float:
    """Write the CAM (K, h, w) and pair affinities (P,) every method reads to path (.npz); return the affinity seconds."""
    cam, feat = make_inputs(h, w, seed)
    idx_from, idx_to = pair_indices(h, w, RADIUS)
    start = time.perf_counter()
    aff = pair_affinity(feat, idx_from, idx_to)
    seconds = time.perf_counter() - start
    np.savez(path, cam=cam.numpy(), aff=aff.numpy())
    return seconds


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kb() -> int:
    """Peak resident memory of this process in KiB (Linux VmHWM; ru_maxrss elsewhere)."""
    # ru_maxrss survives fork + exec on Linux (it starts at the parent's size), VmHWM does not.
    hwm = _proc_status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss_kb() -> int:
    """Reset the peak to the current resident size where Linux allows it; return the current size in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass
    current = _proc_status_kb("VmRSS")
    return current if current is not None else peak_rss_kb()


def worker(method: str, inputs: str, repeats: int, out_path: str) -> dict:
    """Run one method in this process on the saved inputs; return time and memory, save the (K, h, w) scores."""
    data = np.load(inputs)
    cam, aff = torch.from_numpy(data["cam"]), torch.from_numpy(data["aff"])
    h, w = cam.shape[1:]
    n = h * w
    idx_from, idx_to = pair_indices(h, w, RADIUS)
    if method == "sparse":
        def run() -> torch.Tensor:
            return propagate_with_affinity(cam[None], aff[None], h, w, RADIUS, beta=BETA, logt=LOGT)[0]
        run()  # warm-up (thread pool, allocator)
    else:
        dtype = torch.float64 if method == "dense64" else torch.float32

        def run() -> torch.Tensor:
            out = dense_propagate_reference(cam.reshape(K, n).to(dtype), aff.to(dtype), idx_from, idx_to, n, BETA, LOGT)
            return out.reshape(K, h, w)
    rss_before = reset_peak_rss_kb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    rss_after = peak_rss_kb()
    np.save(out_path, result.double().numpy())
    return {
        "seconds": statistics.median(times),
        "peak_rss_mb": rss_after / 1024,
        "rss_delta_mb": (rss_after - rss_before) / 1024,
    }


def spawn(method: str, inputs: str, repeats: int, threads: int | None, tmp: str) -> dict:
    """Run worker() in a fresh interpreter; return its numbers and the propagated scores."""
    out_path = os.path.join(tmp, f"{method}_{os.path.basename(inputs)}.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, inputs,
           "--repeats", str(repeats), "--out", out_path]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    stats["scores"] = torch.from_numpy(np.load(out_path))
    return stats


def labels(scores: torch.Tensor) -> torch.Tensor:
    """Argmax labels (UPSAMPLE*h, UPSAMPLE*w) after bilinear upsampling of scores (K, h, w)."""
    h, w = scores.shape[1:]
    up = F.interpolate(scores[None], size=(h * UPSAMPLE, w * UPSAMPLE), mode="bilinear", align_corners=False)
    return up[0].argmax(0)


def compare(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(max abs difference, that relative to max |ref|, fraction of identical upsampled argmax labels)."""
    diff = (ours - ref).abs().max().item()
    same = (labels(ours) == labels(ref)).double().mean().item()
    return diff, diff / ref.abs().max().item(), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-large", action="store_true", help="also run the dense reference at 125x94 (minutes, ~2 GB)")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "INPUTS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats, args.out)))
        return

    rows = []
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        aff_seconds, inputs = {}, {}
        for size in (SMALL, LARGE):
            inputs[size] = os.path.join(tmp, f"inputs_{size[0]}x{size[1]}.npz")
            aff_seconds[size] = save_inputs(*size, args.seed, inputs[size])

        def run(method: str, size: tuple[int, int], repeats: int) -> dict:
            stats = spawn(method, inputs[size], repeats, args.threads, tmp)
            print(f"  {method:8s} {size[0]}x{size[1]}: {stats['seconds']:.3f} s", file=sys.stderr)
            return stats

        small = {m: run(m, SMALL, args.repeats) for m in ("sparse", "dense", "dense64")}
        large = {"sparse": run("sparse", LARGE, args.repeats)}
        if args.dense_large:
            large["dense"] = run("dense", LARGE, 1)

    def add(method: str, size, stats: dict, ref: dict | None, truth: dict | None, speedup: str) -> None:
        diff = compare(stats["scores"], ref["scores"]) if ref else None
        exact = compare(stats["scores"], truth["scores"]) if truth else None
        rows.append([
            method, f"{size[0]}x{size[1]}", str(size[0] * size[1]), f"{stats['seconds']:.3f}",
            f"{stats['peak_rss_mb']:.0f}", f"{stats['rss_delta_mb']:.0f}",
            f"{diff[0]:.2e} ({diff[1]:.1e} rel)" if diff else "-",
            f"{100 * diff[2]:.4f}%" if diff else "-",
            f"{exact[0]:.2e} ({exact[1]:.1e} rel)" if exact else "-",
            speedup,
        ])

    ratio = small["dense"]["seconds"] / small["sparse"]["seconds"]
    add("dense float32 (reference code)", SMALL, small["dense"], None, small["dense64"], "1")
    add("sparse CSR (ours)", SMALL, small["sparse"], small["dense"], small["dense64"], f"{ratio:.1f}x")
    add("dense float64", SMALL, small["dense64"], None, None, "-")
    n_small, n_large = SMALL[0] * SMALL[1], LARGE[0] * LARGE[1]
    estimate = small["dense"]["seconds"] * (n_large / n_small) ** 3
    if "dense" in large:
        ratio_large = large["dense"]["seconds"] / large["sparse"]["seconds"]
        add("dense float32 (reference code)", LARGE, large["dense"], None, None, "1")
        add("sparse CSR (ours)", LARGE, large["sparse"], large["dense"], None, f"{ratio_large:.1f}x")
    else:
        add("sparse CSR (ours)", LARGE, large["sparse"], None, None, f"~{estimate / large['sparse']['seconds']:.0f}x (est.)")

    header = ["method", "grid", "N", "seconds (median)", "peak RSS MB", "RSS delta MB",
              "max abs diff vs dense f32", f"labels = dense f32 (x{UPSAMPLE} up)", "max abs diff vs dense f64", "speed-up"]
    print(f"K={K}, D={D}, radius={RADIUS}, beta={BETA:g}, logt={LOGT}, torch threads={threads}, "
          f"repeats={args.repeats}, load average {os.getloadavg()[0]:.2f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\npair affinities from the embedding (same for all methods): "
          f"{aff_seconds[SMALL]:.3f} s at {SMALL[0]}x{SMALL[1]}, "
          f"{aff_seconds[LARGE]:.3f} s at {LARGE[0]}x{LARGE[1]}")
    if "dense" not in large:
        print(f"dense at {LARGE[0]}x{LARGE[1]} skipped (--dense-large runs it): estimated {estimate:.0f} s "
              f"from N^3 scaling, {3 * n_large**2 * 4 / 2**30:.1f} GiB for three N x N float32 matrices")


if __name__ == "__main__":
    main()
