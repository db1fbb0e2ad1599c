"""Error types that carry a message meant for a human, not a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: an option, a file or the host is not what we need.

    The message is one line that names the option or file. The CLI prints it and exits 2.
    """


class OperationError(Exception):
    """Something outside our control failed (a command, the network). The CLI exits 1."""


def clipped(value: str, limit: int = 60) -> str:
    """Given a value an error quotes, return it whole if short, else its first `limit` characters and
    "…": a 900 KB value in a file makes an error line of normal length, not a 900 KB one."""
    return value if len(value) <= limit else value[:limit] + "…"
