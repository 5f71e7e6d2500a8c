"""Peak memory (RSS) of make_cam and random_walk on one image, with and without the input-size bound.

    python benchmarks/bench_memory.py [--presets synthetic_cpu voc12_resnet38] [--sizes 500x375 2000x1500]
                                      [--bounds 1000 0] [--stages make_cam random_walk] [--limit-gb 16]
                                      [--threads 2]

Each case runs in a fresh child process on the CPU: it builds the preset's network with random weights
(memory does not depend on them), then runs the stage's own per-image code once (``cam_sources.image_cams``
at the preset's scales, largest first, and flip; ``random_walk.walk_scores`` on two classes' CAMs at the preset's
``random_walk.scale``, radius and steps) on a random image of the given size. The parent reads the child's
peak resident set size from ``wait4``; the table gives it, the child's RSS before the image (interpreter,
torch and weights) and the difference, the image's own cost. A child runs under an address-space limit
(``--limit-gb``) so a case too large for the machine fails alone; it is reported as not fitting.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import time

CLASSES = {"synthetic_cpu": 5, "voc12_resnet38": 20}


def child(preset: str, stage: str, size: str, bound: int, threads: int) -> None:
    """Run one case in this process; print ``baseline_kb`` before the image (the parent reads the peak)."""
    import numpy as np
    import torch

    from affinitynet.config import load, resolve_config_path

    torch.set_num_threads(threads)
    cfg = load(resolve_config_path(preset))
    w, h = map(int, size.split("x"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    with torch.inference_mode():
        if stage == "make_cam":
            from affinitynet.models import build_classifier
            from affinitynet.stages.cam_sources import image_cams

            # largest scale first: a case too large for the limit fails at once (the sum does not depend on order)
            section = dataclasses.replace(cfg.cam, pretrained="", max_long_side=bound,
                                          scales=sorted(cfg.cam.scales, reverse=True))
            model = build_classifier(section, CLASSES[preset]).eval()
            labels = np.zeros(CLASSES[preset], dtype=np.float32)
            labels[:2] = 1
            run = lambda: image_cams(model, image, labels, section)  # noqa: E731
        else:
            import tempfile

            from affinitynet.layout import RunLayout
            from affinitynet.models import build_affinitynet
            from affinitynet.stages.affinity_sources import affinity_source
            from affinitynet.stages.random_walk import walk_scores

            # the stage's own source, reading an untrained network from a run directory as it would a trained one
            layout = RunLayout(tempfile.mkdtemp())
            model = build_affinitynet(dataclasses.replace(cfg.affinitynet, pretrained=""))
            layout.network("train_affinitynet").parent.mkdir(parents=True)
            torch.save({"model": model.state_dict()}, layout.network("train_affinitynet"))
            source = affinity_source(cfg, layout, torch.device("cpu"))
            section = dataclasses.replace(cfg.random_walk, max_long_side=bound)
            maps = rng.random((2, h, w), dtype=np.float32)
            run = lambda: walk_scores(source, image, np.array([1, 2]), maps, section, torch.device("cpu"))  # noqa: E731
        print(f"baseline_kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
        t0 = time.time()
        out = run()
        print(f"seconds {time.time() - t0:.1f} output {tuple(out[1].shape if stage == 'make_cam' else out.shape)}",
              flush=True)


def measure(preset: str, stage: str, size: str, bound: int, threads: int, limit_gb: float) -> dict:
    """Run one case in a child process under an address-space limit; its peak RSS and what it printed."""
    limit = int(limit_gb * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, __file__, "--child", preset, stage, size, str(bound), str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cap, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    info = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    peak_gb = usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    result = {"preset": preset, "stage": stage, "size": size, "bound": bound, "rc": proc.returncode,
              "peak_gb": peak_gb, "baseline_gb": int(info.get("baseline_kb", 0)) / 2**20,
              "seconds": info.get("seconds", "").split(" ")[0], "output": info.get("seconds", "")}
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["?"])[-1]
        result["error"] = ("did not fit in the address-space limit" if "alloc" in last or "memory" in last.lower()
                           else last[:120])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["synthetic_cpu", "voc12_resnet38"])
    p.add_argument("--sizes", nargs="+", default=["500x375", "2000x1500"], help="image sizes WxH")
    p.add_argument("--bounds", nargs="+", type=int, default=[1000, 0], help="max_long_side values (0: no bound)")
    p.add_argument("--stages", nargs="+", default=["make_cam", "random_walk"])
    p.add_argument("--limit-gb", type=float, default=16.0, help="address-space limit of each child (GiB)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=5, metavar=("PRESET", "STAGE", "SIZE", "BOUND", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        preset, stage, size, bound, threads = args.child
        child(preset, stage, size, int(bound), int(threads))
        return
    print("| preset | stage | image | max_long_side | peak RSS | before the image | image's cost | time |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for stage in args.stages:
            for size in args.sizes:
                for bound in args.bounds:
                    r = measure(preset, stage, size, bound, args.threads, args.limit_gb)
                    if r["rc"] == 0:
                        cells = (f"{r['peak_gb']:.2f} GB", f"{r['baseline_gb']:.2f} GB",
                                 f"{r['peak_gb'] - r['baseline_gb']:.2f} GB", f"{r['seconds']} s")
                    else:
                        cells = (f"> {args.limit_gb:g} GB: {r['error']}", "", "", "")
                    print(f"| {preset} | {stage} | {size} | {bound or 'none'} | " + " | ".join(cells) + " |",
                          flush=True)


if __name__ == "__main__":
    main()
