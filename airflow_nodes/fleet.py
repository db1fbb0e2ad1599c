"""The whole cluster from any node: every node publishes a small record to the broker, and
`airflow-node cluster` compares them, the master's as the reference.

Redis is the one service every node already reaches with credentials. Records live under keys of our
own (`airflow-node:<cluster>:node:<name>`, nothing Celery or kombu uses) and expire after three sync
periods, so a node that stops reporting turns stale, then disappears. Publishing happens at the end
of every `sync` and `health` run, merges with what the node published before, costs a few small
commands, and never fails either run: a broker outage only means no record this time.

A record holds hashes, never a secret: the cluster's secrets are represented by the sha256 of all of
them together, which includes the 256-bit generated keys, so nothing about any one can be guessed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from airflow_nodes.context import NodeContext
from airflow_nodes.digest import sha256, sha256_file
from airflow_nodes.install import compare_package_sets
from airflow_nodes.node import CLUSTER_FILE
from airflow_nodes.target import Target

KEY_PREFIX = "airflow-node"
# what every node must share with the master; a differing value is drift
COMPARED = ("tool", "airflow", "packages", "cfg", "cluster_file", "secrets", "dags")
CLOCK_WARN = 5.0  # seconds off the broker's clock
OK, DRIFT, MISSING, UNKNOWN = 0, 1, 2, 3  # Nagios, as health


def tool_version() -> str:
    try:
        return version("airflow-nodes")
    except PackageNotFoundError:  # a source tree
        return "0"


def key_of(cluster_name: str, node_name: str) -> str:
    return f"{KEY_PREFIX}:{cluster_name}:node:{node_name}"


def period_seconds(ctx: NodeContext) -> int:
    return ctx.cluster.sync_interval_minutes * 60


def node_facts(ctx: NodeContext, target: Target) -> dict:
    """What this node publishes about itself that costs no more than reading a few files."""
    secrets = sha256("\n".join(sorted(ctx.cluster.secret_values())).encode())[:16]
    return {
        "node": ctx.node.node_name,
        "role": ctx.node.role,
        "address": ctx.node.advertise_address,
        "tool": tool_version(),
        "airflow": ctx.node.airflow_version,
        "cfg": (sha256_file(target.path(ctx.airflow_cfg), unreadable_ok=True) or "")[:16],
        "cluster_file": (sha256_file(target.path(CLUSTER_FILE), unreadable_ok=True) or "")[:16],
        "secrets": secrets,
    }


def publish_record(ctx: NodeContext, target: Target, facts: dict, timeout: float = 1.0) -> str:
    """Merge facts into this node's record and store it with its expiry. Return "" or why it was not
    stored (the broker down, say): publishing never fails the run that does it."""
    from airflow_nodes.redisclient import connect

    try:
        client = connect(ctx.cluster.broker_url, ctx.cluster.sentinel_master, timeout)
        key = key_of(ctx.cluster.name, ctx.node.node_name)
        try:
            before = valid_record(client.get(key)) or {}  # what this node published last (if it is one)
            seconds, micros = client.time()
            broker_time = seconds + micros / 1e6
            record = {**before, **node_facts(ctx, target), **facts}
            record["published"] = broker_time  # ages are measured on the broker's clock, as `cluster` reads it
            record["clock_offset"] = round(time.time() - broker_time, 3)
            client.set(key, json.dumps(record, sort_keys=True), ex=3 * period_seconds(ctx))
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a record is a bonus: nothing may break sync or health
        return f"no fleet record stored ({exc.__class__.__name__})"
    return ""


def read_records(ctx: NodeContext, timeout: float) -> tuple[list[dict], float]:
    """Return every node's record of this cluster and the broker's time. Raise redis-py errors."""
    from airflow_nodes.redisclient import connect

    client = connect(ctx.cluster.broker_url, ctx.cluster.sentinel_master, timeout)
    try:
        keys = sorted(client.scan_iter(match=key_of(ctx.cluster.name, "*"), count=500))
        values = client.mget(keys) if keys else []
        seconds, micros = client.time()
    finally:
        client.close()
    return [record for record in map(valid_record, values) if record], seconds + micros / 1e6


def known_workers(ctx: NodeContext, timeout: float = 2.0) -> set[str]:
    """The Celery names (celery@NODE) of the workers this cluster knows now: those expected by name and
    those whose record is not stale. Empty when the broker cannot be read: this only adds warnings."""
    from redis.exceptions import RedisError

    try:
        records, now = read_records(ctx, timeout)
    except RedisError:
        records, now = [], 0.0
    expected = ctx.cluster.expected_workers
    names = set() if not expected or expected.isdigit() else set(expected.split(","))
    names |= {r["node"] for r in records if r.get("role") == "worker" and not stale(r, now, period_seconds(ctx))}
    return {f"celery@{name}" for name in names}


def age(record: dict, now: float) -> float:
    return now - float(record.get("published") or 0)


def stale(record: dict, now: float, period: int) -> bool:
    return age(record, now) > 2 * period


# Anyone with the broker URL (every node's airflow user, any task) can write these keys: a record is
# read as data of known fields, each of its type and printable, or not at all.
_TEXT_FIELDS = ("node", "role", "address", "tool", "airflow", "packages", "cfg", "cluster_file", "secrets", "dags",
                "last_sync", "sync_error", "daemons")  # fmt: skip
_NUMBER_FIELDS = ("published", "clock_offset")


def valid_record(value: bytes | str | None) -> dict | None:
    """Given a stored value, return it as a record, or None when it is not one a node could have written."""
    try:
        record = json.loads(value) if value else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("node"), str) or not record["node"]:
        return None
    clean: dict = {}
    for name in _TEXT_FIELDS:
        text = record.get(name, "")
        if not isinstance(text, str) or len(text) > 200 or not text.isprintable():
            return None
        clean[name] = text
    for name in _NUMBER_FIELDS:
        number = record.get(name, 0)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            return None
        clean[name] = float(number)
    online = record.get("worker_online")
    clean["worker_online"] = online if isinstance(online, bool) else None
    return clean


@dataclass
class NodeRow:
    record: dict
    findings: list[str] = field(default_factory=list)  # what differs from the master, or is wrong
    differing: set[str] = field(default_factory=set)  # the fields to mark in the table
    status: int = OK


@dataclass
class FleetReport:
    rows: list[NodeRow]
    missing: list[str]
    status: int
    verdict: str

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "verdict": self.verdict,
            "missing": self.missing,
            "nodes": [{**row.record, "findings": row.findings, "status": row.status} for row in self.rows],
        }


def expected_missing(expected: str, present: set[str], workers_seen: int) -> list[str]:
    """Given the cluster file's expected workers ("", a count or names), return what is missing."""
    if not expected:
        return []
    if expected.isdigit():
        short = int(expected) - workers_seen
        return [f"{short} of {expected} expected worker(s)"] if short > 0 else []
    return [name for name in expected.split(",") if name not in present]


def master_of(records: list[dict]) -> dict | None:
    """The master's record, the reference: None when there is none, or when two claim the role."""
    masters = [r for r in records if r.get("role") == "master"]
    return masters[0] if len(masters) == 1 else None


def _same(name: str, value: object, masters: object) -> bool:
    if name == "packages" and value and masters:
        return compare_package_sets(value, masters)[0]  # another Python's lock may agree where it matters
    return value == masters


def compare(records: list[dict], expected_workers: str, period: int, now: float) -> FleetReport:
    """Given the records and the broker's time, return the fleet: the master's values as the reference,
    every differing value, stale and missing nodes, and a verdict with a Nagios status."""
    masters = [r for r in records if r.get("role") == "master"]
    master = master_of(records)
    rows = []
    for record in sorted(records, key=lambda r: (r.get("role") != "master", r["node"])):
        row = NodeRow(record)
        if stale(record, now, period):
            row.findings.append(f"stale: last report {age(record, now):.0f} s ago")
        if master is not None and record is not master:
            for name in COMPARED:
                if not _same(name, record.get(name), master.get(name)):
                    row.differing.add(name)
                    row.findings.append(f"{name} differs from the master's")
        if abs(float(record.get("clock_offset") or 0)) > CLOCK_WARN:
            row.differing.add("clock_offset")
            row.findings.append(f"clock {record['clock_offset']:+.1f} s off")
        if record.get("sync_error"):
            row.findings.append(f"last sync failed: {record['sync_error'][:80]}")
        if record.get("role") == "worker" and record.get("worker_online") is False:
            row.findings.append("its Celery worker is offline")
        row.status = DRIFT if row.findings else OK
        rows.append(row)
    names = {r["node"] for r in records}
    workers = sum(1 for r in records if r.get("role") == "worker")
    lost = [] if master else ([f"the master ({len(masters)} records claim it)"] if masters else ["the master"])
    missing = lost + expected_missing(expected_workers, names, workers)
    status = MISSING if missing else max((row.status for row in rows), default=OK)
    drifting = [row.record["node"] for row in rows if row.status]
    if missing:
        verdict = f"CRITICAL: missing {', '.join(missing)}"
    elif drifting:
        verdict = f"WARNING: {len(drifting)} of {len(rows)} node(s) differ or are stale: {', '.join(drifting)}"
    else:
        verdict = f"OK: {len(rows)} node(s) consistent with the master"
    return FleetReport(rows, missing, status, verdict)


def fleet_report(target: Target, timeout: float) -> FleetReport:
    """Read and compare the records of this node's cluster. A broker that cannot be read is CRITICAL."""
    from redis.exceptions import RedisError

    from airflow_nodes.context import load_context

    ctx = load_context(target)
    try:
        records, now = read_records(ctx, timeout)
    except RedisError as exc:
        return FleetReport([], [], MISSING, f"CRITICAL: the broker cannot be read ({exc.__class__.__name__})")
    return compare(records, ctx.cluster.expected_workers, period_seconds(ctx), now)


COLUMNS = ("node", "role", "address", "airflow", "packages", "cfg", "cluster_file", "secrets", "dags", "clock_offset")


def format_fleet(report: FleetReport) -> str:
    """The table: one row per node, a differing value marked with "!", then findings and the verdict."""
    rows = [[c.upper() for c in COLUMNS]]
    for row in report.rows:
        cells = []
        for column in COLUMNS:
            value = row.record.get(column, "")
            text = str(value)[:12] if column not in ("node", "address") else str(value)
            cells.append(f"!{text}" if column in row.differing else text)
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]
    for row in report.rows:
        lines += [f"{row.record['node']}: {finding}" for finding in row.findings]
    lines.append(report.verdict)
    return "\n".join(lines)


def as_json(report: FleetReport) -> str:
    return json.dumps(report.as_dict(), indent=2, sort_keys=True)
