"""What changed between two trees, read from rsync's itemized output (`--out-format='%i %n'`)."""

from __future__ import annotations

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
        path = name.rstrip("/")
        if path in ("", "."):
            continue
        changes.append(Change(path, deleted=code == "*deleting"))
    return tuple(changes)
