"""Migrations probe (--deep only): `airflow db check-migrations` with the node's environment.

There is no cheap, version-proof way to know the schema head an installed Airflow expects without
importing Airflow, and the command costs 3.5-5.5 s, so it runs only on request. The db probe shows
the alembic revision in the database on every run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from airflow_nodes import execute
from airflow_nodes.detect import trusted_for_root
from airflow_nodes.execute import CommandError
from airflow_nodes.health.model import MASTER, Probe, ProbeInput, Result, Status

NAME = "migrations"
MIN_TIMEOUT = 30.0


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master node where Airflow is installed, return whether its DB schema is current."""
    ctx = probe_input.ctx
    argv = [ctx.node.airflow_bin, "db", "check-migrations", "-t", "0"]
    target = " ".join(argv)
    if not os.access(ctx.node.airflow_bin, os.X_OK):
        return [Result(Status.UNKNOWN, NAME, target, None, "Airflow is not installed here")]
    if not trusted_for_root(Path(ctx.node.airflow_bin)):
        return [Result(Status.CRITICAL, NAME, target, None, "not owned by root or writable by others: not run")]
    started = time.monotonic()
    try:
        completed = execute.run(argv, timeout=probe_input.remaining(), env=ctx.environment, ok_codes=None)
    except CommandError as exc:
        return [Result(Status.UNKNOWN, NAME, target, None, exc.reason)]
    latency = time.monotonic() - started
    if completed.returncode == 0:
        return [Result(Status.OK, NAME, target, latency, "the schema matches the installed Airflow")]
    lines = (completed.stderr or completed.stdout).strip().splitlines()
    return [Result(Status.CRITICAL, NAME, target, latency, lines[-1] if lines else "migrations pending")]


PROBE = Probe(
    NAME,
    MASTER,
    check,
    applies=lambda probe_input: probe_input.deep,
    description="DB schema migrations current (--deep)",
    min_timeout=MIN_TIMEOUT,
)
