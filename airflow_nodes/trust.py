"""What root may trust: a path no other account can change, on the way to it or at it.

The airflow account runs arbitrary DAG code: root never runs, opens, hashes, follows or writes through
anything that account (or any account but root) may change. These are the checks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def first_untrusted(path: Path) -> Path | None:
    """Given a path root would run, open or write through, return the first place on the way to it that
    another account owns or may change (every directory from /, every link and every directory on the
    way to where it leads, then the entry itself), or None when there is none. A link's own mode means
    nothing; the directory holding it decides. A sticky directory above, such as /tmp, is fine: others
    may add entries there but not replace root's. A part not there yet ends the walk: only root could
    make it, its directory being root's."""
    current = Path("/")
    if not root_only(current.lstat()):
        return current
    pending = list(Path(os.path.abspath(path)).parts[1:])
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        try:
            info = candidate.lstat()
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > 40 or info.st_uid != 0:
                return candidate
            destination = Path(os.readlink(candidate))
            if destination.is_absolute():
                current = Path("/")
            pending = list(destination.parts[1:] if destination.is_absolute() else destination.parts) + pending
            continue
        if not root_only(info, sticky_ok=bool(pending) and stat.S_ISDIR(info.st_mode)):
            return candidate
        current = candidate
    return None


def trusted_for_root(path: Path) -> bool:
    """Whether root may run or read this file: it exists and nothing on the way to it, nor it, is another
    account's (see first_untrusted). Not root: True."""
    if os.geteuid() != 0:
        return True
    return os.path.lexists(path) and first_untrusted(path) is None


def root_only(info: os.stat_result, sticky_ok: bool = False) -> bool:
    """Whether root owns it and no other account may write it (in a sticky directory, such as /tmp,
    others may add entries but not replace root's)."""
    writable_by_others = info.st_mode & 0o022 and not (sticky_ok and info.st_mode & stat.S_ISVTX)
    return info.st_uid == 0 and not writable_by_others
