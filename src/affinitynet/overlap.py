"""Per-image work that overlaps the network's pass: inputs prepared ahead, outputs finished behind.

- ``prefetched``: a DataLoader over image names whose worker processes prepare each image (decoding,
  rescaling, normalising) while the network runs on earlier ones; on CUDA the tensors come pinned, so the
  copies to the device need not wait. Items come in the order of the names, whatever the worker count.
- ``Behind``: jobs handed off by the main process (file writes to a thread, dense CRFs to a process pool),
  at most ``depth`` in flight, so memory stays bounded; each job's ``then`` runs in the main process, in
  submission order. A job's error surfaces in the main process at the next hand-off or at the end, naming
  its file. On an error in a job, the jobs not yet started are dropped; on an error in the main process the
  jobs in flight finish first (finished images are kept), except on Ctrl-C / SIGTERM for jobs that are slow
  to finish (``finish_on_interrupt=False``: a pool of CRFs is terminated). Files are only ever written
  atomically, by a thread or by the main process, so no job leaves a partial file behind.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .errors import AffinityNetError, StageError


class _Failed:
    """An exception raised while preparing an image in a DataLoader worker, carried back to be raised as it is
    (the DataLoader would turn it into a RuntimeError holding a traceback)."""

    def __init__(self, error: BaseException):
        self.error = error


class _Inputs(torch.utils.data.Dataset):
    """(name, inputs(name)) for each of ``names``; picklable when ``inputs`` is."""

    def __init__(self, names: Sequence[str], inputs: Callable[[str], object]):
        self.names, self.inputs = list(names), inputs

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        name = self.names[i]
        try:
            return name, self.inputs(name)
        except Exception as e:  # noqa: BLE001 - raised again, unchanged, in the main process
            return name, _Failed(e)


def worker_init() -> None:
    """A pool worker process: one thread, and Ctrl-C and SIGTERM left to the parent, which terminates the pool.

    The worker moves to a process group of its own. SIGTERM sent to the run's group (``kill -- -PGID``, a
    scheduler's stop) then reaches the parent alone. A worker killed while it waits for its next task dies
    holding the pool's task-queue lock, and the parent's ``Pool.terminate`` then waits for that lock forever.
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # not allowed here (a session leader): the group's signals still reach this worker
            pass


def _as_is(item):
    """The DataLoader's collate function: items pass unchanged (no conversion of numpy arrays to tensors)."""
    return item


def prefetched(names: Sequence[str], inputs: Callable[[str], object], *, workers: int, prefetch_factor: int = 2,
               pin_memory: bool = False) -> Iterator[tuple[str, object]]:
    """(name, inputs(name)) for each name in order, prepared ahead by ``workers`` DataLoader processes (0: here, when
    asked); tensors in pinned memory when ``pin_memory``. ``inputs`` must be picklable when ``workers`` > 0."""
    kwargs = {"num_workers": workers, "pin_memory": pin_memory, "collate_fn": _as_is, "batch_size": None}
    if workers > 0:
        # spawn, not fork: a forked child of a process that already ran OpenMP/CUDA work can hang
        kwargs.update(prefetch_factor=prefetch_factor, multiprocessing_context=mp.get_context("spawn"))
    for name, item in torch.utils.data.DataLoader(_Inputs(names, inputs), **kwargs):
        if isinstance(item, _Failed):
            raise item.error
        yield name, item


def _raise_named(error: Exception, path) -> None:
    """Raise ``error`` if it already names a file (DataError, OSError with a file name), else a StageError naming
    ``path`` (the file of the job that failed)."""
    if path is None or isinstance(error, AffinityNetError) or (isinstance(error, OSError) and error.filename):
        raise error
    raise StageError(f"{path}: {type(error).__name__}: {error}") from error


class Behind:
    """Jobs finished behind the main process: ``submit(fn, *args, then=..., path=...)`` runs ``fn(*args)`` on a
    writer thread (``Behind.writer``) or a process pool (``Behind.processes``), or at once without either; a
    context manager: on a clean exit every job is done."""

    def __init__(self, depth: int = 4, *, workers: int = 0, thread: ThreadPoolExecutor | None = None,
                 finish_on_interrupt: bool = True):
        self.depth, self.workers, self._thread = max(1, depth), workers, thread
        self._pool = None  # the process pool, started with the first job
        self.finish_on_interrupt = finish_on_interrupt
        self.pending: deque = deque()  # (handle, then, path), oldest first
        self.failed = False  # a job (or its then) raised: the jobs after it are dropped

    @classmethod
    def writer(cls, depth: int = 4) -> "Behind":
        """One writer thread: jobs run in submission order (file writes; they are quick, so they finish on Ctrl-C)."""
        return cls(depth, thread=ThreadPoolExecutor(1, thread_name_prefix="affinitynet-writer"))

    @classmethod
    def processes(cls, workers: int, depth: int | None = None) -> "Behind":
        """``workers`` spawned processes of one thread each, started with the first job (``workers`` < 1: jobs run
        at once in the caller), at most ``depth`` (default 2 x workers) jobs in flight; terminated on Ctrl-C
        rather than waited for."""
        workers = max(0, workers)
        return cls(depth or 2 * max(1, workers), workers=workers, finish_on_interrupt=False)

    @property
    def overlaps(self) -> bool:
        """Whether jobs run elsewhere (False: ``submit`` runs them at once)."""
        return self.workers > 0 or self._thread is not None

    def submit(self, fn: Callable, *args, then: Callable | None = None, path: Path | str | None = None) -> None:
        """Run ``fn(*args)`` behind; ``then(result)`` runs here once it is done. Waits while ``depth`` jobs are in
        flight; raises the error of a finished job (naming ``path`` when the error names no file)."""
        if not self.overlaps:
            try:
                result = fn(*args)
            except Exception as e:
                _raise_named(e, path)
            if then is not None:
                then(result)
            return
        while len(self.pending) >= self.depth:
            self._finish_oldest()
        if self._thread is not None:
            handle = self._thread.submit(fn, *args)
        else:
            if self._pool is None:
                # spawn, not fork: a forked child of a process that already ran OpenMP/CUDA work can hang
                self._pool = mp.get_context("spawn").Pool(self.workers, initializer=worker_init)
            handle = self._pool.apply_async(fn, args)
        self.pending.append((handle, then, path))
        while self.pending and self._ready(self.pending[0][0]):
            self._finish_oldest()

    @staticmethod
    def _ready(handle) -> bool:
        return handle.done() if hasattr(handle, "done") else handle.ready()

    def _finish_oldest(self) -> None:
        handle, then, path = self.pending.popleft()
        try:
            result = handle.result() if hasattr(handle, "result") else handle.get()
            if then is not None:
                then(result)
        except Exception as e:
            self.failed = True
            _raise_named(e, path)

    def drain(self) -> None:
        """Wait for every job in flight and run its ``then``."""
        while self.pending:
            self._finish_oldest()

    def __enter__(self) -> "Behind":
        return self

    def __exit__(self, kind, error, tb) -> None:
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        # the main process stopped: the jobs in flight are images it finished, so they are kept
        finish = kind is None or not (self.failed or (interrupted and not self.finish_on_interrupt))
        clean = False
        try:
            if finish:
                self.drain()
                clean = kind is None
        finally:
            for handle, _, _ in self.pending:  # left after an error: dropped, unless already running on the thread
                if hasattr(handle, "cancel"):
                    handle.cancel()
            self.pending.clear()
            if self._thread is not None:
                self._thread.shutdown(wait=True, cancel_futures=True)  # a running write finishes: no partial file
            if self._pool is not None:
                self._pool.close() if clean else self._pool.terminate()  # CRF workers write nothing
                self._pool.join()
