"""Benchmark the random walk: the compiled stencil and the sparse CSR product (ours) against the reference's dense walk.

    python benchmarks/bench_randomwalk.py [--threads N] [--repeats R] [--dense-large] [--json PATH]

Also the walk as users call it, ``affinitynet.randomwalk.propagate(cam, feat)``: the pair affinities from the
448-channel embedding, then the walk, with the affinities from gathered pairs (``pair_affinity``, before) and
from shifted slices (``radius_pair_affinity``, now); both give the same scores bit for bit.

Cases: (63x47, 21 channels), (63x47, 3 channels: two classes and background, what a typical image
propagates), (125x94, 3 channels: stride 4), and with --dense-large (125x94, 21 channels).
Every method runs in a fresh subprocess on identical seeded inputs (448-dim embeddings with region
structure -> pair affinities at radius 5, beta 8, logt 8), so each one's peak resident memory
(VmHWM, reset before the timed runs) is its own. The dense reference runs in every case (at 125x94
it takes minutes and ~1.5 GiB; without --dense-large its time there is estimated from the N^3
scaling). Prints a markdown table.
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
from affinitynet.randomwalk import dense_propagate_reference, propagate, propagate_with_affinity

K, D, RADIUS, BETA, LOGT, UPSAMPLE = 21, 448, 5, 8.0, 8, 8
SMALL, LARGE = (63, 47), (125, 94)  # stride 8 and stride 4 grids of a ~500 x 375 image
CASES = ((SMALL, 21), (SMALL, 3), (LARGE, 3))  # (grid, channels); --dense-large adds (LARGE, 21)


def make_inputs(h: int, w: int, seed: int, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded CAM (k, h, w) and embedding (D, h, w): ~8 regions with distinct embeddings plus noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=gen) * torch.tensor([h, w])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grid = torch.stack([ys, xs], dim=-1).reshape(-1, 1, 2)
    region = ((grid - centres) ** 2).sum(-1).argmin(1).reshape(h, w)
    region_vectors = torch.randn(8, D, generator=gen)
    feat = region_vectors[region].permute(2, 0, 1) + 0.1 * torch.randn(D, h, w, generator=gen)
    coarse = torch.rand(1, K, 4, 3, generator=gen) ** 3
    cam = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return cam[:k].contiguous(), feat.contiguous()


def save_inputs(h: int, w: int, k: int, seed: int, path: str) -> float:
    """Write the CAM (k, h, w) and pair affinities (P,) every method reads to path (.npz); return the affinity seconds."""
    cam, feat = make_inputs(h, w, seed, k)
    idx_from, idx_to = pair_indices(h, w, RADIUS)
    start = time.perf_counter()
    aff = pair_affinity(feat, idx_from, idx_to)
    seconds = time.perf_counter() - start
    np.savez(path, cam=cam.numpy(), aff=aff.numpy(), feat=feat.numpy())
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
    k, h, w = cam.shape
    n = h * w
    idx_from, idx_to = pair_indices(h, w, RADIUS)
    feat = torch.from_numpy(data["feat"])
    if method in ("sparse", "stencil"):
        def run() -> torch.Tensor:
            return propagate_with_affinity(cam[None], aff[None], h, w, RADIUS, beta=BETA, logt=LOGT, method=method)[0]
        run()  # warm-up (thread pool, allocator; the stencil's compiled kernel loads from Numba's cache)
    elif method == "propagate":
        def run() -> torch.Tensor:
            return propagate(cam, feat, radius=RADIUS, beta=BETA, logt=LOGT)
        run()
    elif method == "propagate_gather":  # propagate as it was: the affinities of gathered pairs
        def run() -> torch.Tensor:
            with torch.no_grad():
                gathered = pair_affinity(feat, idx_from, idx_to)
            return propagate_with_affinity(cam[None], gathered[None], h, w, RADIUS, beta=BETA, logt=LOGT)[0]
        run()
    else:
        dtype = torch.float64 if method == "dense64" else torch.float32

        def run() -> torch.Tensor:
            out = dense_propagate_reference(cam.reshape(k, n).to(dtype), aff.to(dtype), idx_from, idx_to, n, BETA, LOGT)
            return out.reshape(k, h, w)
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
    parser.add_argument("--dense-large", action="store_true",
                        help="run the dense reference at 125x94 too (minutes, ~1.5 GiB) and add 125x94 x 21 channels")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "INPUTS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats, args.out)))
        return

    cases = CASES + (((LARGE, 21),) if args.dense_large else ())
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    rows, records, aff_seconds = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for size, k in cases:
            inputs = os.path.join(tmp, f"inputs_{size[0]}x{size[1]}_{k}.npz")
            aff_seconds[size] = save_inputs(*size, k, args.seed, inputs)
            dense_runs = size == SMALL or args.dense_large
            stats = {}
            for method in ("propagate_gather", "propagate", "stencil", "sparse") + (("dense",) if dense_runs else ()) + \
                    (("dense64",) if (size, k) == (SMALL, K) else ()):
                stats[method] = spawn(method, inputs, args.repeats if method != "dense" or size == SMALL else 1,
                                      args.threads, tmp)
                print(f"  {method:8s} {size[0]}x{size[1]} x {k}: {stats[method]['seconds']:.3f} s", file=sys.stderr)
            if "dense" in stats:
                dense_s, dense_note = stats["dense"]["seconds"], ""
            else:  # N^3 scaling of the same channel count's dense time at 63x47
                small = next((r for r in records if r["grid"] == f"{SMALL[0]}x{SMALL[1]}" and r["channels"] == k
                              and r["method"] == "dense"), None)
                dense_s = small["seconds"] * (size[0] * size[1] / (SMALL[0] * SMALL[1])) ** 3 if small else float("nan")
                dense_note = " (est.)"
            truth = stats.get("dense64")
            for method in stats:
                if method == "dense64":
                    continue
                ref = stats.get("dense") if method != "dense" else None
                ref = ref or (stats["sparse"] if method == "stencil" else None)
                if method == "propagate":  # bit for bit what it gave before
                    record_same = torch.equal(stats["propagate"]["scores"], stats["propagate_gather"]["scores"])
                diff = compare(stats[method]["scores"], ref["scores"]) if ref else None
                exact = compare(stats[method]["scores"], truth["scores"]) if truth else None
                record = {"method": method, "grid": f"{size[0]}x{size[1]}", "channels": k,
                          "seconds": stats[method]["seconds"], "peak_rss_mb": stats[method]["peak_rss_mb"],
                          "rss_delta_mb": stats[method]["rss_delta_mb"], "dense_seconds": dense_s,
                          "speedup_vs_dense": dense_s / stats[method]["seconds"],
                          "reference": ("dense" if "dense" in stats else "sparse") if ref else None,
                          "max_abs_diff": diff[0] if diff else None, "same_labels": diff[2] if diff else None,
                          "max_abs_diff_vs_dense64": exact[0] if exact else None}
                records.append(record)
                name = {"stencil": "stencil (ours, Numba)", "sparse": "sparse CSR (ours)",
                        "dense": "dense float32 (reference code)",
                        "propagate_gather": "propagate(cam, feat): gathered affinities + walk (before)",
                        "propagate": "propagate(cam, feat): slice affinities + walk (now)"}[method]
                if method.startswith("propagate"):
                    record["vs_dense_plus_affinities"] = (dense_s + aff_seconds[size]) / stats[method]["seconds"]
                if method == "propagate":
                    record["same_as_before"] = record_same
                    name += " (same scores bit for bit)" if record_same else " (SCORES DIFFER from before)"
                rows.append([
                    name, record["grid"], str(k), f"{record['seconds']:.3f}", f"{record['peak_rss_mb']:.0f}",
                    f"{record['rss_delta_mb']:.0f}",
                    f"{diff[0]:.2e} vs {record['reference']}" if diff else "-",
                    f"{100 * diff[2]:.4f}%" if diff else "-",
                    f"{exact[0]:.2e}" if exact else "-",
                    "1" if method == "dense" else f"{record['speedup_vs_dense']:.0f}x{dense_note}",
                ])

    header = ["method", "grid", "channels", "seconds (median)", "peak RSS MB", "RSS delta MB",
              "max abs diff", f"same labels (x{UPSAMPLE} up)", "max abs diff vs dense f64", "speed-up vs dense"]
    print(f"D={D}, radius={RADIUS}, beta={BETA:g}, logt={LOGT}, torch threads={threads}, "
          f"repeats={args.repeats}, load average {os.getloadavg()[0]:.2f}")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\npair affinities from the embedding (same for all methods, not in the times): "
          + ", ".join(f"{s:.3f} s at {g[0]}x{g[1]}" for g, s in aff_seconds.items()))
    for r in records:
        if r["method"].startswith("propagate"):
            print(f"{r['method']} at {r['grid']} x {r['channels']}: {r['speedup_vs_dense']:.0f}x the dense walk alone, "
                  f"{r['vs_dense_plus_affinities']:.0f}x the dense walk + the gathered affinities")
    if not args.dense_large:
        n_large = LARGE[0] * LARGE[1]
        print(f"dense at {LARGE[0]}x{LARGE[1]} skipped (--dense-large runs it): its time is estimated from N^3 "
              f"scaling, {3 * n_large**2 * 4 / 2**30:.1f} GiB for three N x N float32 matrices")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": threads, "repeats": args.repeats, "load_average": os.getloadavg()[0],
                       "rows": records}, f, indent=1)


if __name__ == "__main__":
    main()
