"""The ``affinitynet`` command line: run, demo, data synth, eval, predict, sweep, calibrate, export, check."""
from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .errors import AffinityNetError

def _load_config(spec: str, overrides):
    from . import config

    return config.load(config.resolve_config_path(spec), overrides or [])


# ----------------------------------------------------------------------------- commands

def cmd_run(args) -> int:
    from .runner import run_pipeline

    cfg = _load_config(args.config, args.set)
    results = run_pipeline(cfg, Path(args.out), start=args.start, stop=args.stop, force=args.force or [])
    return 0 if all(r.status in ("done", "skipped", "not needed") for r in results) else 1


def cmd_demo(args) -> int:
    from .commands.demo import run_demo

    run_demo(Path(args.out), overrides=args.set or [])
    return 0


def cmd_data_synth(args) -> int:
    from .data.synthetic import generate

    out = generate(Path(args.out), train=args.train, val=args.val, size=args.size, classes=args.classes,
                   seed=args.seed)
    print(f"wrote the synthetic set to {out} ({args.train} train + {args.val} val images, "
          f"{args.classes} classes, {args.size} px)")
    return 0


def cmd_data_voc_aug(args) -> int:
    from .data.voc_aug import prepare_voc_aug
    from .logs import progress

    done = prepare_voc_aug(Path(args.root), Path(args.sbd), progress=lambda items, desc: progress(items, desc=desc))
    print(f"wrote {done['masks']} masks to {done['folder']} ({done['from_voc']} from VOC's SegmentationClass, "
          f"{done['from_sbd']} from SBD) and the {done['train_aug']} names of {done['list']}")
    return 0


def cmd_eval(args) -> int:
    from .commands.evaluate import evaluate_command

    evaluate_command(pred_dir=Path(args.pred), data=args.data, split=args.split,
                     out=Path(args.out) if args.out else None, overrides=args.set or [])
    return 0


def cmd_predict(args) -> int:
    from .commands.predict import predict_images

    predict_images(Path(args.checkpoint), [Path(p) for p in args.images], Path(args.out), device=args.device,
                   scales=args.scales, flip=args.flip, crf=args.crf, fmt=args.format,
                   max_long_side=args.max_long_side)
    return 0


def cmd_sweep(args) -> int:
    from .commands.sweep import sweep_command

    sweep_command(Path(args.run_dir), args.stage, args.param, device=args.device)
    return 0


def cmd_calibrate(args) -> int:
    from .commands.calibrate import calibrate_command

    calibrate_command(Path(args.run_dir), args.stage, args.param, masks=args.masks, seed=args.seed,
                      json_path=Path(args.json) if args.json else None, apply=args.apply, device=args.device,
                      values=args.values, images=args.images)
    return 0


def cmd_export(args) -> int:
    from .commands.export import export_labels

    export_labels(Path(args.run_dir), args.format, Path(args.out), stage=args.stage, confidence=args.confidence)
    return 0


def cmd_check(args) -> int:
    from .commands.check import check_command

    return check_command(_load_config(args.config, args.set), processes=args.processes)


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per verb."""
    from .stages import STAGE_NAMES

    p = argparse.ArgumentParser(
        prog="affinitynet",
        description="Pixel-level segmentation labels from image-level tags (AffinityNet, CVPR 2018).")
    p.add_argument("--version", action="version", version=f"affinitynet {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add_set(sp):
        sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable), e.g. --set cam.epochs=5")

    r = sub.add_parser("run", help="run the pipeline (or part of it) into a run directory",
                       description="Run the stages in order: " + ", ".join(STAGE_NAMES) + ". Finished stages "
                       "whose inputs did not change are skipped; interrupted stages resume.")
    r.add_argument("config", help="YAML config file or built-in preset name (synthetic_cpu, voc12_resnet38)")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--from", dest="start", choices=STAGE_NAMES, metavar="STAGE", help="first stage to run")
    r.add_argument("--to", dest="stop", choices=STAGE_NAMES, metavar="STAGE", help="last stage to run")
    r.add_argument("--force", action="append", choices=STAGE_NAMES, metavar="STAGE",
                   help="redo this stage even if it finished (repeatable)")
    add_set(r)
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="generate the synthetic set and run the CPU preset end to end",
                       description="Generates the built-in synthetic dataset (if absent) and runs the "
                       "synthetic_cpu preset end to end; prints the per-stage table.")
    d.add_argument("--out", default="affinitynet-demo", help="demo directory (default: ./affinitynet-demo)")
    add_set(d)
    d.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="dataset tools (synthetic set generator, VOC + SBD preparation)")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="write the built-in synthetic dataset in VOC layout")
    s.add_argument("out", help="output directory")
    s.add_argument("--train", type=int, default=240, help="training images (default 240)")
    s.add_argument("--val", type=int, default=60, help="validation images (default 60)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    s.add_argument("--classes", type=int, default=5, help="number of object classes (default 5)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=cmd_data_synth)
    va = dsub.add_parser("voc-aug", help="VOC 2012 + SBD as downloaded -> SegmentationClassAug/ and train_aug.txt",
                         description="Writes ROOT/SegmentationClassAug/NAME.png (8-bit class ids: VOC's own "
                         "SegmentationClass mask for VOC's train and val images, SBD's cls/NAME.mat elsewhere) and "
                         "ROOT/ImageSets/Segmentation/train_aug.txt (SBD train + val + VOC train, minus VOC val: "
                         "10,582 names), what the VOC presets read. Needs scipy for SBD's .mat files.")
    va.add_argument("root", help="VOC 2012 folder (VOCdevkit/VOC2012, or a folder holding it)")
    va.add_argument("--sbd", required=True, help="SBD's folder: benchmark_RELEASE, or its dataset/ folder")
    va.set_defaults(func=cmd_data_voc_aug)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])

    e = sub.add_parser("eval", help="score a folder of label PNGs against ground truth (mIoU)")
    e.add_argument("--pred", required=True, help="folder of predicted palette PNGs, one per image")
    e.add_argument("--data", required=True, help="a config file / preset, or a VOC-layout dataset root")
    e.add_argument("--split", default=None, help="split to score (default: the config's val split)")
    e.add_argument("--out", default=None, help="metrics JSON (default: metrics.json next to the predictions)")
    add_set(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="segment your own images with a trained segmentation checkpoint")
    pr.add_argument("--checkpoint", required=True, help="segmentation checkpoint (RUN_DIR/segmentation/final.pt)")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder for palette PNGs")
    pr.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    pr.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales (default 1.0)")
    pr.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False, help="flip averaging")
    pr.add_argument("--crf", action=argparse.BooleanOptionalAction, default=False, help="dense CRF refinement")
    pr.add_argument("--max-long-side", type=int, default=None, metavar="PIXELS",
                    help="shrink larger images so that the largest scale's input has this long side; masks keep "
                         "the image size (default: the checkpoint's segmentation.test_max_long_side; 0: no bound)")
    pr.add_argument("--format", choices=("png", "voc-test"), default="png",
                    help="png: OUT/NAME.png; voc-test: the VOC evaluation server's "
                         "results/VOC2012/Segmentation/comp6_test_cls layout")
    pr.set_defaults(func=cmd_predict)

    sw = sub.add_parser("sweep", help="mIoU of a stage's labels over a parameter, from the run's saved outputs",
                        description="Score a finished run's labels at several values of one parameter without "
                        "re-running a network: cam bg_threshold (the CAM files), random_walk bg_threshold (with "
                        "random_walk.background=threshold: the walk's saved scores), alpha, beta, logt "
                        "(the cached pair affinities, random_walk.cache_affinity, else computed once per image). "
                        "Prints a table and writes RUN_DIR/sweeps/STAGE_PARAM.json and .png.")
    sw.add_argument("run_dir", help="a run directory")
    sw.add_argument("--stage", required=True, choices=("cam", "random_walk"), help="whose labels to sweep")
    sw.add_argument("--param", required=True, metavar="NAME=V1,V2,...", help="e.g. alpha=4,8,16,24 or "
                    "bg_threshold=0.1,0.15,0.2")
    sw.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    sw.set_defaults(func=cmd_sweep)

    ca = sub.add_parser("calibrate", help="choose a threshold of a finished run with a few masks, or with none",
                        description="Choose the CAM background threshold (--stage cam --param bg_threshold) or the "
                        "walk's background (--stage random_walk --param alpha, or bg_threshold with "
                        "random_walk.background=threshold) from the run's saved files. With --masks N: the best "
                        "mIoU on N images drawn (--seed) from those that have masks. Without: label-free, the lowest "
                        "normalised cut of the walk's affinity graph; no mask is read. Prints the candidates, the "
                        "choice, how stable it is over bootstrap resamples of the images, and the --set line that "
                        "applies it. See docs/calibration.md.")
    ca.add_argument("run_dir", help="a run directory (make_cam done; random_walk done for the walk's settings and "
                                    "for the label-free choice)")
    ca.add_argument("--stage", required=True, choices=("cam", "random_walk"), help="whose labels the value sets")
    ca.add_argument("--param", required=True, choices=("bg_threshold", "alpha"), help="the parameter to choose")
    ca.add_argument("--masks", type=int, default=None, metavar="N",
                    help="choose by mIoU on N images that have masks (default: label-free, no mask read)")
    ca.add_argument("--seed", type=int, default=0, help="draws the N images, and the bootstrap (default 0)")
    ca.add_argument("--json", default=None, metavar="PATH",
                    help='write {"stage", "param", "value", "method", "masks_used", ...} to PATH')
    ca.add_argument("--apply", action="store_true",
                    help="rewrite the stage's outputs at the chosen value from the saved files and record it in "
                         "the run's config; later stages redo on the next 'affinitynet run' with the printed --set")
    ca.add_argument("--values", type=float, nargs="+", default=None, metavar="V",
                    help="the candidate values (default: a grid around the usual settings; the config's is added)")
    ca.add_argument("--images", type=int, default=0, metavar="N",
                    help="label-free: read N training images drawn with --seed (default: all)")
    ca.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ca.set_defaults(func=cmd_calibrate)

    ex = sub.add_parser("export", help="write a run's labels for other tools (VOC aug, VOC test server, ...)",
                        description="Formats: index (8-bit class-id PNGs, 255 ignored), palette (VOC palette "
                        "PNGs), voc-aug (SegmentationClassAug/ + list files for mmsegmentation and "
                        "deeplab-pytorch), voc-test (the VOC server's results/ layout and a .tar.gz), coco "
                        "(index PNGs of a COCO run + classes.json). See docs/exports.md.")
    ex.add_argument("run_dir", help="a run directory")
    ex.add_argument("--format", required=True, choices=("index", "palette", "voc-aug", "voc-test", "coco"))
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--stage", default="random_walk", choices=("random_walk", "segment"),
                    help="random_walk: the training images' pseudo labels (default); segment: the evaluation "
                         "split's predictions")
    ex.add_argument("--confidence", type=float, default=None, metavar="T",
                    help="random_walk only: pixels whose share of the walk's scores is below T become 255")
    ex.set_defaults(func=cmd_export)

    c = sub.add_parser("check", help="validate a config and its data before a long run; report all problems")
    c.add_argument("config", help="YAML config file or preset name")
    c.add_argument("--processes", type=int, default=None, metavar="N",
                   help="the number of processes the run will have (torchrun's nnodes x nproc_per_node): each "
                        "trained batch_size must split evenly over them (default: $WORLD_SIZE, else 1)")
    add_set(c)
    c.set_defaults(func=cmd_check)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a cluster scheduler's stop) raised in the main thread: the run stops as on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_stops_the_run():
    """Turn SIGTERM into ``Terminated`` for the block (main thread only); the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    """Entry point of the console script; exit status 0, 1 (problems found), 2 (error), 130 (Ctrl-C), 143 (SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_stops_the_run():
            return int(args.func(args) or 0)
    except AffinityNetError as e:
        if args.debug:
            raise
        print(f"affinitynet: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ...: the file and the reason, no traceback
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        hint = ("; free some space and re-run the same command to resume (finished work is kept)"
                if e.errno == errno.ENOSPC else "")
        print(f"affinitynet: error: {where}{e.strerror or e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        stopped = "stopped by SIGTERM" if isinstance(e, Terminated) else "interrupted"
        print(f"affinitynet: {stopped}; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
