"""Waiting for a condition under a deadline: the one polling loop (a lock to free up, workers to catch up)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float, interval: float) -> bool:
    """Given a condition, call it until it returns something true or `timeout` seconds have passed,
    sleeping `interval` seconds between calls (never past the deadline, where it is called once more).
    Return whether it came true. An exception from the condition ends the wait: it propagates."""
    deadline = time.monotonic() + timeout
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(interval, left))
    return True
