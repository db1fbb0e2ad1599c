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
    """Return the sha256 of a file's content, read in chunks. Raise OSError if it cannot be read or is
    a link, unless unreadable_ok: then return None. A link is never followed: root hashes files in
    directories the airflow account owns (airflow.cfg), and a hash of /etc/shadow must not leak."""
    digest = hashlib.sha256()
    try:
        # a FIFO planted there must not make us wait, a link not lead us elsewhere
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
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
