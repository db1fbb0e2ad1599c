"""Content hashes: the one sha256 helper for bytes and files."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, unreadable_ok: bool = False) -> str | None:
    """Return the sha256 of a file's content, read in chunks. Raise OSError if it cannot be read,
    unless unreadable_ok: then return None."""
    digest = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO planted there must not make us wait
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        if unreadable_ok:
            return None
        raise
    return digest.hexdigest()
