"""PostgreSQL probe: the metadata DB and the Celery result backend (when it is another database)."""

from __future__ import annotations

import time

from airflow_nodes.health.model import MANAGED_HERE, Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, run_concurrently
from airflow_nodes.pgclient import query_database
from airflow_nodes.redaction import redact_url
from airflow_nodes.urls import libpq_url

NAME = "db"


def _targets(probe_input: ProbeInput) -> list[tuple[str, str]]:
    """Return (label, libpq-compatible URL) for the databases this node uses, without duplicates."""
    cluster = probe_input.ctx.cluster
    result_backend = cluster.result_backend.removeprefix("db+")
    targets = []
    # Airflow 3 workers never open the metadata DB; Airflow 2 workers do.
    if probe_input.ctx.role.schedules or not probe_input.ctx.line.has_execution_api:
        targets.append(("metadata", cluster.db_url))
    if libpq_url(result_backend) not in {libpq_url(url) for _, url in targets}:
        targets.append(("result backend", result_backend))
    if probe_input.ctx.node.local_postgres:
        targets = [(f"{label} ({MANAGED_HERE})", url) for label, url in targets]
    return [(label, libpq_url(url)) for label, url in targets]


def _check_one(probe_input: ProbeInput, label: str, url: str) -> Result:
    started = time.monotonic()
    try:
        detail = query_database(url, probe_input.remaining())
        status = Status.OK
    except ProbeFailure as exc:
        detail, status = str(exc), Status.CRITICAL
    return Result(status, NAME, f"{label} {redact_url(url)}", time.monotonic() - started, detail)


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result per database it uses (checked side by side)."""
    targets = _targets(probe_input)
    answers = run_concurrently(
        [lambda label=label, url=url: _check_one(probe_input, label, url) for label, url in targets],
        probe_input.deadline,
    )
    return [
        answer
        if answer is not None
        else Result(Status.CRITICAL, NAME, f"{label} {redact_url(url)}", None, "no answer before the deadline")
        for answer, (label, url) in zip(answers, targets, strict=True)
    ]


PROBE = Probe(NAME, check, description="PostgreSQL: connect, SELECT 1, server version")
