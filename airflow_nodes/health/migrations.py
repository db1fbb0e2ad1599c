"""Migrations probe (--deep only): `airflow db check-migrations` with the node's environment.

There is no cheap, version-proof way to know the schema head an installed Airflow expects without
importing Airflow, and the command costs 3.5-5.5 s, so it runs only on request. The db probe shows
the alembic revision in the database on every run.
"""

from __future__ import annotations

import os
import time

from airflow_nodes import execute
from airflow_nodes.execute import CommandError
from airflow_nodes.health.model import Probe, ProbeInput, Result, Status

NAME = "migrations"
MIN_TIMEOUT = 30.0


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master node where Airflow is installed, return whether its DB schema is current."""
    ctx, target = probe_input.ctx, probe_input.target
    if not target.real_system:
        return [Result(Status.UNKNOWN, NAME, ctx.node.airflow_bin, None, "not run under --root: no Airflow of its own")]
    argv = [ctx.node.airflow_bin, "db", "check-migrations", "-t", "0"]
    target_text = " ".join(argv)
    if not os.access(ctx.node.airflow_bin, os.X_OK):
        return [Result(Status.UNKNOWN, NAME, target_text, None, "Airflow is not installed here")]
    # Airflow reads its config, plugins and local settings from AIRFLOW_HOME, the airflow account's: it
    # runs as that account, never as root
    user = ctx.cluster.airflow_user if target.privileged else None
    started = time.monotonic()
    try:
        completed = execute.run(argv, timeout=probe_input.remaining(), env=ctx.environment, user=user, ok_codes=None)
    except CommandError as exc:
        return [Result(Status.UNKNOWN, NAME, target_text, None, exc.reason)]
    latency = time.monotonic() - started
    if completed.returncode == 0:
        return [Result(Status.OK, NAME, target_text, latency, "the schema matches the installed Airflow")]
    lines = (completed.stderr or completed.stdout).strip().splitlines()
    return [Result(Status.CRITICAL, NAME, target_text, latency, lines[-1] if lines else "migrations pending")]


PROBE = Probe(
    NAME,
    check,
    applies=lambda probe_input: probe_input.deep,
    description="DB schema migrations current (--deep)",
    min_timeout=MIN_TIMEOUT,
)
