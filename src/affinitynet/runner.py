"""The stage runner: the manifest of finished stages, skipping what is done, redoing what changed."""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from . import config as config_mod
from .config import Config
from .context import StageContext
from .errors import AffinityNetError
from .io import file_sha256, read_json, write_json, write_text
from .layout import RunLayout
from .lock import run_lock
from .logs import setup_logging
from .stages import STAGE_NAMES, STAGES, StageSpec, stage_spec
from .validate import require_valid


# ----------------------------------------------------------------------------- manifest

def _stage_key(cfg: Config, spec: StageSpec, manifest: dict) -> str:
    """Identity of a stage's outputs: its config inputs plus the identity of each upstream stage's outputs."""
    h = hashlib.sha256()
    h.update(config_mod.subset_hash(cfg, spec.sections, spec.exclude).encode())
    for path in spec.files(cfg) if spec.files else ():
        h.update(f"|{path}:{file_sha256(path) if Path(path).is_file() else 'missing'}".encode())
    for up in spec.upstream:
        rec = manifest.get(up, {})
        h.update(f"|{up}:{rec.get('key', '')}:{rec.get('finished', '')}".encode())
    return h.hexdigest()[:16]


def load_manifest(run_dir: Path) -> dict:
    """The run's manifest (``{}`` for a new run)."""
    p = RunLayout(run_dir).manifest
    return read_json(p).get("stages", {}) if p.exists() else {}


def _save_manifest(run_dir: Path, stages: dict) -> None:
    write_json(RunLayout(run_dir).manifest, {"stages": stages})


def _outputs_present(run_dir: Path, spec: StageSpec) -> bool:
    return all((run_dir / o).exists() for o in spec.outputs)


def remove_stale_temp_files(run_dir: Path) -> int:
    """Delete the temporary files (``.NAME.*.tmp*``) a killed process left behind; returns how many."""
    stale = [p for p in Path(run_dir).rglob(".*.tmp*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _clear_outputs(run_dir: Path, spec: StageSpec) -> None:
    for o in spec.outputs:
        p = run_dir / Path(o).parts[0]  # the stage's whole folder: classifier/last.pt must not be resumed from either
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ----------------------------------------------------------------------------- the runner

@dataclass
class StageResult:
    name: str
    status: str  # done | skipped | not needed | failed
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def select_stages(start: str | None, stop: str | None) -> list[StageSpec]:
    """Stages from ``start`` to ``stop`` inclusive, in pipeline order."""
    names = list(STAGE_NAMES)
    i = names.index(stage_spec(start).name) if start else 0
    j = names.index(stage_spec(stop).name) if stop else len(names) - 1
    if i > j:
        raise AffinityNetError(f"--from {start} comes after --to {stop}")
    return list(STAGES[i:j + 1])


def run_pipeline(cfg: Config, run_dir: Path, *, start: str | None = None, stop: str | None = None,
                 force: Iterable[str] = (), verbose: bool = True) -> list[StageResult]:
    """Run the selected stages in order, skipping finished ones whose inputs did not change."""
    from .dist import init_distributed, is_initialized, select_device, threads_per_process

    require_valid(cfg)
    run_dir = Path(run_dir)
    owns_group = not is_initialized()  # a process group joined here is left here once every stage ran
    info = init_distributed(cfg.runtime.device)
    device = select_device(cfg.runtime.device, info.local_rank)
    threads = threads_per_process(cfg.runtime.threads, info.local_world_size)
    if threads > 0:
        torch.set_num_threads(threads)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, info.is_main) as unlocked:
        return _run_stages(cfg, run_dir, info, device, owns_group, start=start, stop=stop, force=force,
                           verbose=verbose, note=unlocked)


def _run_stages(cfg: Config, run_dir: Path, info, device: torch.device, owns_group: bool, *, start, stop, force,
                verbose: bool, note: str = "") -> list[StageResult]:
    """``run_pipeline`` once the run directory is locked (``note``: why it could not be): the stages, in order."""
    from .dist import available_cores, barrier, broadcast_object, cleanup, seed_everything

    barrier()
    log = setup_logging(RunLayout(run_dir).log, verbose=verbose, main_process=info.is_main)
    force = {stage_spec(f).name for f in force}
    selected = select_stages(start, stop)

    if info.is_main:
        write_text(RunLayout(run_dir).config, config_mod.dump(cfg))
        remove_stale_temp_files(run_dir)
        if cfg.data.kind == "synthetic":
            from .data import ensure_synthetic

            ensure_synthetic(cfg.data)
    barrier()
    log.info(f"run {run_dir}  device={device}  processes={info.world_size}  threads={torch.get_num_threads()}")
    if note:
        log.info(f"note: {note}")
    if device.type == "cpu" and torch.get_num_threads() * info.local_world_size > available_cores():
        log.info(f"note: {info.local_world_size} process(es) x {torch.get_num_threads()} threads on "
                 f"{available_cores()} cores oversubscribes them; runtime.threads=0 shares the cores out")

    ctx = StageContext(cfg=cfg, run_dir=run_dir, device=device, log=log, rank=info.rank,
                       world_size=info.world_size, local_rank=info.local_rank,
                       local_world_size=info.local_world_size)
    results: list[StageResult] = []
    for spec in selected:
        # Rank 0 alone reads the manifest and decides; every rank follows that one decision, so ranks can
        # neither disagree about skipping a stage nor read manifest.json while rank 0 rewrites it.
        decision = None
        if info.is_main:
            manifest = load_manifest(run_dir)
            key = _stage_key(cfg, spec, manifest)
            rec = manifest.get(spec.name, {})
            finished = (rec.get("status") == "done" and rec.get("key") == key and _outputs_present(run_dir, spec)
                        and spec.name not in force)
            decision = (key, rec, finished)
        key, rec, finished = broadcast_object(decision)
        if spec.needed is not None and not spec.needed(cfg):
            log.info(f"[{spec.name}] not needed with this config: skipped")
            results.append(StageResult(spec.name, "not needed"))
            continue
        if finished:
            log.info(f"[{spec.name}] finished earlier with the same inputs: skipped")
            results.append(StageResult(spec.name, "skipped", rec.get("seconds", 0.0), rec.get("summary", {})))
            continue
        if info.is_main:
            if rec.get("key") != key or spec.name in force:
                _clear_outputs(run_dir, spec)  # outputs of other inputs must not be resumed from
            manifest[spec.name] = {"status": "running", "key": key, "started": time.time()}
            _save_manifest(run_dir, manifest)
        barrier()
        log.info(f"[{spec.name}] {spec.help}")
        ctx.stage = spec.name
        seed_everything(cfg.runtime.seed, info.rank)
        t0 = time.time()
        try:
            summary = spec.run(ctx) or {}
        except BaseException as e:
            results.append(StageResult(spec.name, "failed", time.time() - t0))
            if info.is_main:
                if isinstance(e, KeyboardInterrupt):  # Ctrl-C, SIGTERM: a terminated pool worker's half-written file
                    remove_stale_temp_files(run_dir)
                _print_table(results, log)
            raise
        seconds = time.time() - t0
        summary = broadcast_object(summary)
        barrier()
        if info.is_main:
            manifest = load_manifest(run_dir)
            manifest[spec.name] = {"status": "done", "key": key, "started": manifest[spec.name]["started"],
                                   "finished": time.time(), "seconds": round(seconds, 2),
                                   "outputs": list(spec.outputs), "summary": summary}
            _save_manifest(run_dir, manifest)
        barrier()
        results.append(StageResult(spec.name, "done", seconds, summary))
        log.info(f"[{spec.name}] done in {seconds:.1f} s")
    if info.is_main:
        _print_table(results, log)
    if owns_group:
        cleanup()
    return results


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def summary_table(results: list[StageResult]) -> str:
    """A plain-text table: stage, status, seconds, and each stage's key results."""
    rows = [("stage", "status", "time", "result")]
    for r in results:
        res = "  ".join(f"{k}={_fmt(v)}" for k, v in r.summary.items() if not isinstance(v, (dict, list)))
        rows.append((r.name, r.status, f"{r.seconds:.1f}s", res))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3])
        if n == 0:
            lines.append("-" * (sum(widths) + 6 + max(len(row[3]) for row in rows)))
    return "\n".join(lines)


def _print_table(results: list[StageResult], log: logging.Logger) -> None:
    log.info("\n" + summary_table(results))
    if all(r.status in ("skipped", "not needed") for r in results):
        log.info("nothing to do: every selected stage finished earlier with the same inputs")
