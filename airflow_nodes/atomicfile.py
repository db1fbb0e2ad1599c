"""Replacing one file or one symlink atomically: readers see the old one or the new, never a part or
none, and after a crash the directory holds one of the two (the rename is fsynced)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from airflow_nodes.errors import OperationError


def write_temp_beside(path: Path, data: bytes, mode: int = 0o644, ids: tuple[int, int] | None = None) -> Path:
    """Given a path, its content, its final mode and owner ((uid, gid), or None to keep ours), write a new
    temp file beside it that has that mode and owner before its first byte, fsynced. Return the temp's
    path, to be renamed over `path`. Its name, `.NAME.airflow-node-tmpPID-RANDOM`, starts with "." and
    has no suffix, so globbing readers (node_exporter's *.prom, supervisor's *.conf) never pick it up,
    and names the process, so `apply.find_leftovers` can tell a killed run's. Raise OSError."""
    for _ in range(100):
        temp = path.with_name(f".{path.name}.airflow-node-tmp{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode & 0o600)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise OperationError(f"{path}: cannot create a temp file beside it")
    try:
        if ids is not None:
            os.fchown(fd, *ids)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:  # os.write may write less than asked (a full disk writes nothing: ENOSPC)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return temp


def fsync_directory(directory: Path) -> None:
    """Make the renames done in a directory survive a crash. Raise OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o644, ids: tuple[int, int] | None = None) -> None:
    """Write data to path through a temp file beside it (write_temp_beside: final mode and owner from the
    start, fsynced), renamed over path, the directory then fsynced. Raise OSError."""
    temp = write_temp_beside(path, data, mode, ids)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def replace_symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` with one rename of a new symlink made beside it over the old link, the
    directory then fsynced: readers see the old target or the new, never none. The new link is ours
    (root's); the caller checks what `link` may replace (a rename over a directory fails: OSError)."""
    temp = link.with_name(f".{link.name}.airflow-node-link{os.getpid()}")
    temp.unlink(missing_ok=True)  # a killed run's
    os.symlink(target, temp)
    try:
        os.replace(temp, link)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(link.parent)
