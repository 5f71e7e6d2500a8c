"""Logging and progress bars: one ``affinitynet`` logger, tqdm-safe console output, a log file per run."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable

LOG = logging.getLogger("affinitynet")


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
