"""Run directories: resolved config, manifest of finished stages, resumable per-image work, the stage runner."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from . import config as config_mod
from .config import Config
from .errors import AffinityNetError, DataError, StageError
from .io import file_sha256, read_json, write_json, write_text
from .pipeline import STAGE_NAMES, STAGES, StageSpec, stage_spec

LOG = logging.getLogger("affinitynet")


# ----------------------------------------------------------------------------- logging and progress

class _TqdmHandler(logging.StreamHandler):
    """Console handler that writes through tqdm so log lines do not break progress bars."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(log_file: Path | None = None, *, verbose: bool = True, main_process: bool = True) -> logging.Logger:
    """Console (rank 0 only) and optional file logging for the ``affinitynet`` logger."""
    LOG.setLevel(logging.INFO)
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    LOG.propagate = False
    if main_process and verbose:
        h = _TqdmHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(h)
    if log_file is not None and main_process:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        LOG.addHandler(fh)
    return LOG


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm progress bar on stderr (a plain iterator when disabled)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False, file=sys.stderr)


# ----------------------------------------------------------------------------- stage context

@dataclass
class StageContext:
    """What a stage gets: the config, its run directory, the device, the process's rank, a logger."""

    cfg: Config
    run_dir: Path
    device: torch.device
    log: logging.Logger = LOG
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes of this job on this machine (they share its cores)
    stage: str = ""
    _datasets: dict = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir.joinpath(*parts)

    def dataset(self, split: str):
        """The dataset of one split (``cfg.data.train_split`` / ``val_split`` or another name), cached."""
        if split not in self._datasets:
            from .data import build_dataset

            self._datasets[split] = build_dataset(self.cfg.data, split)
        return self._datasets[split]

    @property
    def train_set(self):
        return self.dataset(self.cfg.data.train_split)

    @property
    def val_set(self):
        return self.dataset(self.cfg.data.val_split)

    def progress(self, iterable, *, desc: str, total: int | None = None):
        """Progress bar on the main process when ``runtime.progress`` is on."""
        return progress(iterable, desc=desc, total=total, enabled=self.cfg.runtime.progress and self.is_main)

    def map_images(self, names: list[str], output_of: Callable[[str], Path], work: Callable[[str], None], *,
                   desc: str, workers: int = 1, image_of: Callable[[str], Path] | None = None,
                   memory_key: str = "") -> dict:
        """Run ``work(name)`` for every image whose output file is missing: resumable and sharded by rank.

        ``work`` writes ``output_of(name)`` atomically. With ``workers > 1`` a process pool runs it
        (``work`` must then be picklable); each rank gets its own pool, capped at this machine's cores
        divided by the job's processes on it. Every rank checks that all images (not just its shard)
        have their output before the stage may finish. Returns counts of done / skipped images over all ranks.
        With ``memory_key`` (a ``section.key`` that bounds the image size), running out of memory on one
        image stops the stage with a one-line error naming ``image_of(name)`` and that key.
        """
        from .dist import all_gather_object, available_cores, barrier, shard

        if memory_key:
            section, key = memory_key.split(".")
            work = OutOfMemoryReport(work, image_of or output_of, f"{desc} on {self.device}", memory_key,
                                     getattr(self.cfg.section(section), key))

        if workers > 1:
            share = max(1, available_cores() // max(1, self.local_world_size))
            if workers > share:
                if self.is_main:
                    self.log.info(f"  {desc}: {workers} workers per process capped at {share} "
                                  f"({available_cores()} cores / {self.local_world_size} process(es) on this machine)")
                workers = share
        mine = shard(list(names), self.rank, self.world_size)
        todo = [n for n in mine if not output_of(n).exists()]
        done = sum(all_gather_object(len(todo)))
        skipped = len(names) - done
        if skipped and self.is_main:
            self.log.info(f"  {desc}: {skipped} of {len(names)} images already done, resuming")
        if workers > 1 and len(todo) > 1:
            # spawn, not fork: a forked child of a process that already ran OpenMP/CUDA work can hang
            with mp.get_context("spawn").Pool(workers, initializer=_pool_worker_init) as pool:
                for _ in self.progress(pool.imap_unordered(work, todo, chunksize=1), desc=desc, total=len(todo)):
                    pass
        else:
            for n in self.progress(todo, desc=desc, total=len(todo)):
                work(n)
        barrier()
        missing = [n for n in names if not output_of(n).exists()]
        if missing:
            raise StageError(f"{desc}: {len(missing)} outputs missing after the stage ran "
                             f"(first: {output_of(missing[0])}); re-run to resume")
        return {"done": done, "skipped": skipped}


def _pool_worker_init() -> None:
    """A pool worker: one thread, and Ctrl-C left to the parent, which terminates the pool."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says a device or the host ran out of memory (CUDA, MPS, the CPU allocator, numpy)."""
    if isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "DefaultCPUAllocator: can't allocate memory", "not enough memory"))


@dataclass
class OutOfMemoryReport:
    """``work(name)`` whose running out of memory becomes a one-line DataError naming the image and ``key``."""

    work: Callable[[str], None]
    image_of: Callable[[str], Path]
    where: str  # "make_cam on cuda:0"
    key: str  # the section.key that bounds the image size
    value: int

    def __call__(self, name: str) -> None:
        try:
            self.work(name)
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            lower = (f"lower {self.key} (now {self.value})" if self.value > 0
                     else f"set {self.key} (now 0: no bound), e.g. to 1000")
            raise DataError(self.image_of(name), f"out of memory in {self.where}; {lower} and re-run the same "
                                                 f"command to resume (finished images are kept)") from None


# ----------------------------------------------------------------------------- manifest

MANIFEST = "manifest.json"


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
    p = Path(run_dir) / MANIFEST
    return read_json(p).get("stages", {}) if p.exists() else {}


def _save_manifest(run_dir: Path, stages: dict) -> None:
    write_json(Path(run_dir) / MANIFEST, {"stages": stages})


def _outputs_present(run_dir: Path, spec: StageSpec) -> bool:
    return all((run_dir / o).exists() for o in spec.outputs)


LOCK = ".affinitynet.lock"


def _lock_holder(text: str) -> str:
    """``pid 123 on host, since 14:02:11: affinitynet run ...`` from a lock file's JSON (best effort)."""
    try:
        h = json.loads(text)
        command = h["command"] if len(h["command"]) <= 120 else h["command"][:117] + "..."
        return f"pid {h['pid']} on {h['host']}, since {h['started']}: {command}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path, is_main: bool = True):
    """Hold ``RUN_DIR/.affinitynet.lock`` (an OS lock, ``flock``) for the block: one run per directory at a time.

    The kernel drops the lock when the holding process ends, however it ends, so a crashed or killed run
    never blocks the next one; where the OS or file system has no locks (Windows, some network mounts) the
    run goes on unlocked. Only rank 0 locks; when another process holds the lock, every rank raises a
    StageError naming the directory and that process (written into the lock file by its holder).
    """
    from .dist import broadcast_object

    fd, problem = None, None
    if is_main:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no flock, no lock
            pass
        except BlockingIOError:
            holder = _lock_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            problem = (f"{run_dir}: run directory in use by another affinitynet process ({holder}); wait for it "
                       f"to end or stop it, then re-run")
            os.close(fd)
            fd = None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                os.close(fd)
                raise
            # a file system without locks (some network mounts): the run goes on unlocked
        else:
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(["affinitynet", *sys.argv[1:]])}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    problem = broadcast_object(problem)
    if problem:
        raise StageError(problem)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays, naming the last holder


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


def _load_stage(name: str):
    """The stage module's ``run`` function, or None if that stage is not built yet."""
    try:
        mod = importlib.import_module(f"affinitynet.stages.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"affinitynet.stages.{name}":
            return None
        raise
    return mod.run


# ----------------------------------------------------------------------------- the runner

@dataclass
class StageResult:
    name: str
    status: str  # done | skipped | not needed | not built | failed | not run
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
    from .dist import init_distributed, is_initialized, resolve_device, threads_per_process

    run_dir = Path(run_dir)
    owns_group = not is_initialized()  # a process group joined here is left here once every stage ran
    info = init_distributed(cfg.runtime.device)
    device = resolve_device(cfg.runtime.device, info.local_rank)
    threads = threads_per_process(cfg.runtime.threads, info.local_world_size)
    if threads > 0:
        torch.set_num_threads(threads)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, info.is_main):
        return _run_stages(cfg, run_dir, info, device, owns_group, start=start, stop=stop, force=force,
                           verbose=verbose)


def _run_stages(cfg: Config, run_dir: Path, info, device: torch.device, owns_group: bool, *, start, stop, force,
                verbose: bool) -> list[StageResult]:
    """``run_pipeline`` once the run directory is locked: the stages, in order."""
    from .dist import available_cores, barrier, broadcast_object, cleanup, seed_everything

    barrier()
    log = setup_logging(run_dir / "log.txt", verbose=verbose, main_process=info.is_main)
    force = {stage_spec(f).name for f in force}
    selected = select_stages(start, stop)

    if info.is_main:
        write_text(run_dir / "config.yaml", config_mod.dump(cfg))
        remove_stale_temp_files(run_dir)
        if cfg.data.kind == "synthetic":
            from .data import ensure_synthetic

            ensure_synthetic(cfg.data)
    barrier()
    log.info(f"run {run_dir}  device={device}  processes={info.world_size}  threads={torch.get_num_threads()}")
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
        fn = _load_stage(spec.name)
        if fn is None:
            log.info(f"[{spec.name}] not built yet in this version: stopping here")
            results.append(StageResult(spec.name, "not built"))
            break
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
            summary = fn(ctx) or {}
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


def status(run_dir: Path) -> dict:
    """The manifest's record of every stage (for ``affinitynet status`` and the report)."""
    return load_manifest(Path(run_dir))


def results_of(run_dir: Path) -> list[StageResult]:
    """StageResults reconstructed from a run's manifest (for reports)."""
    m = load_manifest(Path(run_dir))
    return [StageResult(s.name, m[s.name]["status"], m[s.name].get("seconds", 0.0), m[s.name].get("summary", {}))
            for s in STAGES if s.name in m]
