"""One sync at a time per node: an flock on a lock file, held for the whole run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from airflow_nodes.statefile import flock_within, locked_fd


@contextlib.contextmanager
def sync_lock(path: Path, wait_seconds: float) -> Iterator[str | None]:
    """Hold an exclusive flock on path. Yield None when held, else who holds it after wait_seconds.

    The kernel drops the lock when the process dies, so a killed run never blocks the next one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_fd(path) as fd:
        if not flock_within(fd, wait_seconds):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            yield f"pid {holder}"
            return
        os.ftruncate(fd, 0)  # ours now: a regular file in a root-owned directory, opened without links
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield None
