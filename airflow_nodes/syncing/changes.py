"""What changed between two trees, read from rsync's itemized output (`--out-format='%i %n'`), and
what a fetch found."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

ITEMIZE_FORMAT = "--out-format=%i %n"


@dataclass(frozen=True)
class Change:
    path: str  # relative, no trailing slash
    deleted: bool


def parse_itemized(output: str) -> tuple[Change, ...]:
    """Given rsync's `%i %n` lines, return every path created, changed or deleted (not the top dir)."""
    changes = []
    for line in output.splitlines():
        code, _, name = line.partition(" ")
        if not name:
            continue
        if code == "*deleting":
            name = name.lstrip(" ")  # rsync pads "*deleting" to the width of an item code
        path = unescape_name(name).rstrip("/")
        if path in ("", "."):
            continue
        changes.append(Change(path, deleted=code == "*deleting"))
    return tuple(changes)


# rsync prints a byte it will not show (a control character, or any byte past ASCII in the C locale)
# as \#ooo, and a backslash that would read as such an escape as \#134: every \#ooo is an escape
_ESCAPED_BYTE = re.compile(rb"\\#([0-7]{3})")


def unescape_name(name: str) -> str:
    """Given a file name as rsync printed it (decoded with surrogateescape), return the name itself."""
    raw = _ESCAPED_BYTE.sub(lambda match: bytes([int(match[1], 8)]), os.fsencode(name))
    return os.fsdecode(raw)


@dataclass(frozen=True)
class Fetched:
    """What a fetch into the mirror found."""

    changes: tuple[Change, ...] | None  # None: not known, compare the mirror with the current release
    source_revision: str | None = None  # git: the commit; rsync sources: None (the tree hash stands)
    unchanged: bool = False  # a cheap check proved nothing changed; the mirror was not touched
