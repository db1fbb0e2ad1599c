"""Scheduler probe: the scheduler's own health server (`[scheduler] enable_health_check`, port 8974).

It answers 200 while the scheduler on that host heartbeats and 503 when it does not; init turns it on.
Each master asks its own, at its own address: with several masters, one scheduler down is found on its
host while the others (and the cluster-wide health JSON, which shows the latest heartbeat) look fine.
"""

from __future__ import annotations

from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, http_get

NAME = "scheduler"


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master node, return one Result for its scheduler's health server."""
    url = probe_input.ctx.own_scheduler_health_url
    try:
        response = http_get(url, probe_input.remaining())
    except ProbeFailure as exc:
        return [Result(Status.CRITICAL, NAME, url, None, f"{exc} (scheduler down or health check disabled?)")]
    if response.status == 200:
        return [Result(Status.OK, NAME, url, response.latency, "scheduler heartbeat is recent (HTTP 200)")]
    if response.status == 503:
        return [Result(Status.CRITICAL, NAME, url, response.latency, "scheduler is not heartbeating (HTTP 503)")]
    return [Result(Status.CRITICAL, NAME, url, response.latency, f"unexpected HTTP {response.status}")]


PROBE = Probe(NAME, check, description="scheduler health server (port 8974)")
