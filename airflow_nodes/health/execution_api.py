"""Execution API probe (Airflow 3): from a worker, the master's /execution/health must answer healthy.

Workers run every task through this API; a worker that cannot reach it takes tasks and fails them.
"""

from __future__ import annotations

from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, http_get

NAME = "execution-api"


def check(probe_input: ProbeInput) -> list[Result]:
    """Given an Airflow 3 worker node, return one Result for the master's execution API."""
    url = probe_input.ctx.cluster.web_url + probe_input.ctx.line.execution_health_path
    try:
        response = http_get(url, probe_input.remaining())
    except ProbeFailure as exc:
        return [Result(Status.CRITICAL, NAME, url, None, str(exc))]
    document = response.json()
    state = document.get("status") if isinstance(document, dict) else None
    if state == "healthy":
        return [Result(Status.OK, NAME, url, response.latency, "healthy")]
    detail = f"status {state!r}" if state else f"HTTP {response.status} without a health JSON"
    return [Result(Status.CRITICAL, NAME, url, response.latency, detail)]


PROBE = Probe(
    NAME,
    check,
    applies=lambda probe_input: probe_input.ctx.line.has_execution_api,
    description="master's execution API (Airflow 3 workers)",
)
