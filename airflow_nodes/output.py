"""Turning what commands return into text for people: aligned tables, JSON documents, listings.

Commands compute values (a HealthReport, a FleetReport, a JoinListing, the SyncState); the CLI hands
them to a function here and prints the text. Every table goes through `table`, every JSON document
through `to_json`. (A node's plan and what applying it did are formatted in report.py; the health
metrics for node_exporter in health/formatting.py.)

What came from outside (a worker's name, a server's error) shows escaped, on its one line: the
functions here use sanitise.printable where a value may hold a line break, the CLI's echo does the rest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from airflow_nodes.exitcodes import CheckStatus
from airflow_nodes.sanitise import printable

if TYPE_CHECKING:  # the values formatted here; this module needs none of them to run
    from airflow_nodes.control import ControlOutcome
    from airflow_nodes.drain import DrainOutcome
    from airflow_nodes.fleet import FleetReport, MasterState
    from airflow_nodes.health.model import Result
    from airflow_nodes.health.runner import HealthReport
    from airflow_nodes.join import JoinListing
    from airflow_nodes.syncing.state import SyncState
    from airflow_nodes.upgrade import UpgradeOutcome, UpgradePlan

COLUMN_GAP = "  "


def table(rows: Sequence[Sequence[str]], right_aligned: Collection[int] = ()) -> list[str]:
    """Given rows of cells (a header first, if the table has one), return one line per row: columns two
    spaces apart, every column but the last padded to its widest cell (on the left for the columns in
    right_aligned), trailing spaces dropped."""
    if not rows:
        return []
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append(COLUMN_GAP.join([*cells, row[-1]]).rstrip())
    return lines


def to_json(document: object, sort_keys: bool = False) -> str:
    """Given a document of dicts, lists and plain values, return it as indented JSON. ASCII only: JSON's
    own escapes keep a control character from outside inert."""
    return json.dumps(document, indent=2, ensure_ascii=True, sort_keys=sort_keys)


# -- airflow-node health ---------------------------------------------------------------------------

HEALTH_COLUMNS = ("STATUS", "PROBE", "TARGET", "LATENCY", "DETAIL")


def format_latency(seconds: float | None) -> str:
    """Given seconds or None, return '12.3 ms', '2.00 s' or '-'."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _health_summary(report: HealthReport) -> str:
    counts = {status: 0 for status in CheckStatus}
    for result in report.results:
        counts[result.status] += 1
    tally = ", ".join(f"{counts[s]} {s.name.lower()}" for s in CheckStatus)
    line = f"{report.status.name}: {tally} ({report.role} {report.node_name}, {report.elapsed:.2f} s)"
    if report.skipped:
        line += f"; not applicable here: {', '.join(report.skipped)}"
    return printable(line)


def health_table(report: HealthReport) -> str:
    """Given a health report, return an aligned text table followed by a one-line summary. What a probe
    read from outside (a worker's name, a server's error) shows escaped: one line per result, inert."""
    rows = [HEALTH_COLUMNS] + [
        (r.status.name, printable(r.probe), printable(r.target), format_latency(r.latency), printable(r.detail))
        for r in report.results
    ]
    return "\n".join([*table(rows, right_aligned={3}), "", _health_summary(report)])


def _result_document(result: Result) -> dict[str, object]:
    return {
        "status": result.status.name,
        "probe": result.probe,
        "target": result.target,
        "latency_seconds": None if result.latency is None else round(result.latency, 6),
        "detail": result.detail,
    }


def health_json(report: HealthReport) -> str:
    """Given a health report, return it as a JSON document (status names, Nagios exit code, results)."""
    return to_json(
        {
            "status": report.status.name,
            "exit_code": int(report.status),
            "node": report.node_name,
            "role": report.role,
            "timeout_seconds": report.timeout,
            "elapsed_seconds": round(report.elapsed, 6),
            "results": [_result_document(result) for result in report.results],
            "skipped": list(report.skipped),
        }
    )


# -- airflow-node cluster --------------------------------------------------------------------------

FLEET_COLUMNS = (
    "node", "role", "address", "airflow", "packages", "cfg", "cluster_file", "secrets", "dags", "clock_offset"
)  # fmt: skip
FULL_WIDTH = ("node", "address")  # the other values are hashes and versions: their first 12 characters do
REFUSED_SHOWN = 5  # refused records named one by one; the rest are counted


def _master_line(state: MasterState) -> str:
    if state.live:
        return f"master {state.master.label}: live (record {state.node})"
    why = f"its record {state.node} is stale" if state.node else "no record"
    return f"master {state.master.label}: missing ({why})"


def fleet_table(report: FleetReport) -> str:
    """Given the fleet, return the table: one row per node, a value that differs from the master's marked
    with "!", then each node's findings, each master when there are several (live or missing), the
    records refused, and the verdict."""
    rows = [[column.upper() for column in FLEET_COLUMNS]]
    for row in report.rows:
        cells = []
        for column in FLEET_COLUMNS:
            text = str(row.record.get(column, ""))
            text = text if column in FULL_WIDTH else text[:12]
            cells.append(f"!{text}" if column in row.differing else text)
        rows.append(cells)
    lines = table(rows)
    for row in report.rows:
        lines += [f"{row.record['node']}: {finding}" for finding in row.findings]
    lines += [_master_line(state) for state in report.masters]  # several masters: each, live or missing
    lines += [f"refused record {why}" for why in report.refused[:REFUSED_SHOWN]]
    if len(report.refused) > REFUSED_SHOWN:
        lines.append(f"refused {len(report.refused) - REFUSED_SHOWN} more record(s)")
    lines.append(report.verdict)
    return "\n".join(lines)


def fleet_json(report: FleetReport) -> str:
    """Given the fleet, return it as a JSON document: the status and verdict, and every node's record
    with its findings; with several masters, each master and whether it is live."""
    document = {
        "status": report.status,
        "verdict": report.verdict,
        "missing": report.missing,
        "refused": report.refused,
        "masters": [
            {"name": s.master.name, "address": s.master.address, "node": s.node, "live": s.live} for s in report.masters
        ],
        "nodes": [{**row.record, "findings": row.findings, "status": row.status} for row in report.rows],
    }
    return to_json(document, sort_keys=True)


# -- airflow-node status | start | stop | restart ----------------------------------------------------


def control_outcome(outcome: ControlOutcome) -> str:
    """Given what a start, stop, restart or status did, return the commands listed (under --root), the
    table of states (status), or its one line."""
    if outcome.action == "status" and not outcome.listed:
        return "\n".join(table(outcome.states))
    return outcome.summary()


# -- airflow-node drain | resume ---------------------------------------------------------------------


def drained(outcome: DrainOutcome) -> str:
    """Given what a drain did, return whether the worker is idle now, or what still runs."""
    stopped = f"{outcome.worker} takes no new tasks (stopped consuming {', '.join(outcome.queues) or 'no queue'})"
    if outcome.running is None:
        return f"{stopped}; it did not say what it runs within {outcome.timeout:g} s: not known to be drained"
    if not outcome.running:
        return f"{stopped}; nothing runs on it now (waited {outcome.waited:.1f} s): drained"
    shown = ", ".join(outcome.running[:5]) + (" ..." if len(outcome.running) > 5 else "")
    return (f"{stopped}; {len(outcome.running)} task(s) still running after {outcome.timeout:g} s: {shown}. They go "
            "on; run drain again to wait more, `airflow-node resume` to take tasks again")  # fmt: skip


# -- airflow-node join-token -----------------------------------------------------------------------


def join_listing(listing: JoinListing) -> str:
    """Given the master's tokens and enrolled workers, return one line for each."""
    lines = [
        f"token {token.id}  {'expired' if token.expired else 'valid'} until "
        f"{'?' if token.expires is None else time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(token.expires))}"
        for token in listing.tokens
    ]
    lines += [f"worker {worker.name}  {worker.address}" for worker in listing.workers]
    return "\n".join(lines) or "no tokens, no enrolled workers"


def revoked(tags: Sequence[str]) -> str:
    """Given the tags of the key lines a revoke removed, return the line that says so."""
    return "revoked " + ", ".join(tags)


# -- airflow-node sync --status --------------------------------------------------------------------


def sync_status(state: SyncState) -> str:
    """Given the sync state, return it as `key  value` lines, "-" for a value not recorded (what
    `airflow-node health` reads). An error may quote a file name: it shows escaped."""
    rows = [
        (key, printable(str(value)) if value is not None else "-") for key, value in dataclasses.asdict(state).items()
    ]
    return "\n".join(table(rows))


# -- airflow-node upgrade --------------------------------------------------------------------------


def upgrade_plan(plan: UpgradePlan) -> str:
    """Given the upgrade's plan, return its steps, numbered: what the dry run prints and the run carries out."""
    steps = (f"  {number}. {step}" for number, step in enumerate(plan.steps(), 1))
    return "\n".join([f"upgrade the master from Airflow {plan.current} to {plan.to}:", *steps])


def upgraded(outcome: UpgradeOutcome) -> str:
    """Given what the upgrade did, return the line that says so, with its timings."""
    spent = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in outcome.timings)
    return (f"upgraded the master to Airflow {outcome.to} ({spent}, master down {outcome.master_down:.1f}s, no "
            f"scheduling {outcome.no_scheduling:.1f}s); backup {outcome.backup}; the workers take no tasks until "
            "their next `airflow-node sync` moves them to it")  # fmt: skip
