"""How airflow-node exits: one set of exit codes for every command, the checks' states a subset of it.

The checks (`health`, `cluster`) speak Nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The other
commands use the same numbers with their everyday meaning: 1 an operation failed, 2 bad input. A check
never exits 2 for bad input (Nagios would read CRITICAL): its bad options exit UNKNOWN.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit status of every airflow-node command."""

    OK = 0
    FAILED = 1  # an operation failed (a command, the network): OperationError
    USAGE = 2  # bad input (an option, a file, the host): UserError or a click usage error
    UNKNOWN = 3  # a check could not check, or was given bad options (Nagios UNKNOWN)


class CheckStatus(enum.IntEnum):
    """A check's state (a health probe, the cluster view), as Nagios names them; the value is the exit code."""

    OK = ExitCode.OK.value
    WARNING = ExitCode.FAILED.value
    CRITICAL = ExitCode.USAGE.value
    UNKNOWN = ExitCode.UNKNOWN.value

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode(self.value)
