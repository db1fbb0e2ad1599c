"""The values health probes exchange: statuses, results and the probe interface."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from airflow_nodes.context import NodeContext
from airflow_nodes.exitcodes import CheckStatus as Status  # the Nagios states: the value is the exit code
from airflow_nodes.target import Target

# Which state wins when results are combined: a failure we saw outranks one we could not check.
# how the redis and db probes name a server `init --with-redis / --with-postgres` set up on this host
MANAGED_HERE = "local, managed by airflow-node"
_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    """Given statuses, return the most severe (CRITICAL > UNKNOWN > WARNING > OK); OK for none."""
    return max(statuses, key=_SEVERITY.__getitem__, default=Status.OK)


@dataclass(frozen=True)
class Result:
    """One line of the health report. `target` is always shown redacted (no passwords)."""

    status: Status
    probe: str
    target: str
    latency: float | None  # seconds; None when nothing was measured
    detail: str


@dataclass(frozen=True)
class ProbeInput:
    """What every probe gets: the node, where its files are, and when it must have answered."""

    ctx: NodeContext
    target: Target
    timeout: float
    deadline: float  # time.monotonic() value after which the answer is useless
    deep: bool = False

    def remaining(self) -> float:
        """Return the seconds left before the deadline (never below a few milliseconds)."""
        return max(self.deadline - time.monotonic(), 0.005)


@dataclass(frozen=True)
class Probe:
    """A named check. `check` returns one or more Results and should not raise.

    The roles it applies to list its name (roles.py); `applies` narrows that further (Airflow line, options).
    """

    name: str
    check: Callable[[ProbeInput], list[Result]]
    applies: Callable[[ProbeInput], bool] = lambda probe_input: True
    description: str = ""
    min_timeout: float = 0.0  # a slow check (an `airflow` command) gets at least this many seconds
