"""Clock probe: this node's clock against the master's, from the HTTP Date header of its web/api server.

Airflow's log tokens allow ~30 s and its execution tokens 10 s of leeway (jwt_leeway); past that,
log fetching and tasks fail with "signature from the future" or expired tokens.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, http_get

NAME = "clock"
WARN_SKEW = 5.0
CRITICAL_SKEW = 10.0  # Airflow 3's [api_auth] jwt_leeway default


def skew_seconds(date_header: str, sent_at: float, received_at: float) -> float:
    """Given a Date header and the local wall times around the request, return local minus remote seconds.

    The header has whole seconds, so the remote time is taken as the middle of its second.
    """
    remote = parsedate_to_datetime(date_header).timestamp() + 0.5
    return (sent_at + received_at) / 2 - remote


def grade(skew: float) -> Status:
    if abs(skew) >= CRITICAL_SKEW:
        return Status.CRITICAL
    return Status.WARNING if abs(skew) >= WARN_SKEW else Status.OK


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a worker node, return one Result for its clock skew against the master."""
    url = probe_input.ctx.cluster.web_url + probe_input.ctx.line.health_path
    sent_at = time.time()
    try:
        response = http_get(url, probe_input.remaining())
    except ProbeFailure as exc:
        return [Result(Status.UNKNOWN, NAME, url, None, f"cannot read the master's clock: {exc}")]
    received_at = time.time()
    date = response.headers.get("date")
    if not date:
        return [Result(Status.UNKNOWN, NAME, url, response.latency, "the master sent no Date header")]
    try:
        skew = skew_seconds(date, sent_at, received_at)
    except (TypeError, ValueError):
        return [Result(Status.UNKNOWN, NAME, url, response.latency, f"unreadable Date header {date!r}")]
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"{abs(skew):.1f}s {direction} the master (warn {WARN_SKEW:.0f}s, critical {CRITICAL_SKEW:.0f}s)"
    return [Result(grade(skew), NAME, url, response.latency, detail)]


PROBE = Probe(NAME, check, description="clock skew against the master (HTTP Date)")
