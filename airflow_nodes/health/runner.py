"""Choosing the probes that apply to this node and running them side by side under hard deadlines.

Each probe runs in its own daemon thread with its own deadline (start + timeout). Probes bound
their own socket operations by that deadline; the runner also stops waiting at the deadline, so a
probe stuck where no timeout reaches (DNS, a C library) costs the run no more than the timeout,
and an abandoned daemon thread never keeps the process alive.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, replace

from airflow_nodes import defaults
from airflow_nodes.context import load_context
from airflow_nodes.errors import UserError
from airflow_nodes.fleet import publish_record
from airflow_nodes.health import (
    broker,
    clock,
    consistency,
    database,
    execution_api,
    flower,
    leader,
    logs,
    migrations,
    packages,
    scheduler,
    units,
    webserver,
)
from airflow_nodes.health.model import Probe, ProbeInput, Result, Status, worst
from airflow_nodes.redaction import redact
from airflow_nodes.syncing.state import read_state
from airflow_nodes.target import Target

PROBES: tuple[Probe, ...] = (
    broker.PROBE,
    database.PROBE,
    migrations.PROBE,
    flower.PROBE,
    webserver.PROBE,
    scheduler.PROBE,
    leader.PROBE,
    flower.WORKER_PROBE,
    logs.PROBE,
    execution_api.PROBE,
    units.PROBE,
    consistency.PROBE,
    clock.PROBE,
    packages.PROBE,
)
PROBE_NAMES = tuple(probe.name for probe in PROBES)
# seconds the runner waits past a deadline for a probe to hand in its own timeout result: a thread switch
# on a loaded machine (20 ms missed it once in a few CI runs, and the report said "no answer" for "timed out")
GRACE = 0.1


@dataclass(frozen=True)
class HealthReport:
    """Everything one run found, ready for formatting."""

    results: tuple[Result, ...]
    status: Status
    elapsed: float
    role: str
    node_name: str
    timeout: float
    skipped: tuple[str, ...]  # probes that do not apply to this node, its Airflow line or the options


def parse_only(text: str | None) -> tuple[str, ...] | None:
    """Given "redis,db", return the probe names. Raise UserError naming an unknown probe."""
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in PROBE_NAMES]
    if unknown or not names:
        raise UserError(f"--only: unknown probe {', '.join(unknown) or '(none)'}; known: {', '.join(PROBE_NAMES)}")
    return names


def select_probes(probe_input: ProbeInput, only: tuple[str, ...] | None) -> tuple[list[Probe], list[str]]:
    """Given a node and --only, return (probes to run, names of probes skipped as not applicable)."""
    chosen, skipped = [], []
    for probe in PROBES:
        if only is not None and probe.name not in only:
            continue
        if probe.name in probe_input.ctx.role.probes and probe.applies(probe_input):
            chosen.append(probe)
        else:
            skipped.append(probe.name)
    return chosen, skipped


def _run_probe(probe: Probe, probe_input: ProbeInput, sink: list[Result]) -> None:
    try:
        sink.extend(probe.check(probe_input))
    except Exception as exc:  # noqa: BLE001 - one broken probe must not hide the others' answers
        sink.append(Result(Status.UNKNOWN, probe.name, "", None, f"probe failed: {exc.__class__.__name__}: {exc}"))


def run_probes(probes: list[Probe], probe_input: ProbeInput) -> list[Result]:
    """Run probes concurrently, each until its own deadline. Return their results in probe order."""
    started = probe_input.deadline - probe_input.timeout
    jobs = []
    for probe in probes:
        own = replace(probe_input, deadline=started + max(probe_input.timeout, probe.min_timeout))
        sink: list[Result] = []
        thread = threading.Thread(target=_run_probe, args=(probe, own, sink), name=probe.name, daemon=True)
        thread.start()
        jobs.append((probe, own, thread, sink))
    results: list[Result] = []
    for probe, own, thread, sink in jobs:
        thread.join(max(own.deadline + GRACE - time.monotonic(), 0))
        if thread.is_alive():
            budget = own.deadline - started
            results.append(Result(Status.CRITICAL, probe.name, "", budget, f"no answer within {budget:.1f}s"))
        else:
            results.extend(sink)
    return results


def seconds_since_process_start() -> float:
    """Return how long this process has run (Linux /proc), or 0.0 if unknown.

    The deadline counts from process start, so interpreter start-up and imports come out of the
    budget and the whole command, not just the probes, ends within --timeout.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    since = uptime - started
    # Only a fresh `airflow-node health` process counts its start-up; a long-lived caller gets the full budget.
    return since if 0.0 <= since <= 0.5 else 0.0


def publish_health(probe_input: ProbeInput, results: tuple[Result, ...]) -> None:
    """Add what this run saw to the node's fleet record, when the broker just answered (a broker that did
    not must not cost a second timeout) and time is left."""
    by_probe = {result.probe: result for result in results}
    left = probe_input.deadline - time.monotonic()
    if by_probe.get("redis") is None or by_probe["redis"].status != Status.OK or left < 0.05:
        return
    facts: dict[str, object] = {}
    with contextlib.suppress(UserError):  # the DAG revision this node serves, as its last sync left it
        facts["dags"] = read_state(probe_input.target).dag_revision or ""
    if "units" in by_probe:
        facts["daemons"] = by_probe["units"].detail
    if "worker" in by_probe:
        facts["worker_online"] = by_probe["worker"].status == Status.OK
    # three round trips at most (connect, TIME, SET): each gets a quarter of what is left, to be safe
    publish_record(probe_input.ctx, probe_input.target, facts, timeout=min(left / 4, 0.5))


def run_health(
    target: Target, timeout: float = defaults.HEALTH_TIMEOUT, only: tuple[str, ...] | None = None, deep: bool = False
) -> HealthReport:
    """Given the node and options, run the applicable probes and return a HealthReport (passwords redacted).

    Raise UserError if the node was never initialised there.
    """
    started = time.monotonic() - seconds_since_process_start()
    ctx = load_context(target)
    probe_input = ProbeInput(ctx=ctx, target=target, timeout=timeout, deadline=started + timeout, deep=deep)
    probes, skipped = select_probes(probe_input, only)
    secrets = ctx.cluster.secret_values()
    results = tuple(
        replace(result, target=redact(result.target, secrets), detail=redact(result.detail, secrets))
        for result in run_probes(probes, probe_input)
    )
    publish_health(probe_input, results)
    return HealthReport(
        results=results,
        status=worst(result.status for result in results) if results else Status.UNKNOWN,
        elapsed=time.monotonic() - started,
        role=ctx.node.role,
        node_name=ctx.node.node_name,
        timeout=timeout,
        skipped=tuple(skipped),
    )
