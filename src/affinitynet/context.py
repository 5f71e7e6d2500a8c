"""What a stage gets (``StageContext``): config, run directory, device, rank, datasets, and resumable
per-image work spread over processes, with running out of memory turned into a one-line error."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .config import Config
from .errors import DataError, StageError
from .layout import RunLayout
from .logs import LOG, progress
from .overlap import prefetched, worker_init


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

    @property
    def layout(self) -> RunLayout:
        """Where every file of the run lives."""
        return RunLayout(self.run_dir)

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

    def map_images(self, names: list[str], output_of: Callable[[str], Path], work: Callable, *, desc: str,
                   workers: int = 1, image_of: Callable[[str], Path] | None = None, memory_key: str = "",
                   inputs: Callable[[str], object] | None = None, around: Sequence = ()) -> dict:
        """Run ``work(name)`` for every image whose output file is missing: resumable and sharded by rank.

        ``work`` writes ``output_of(name)`` atomically. With ``workers > 1`` a process pool runs it
        (``work`` must then be picklable): each worker process gets ``work`` once, when it starts, and keeps
        it (and whatever it builds, a network included) for every image it is sent; tasks carry only names.
        Each rank gets its own pool, capped at this machine's cores divided by the job's processes on it.
        With ``inputs``, ``work(name, inputs(name))`` runs in this process instead, and ``inputs`` (picklable)
        prepares the images ahead in ``runtime.num_workers`` DataLoader processes, in order (pinned on CUDA:
        ``overlap.prefetched``). ``around``: context managers entered around the loop (``overlap.Behind``, a
        ``SameSizeBatches``); their exits finish what the work handed them before the outputs are checked.
        Every rank checks that all images (not just its shard) have their output before the stage may finish.
        Returns counts of done / skipped images over all ranks. With ``memory_key`` (a ``section.key`` that
        bounds the image size), running out of memory on one image stops the stage with a one-line error
        naming ``image_of(name)`` and that key.
        """
        from .dist import all_gather_object, barrier, shard

        if memory_key:
            work = self.memory_report(work, desc, memory_key, image_of or output_of)
        workers = self.worker_share(workers, desc)
        mine = shard(list(names), self.rank, self.world_size)
        todo = [n for n in mine if not output_of(n).exists()]
        done = sum(all_gather_object(len(todo)))
        skipped = len(names) - done
        if skipped and self.is_main:
            self.log.info(f"  {desc}: {skipped} of {len(names)} images already done, resuming")
        with contextlib.ExitStack() as stack:
            for manager in around:
                stack.enter_context(manager)
            if inputs is not None:
                rt = self.cfg.runtime
                items = prefetched(todo, inputs, workers=rt.num_workers if len(todo) > 1 else 0,
                                   prefetch_factor=rt.prefetch_factor,
                                   pin_memory=rt.pin_memory and self.device is not None and self.device.type == "cuda")
                for name, item in self.progress(items, desc=desc, total=len(todo)):
                    work(name, item)
            elif workers > 1 and len(todo) > 1:
                # spawn, not fork: a forked child of a process that already ran OpenMP/CUDA work can hang
                with mp.get_context("spawn").Pool(workers, initializer=_pool_worker_init, initargs=(work,)) as pool:
                    for _ in self.progress(pool.imap_unordered(_pool_work, todo, chunksize=1), desc=desc,
                                           total=len(todo)):
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

    def worker_share(self, workers: int, desc: str) -> int:
        """``workers`` capped at this machine's cores divided by the job's processes on it (logged when capped)."""
        from .dist import available_cores

        if workers > 1:
            share = max(1, available_cores() // max(1, self.local_world_size))
            if workers > share:
                if self.is_main:
                    self.log.info(f"  {desc}: {workers} workers per process capped at {share} "
                                  f"({available_cores()} cores / {self.local_world_size} process(es) on this machine)")
                workers = share
        return workers

    def memory_report(self, work: Callable, desc: str, memory_key: str, image_of: Callable[[str], Path]):
        """``work`` whose running out of memory becomes a one-line error naming the image and ``memory_key``."""
        section, key = memory_key.split(".")
        return OutOfMemoryReport(work, image_of, f"{desc} on {self.device}", memory_key,
                                 getattr(self.cfg.section(section), key))


_WORK: Callable[[str], None] | None = None  # in a pool worker: the stage's per-image work, set by _pool_worker_init


def _pool_worker_init(work: Callable[[str], None] | None = None) -> None:
    """A pool worker: one thread, Ctrl-C left to the parent (which terminates the pool), and the stage's ``work``
    kept for every image this process is sent (unpickled once here, not once per image)."""
    global _WORK
    worker_init()
    _WORK = work


def _pool_work(name: str) -> None:
    """One image in a pool worker: the ``work`` its initializer kept."""
    _WORK(name)


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

    def __call__(self, name, *args) -> None:
        """``work(name, *args)``; ``name`` may be a list of names (a group of images): the first is named."""
        try:
            self.work(name, *args)
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            lower = (f"lower {self.key} (now {self.value})" if self.value > 0
                     else f"set {self.key} (now 0: no bound), e.g. to 1000")
            first = name if isinstance(name, str) else name[0]
            raise DataError(self.image_of(first), f"out of memory in {self.where}; {lower} and re-run the same "
                                                 f"command to resume (finished images are kept)") from None
