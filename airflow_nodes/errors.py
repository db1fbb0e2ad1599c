"""Error types that carry a message meant for a human, not a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: an option, a file or the host is not what we need.

    The message is one line that names the option or file. The CLI prints it and exits 2.
    """


class OperationError(Exception):
    """Something outside our control failed (a command, the network). The CLI exits 1."""
