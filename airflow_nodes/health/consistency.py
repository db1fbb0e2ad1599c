"""Consistency probe: is this node still what the last sync from the master made it?

Reads the sync state (/var/lib/airflow-node/sync-state.json, written by `airflow-node sync`) and
compares, locally and cheaply:
  - sha256 of this node's airflow.cfg with the hash recorded right after the last sync;
  - sha256 of this node's cluster.toml with the one recorded at the last sync;
  - the age of the last successful sync with 3 x the sync interval, and the last error.
It does not ask the master for its live DAG revision or config: a node that synced recently and is
unchanged since holds what the master published then. The DAG revision is shown so nodes can be
compared side by side.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow_nodes import statefile
from airflow_nodes.digest import sha256_file
from airflow_nodes.errors import UserError
from airflow_nodes.fleet import COMPARED, named_masters, node_facts, period_seconds, read_records, reference_master
from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.node import CLUSTER_FILE, SYNC_STATE_FILE
from airflow_nodes.timestamps import parse_utc
from airflow_nodes.urls import broker_endpoints

NAME = "consistency"
STALE_AFTER_INTERVALS = 3


def judge_sync_state(
    state: dict, cfg_hash: str | None, cluster_hash: str | None, interval_minutes: int, now: datetime
) -> list[tuple[Status, str, str]]:
    """Given the sync state and the current local hashes, return (status, aspect, detail) findings."""
    findings: list[tuple[Status, str, str]] = []
    last_success = parse_utc(state.get("last_success"))
    limit = STALE_AFTER_INTERVALS * interval_minutes * 60
    if last_success is None:
        findings.append((Status.WARNING, "last sync", "never succeeded"))
    else:
        age = (now - last_success).total_seconds()
        status = Status.WARNING if age > limit else Status.OK
        findings.append((status, "last sync", f"{age / 60:.0f} min ago (stale after {limit // 60} min)"))
    if state.get("last_error"):
        findings.append((Status.WARNING, "last error", f"{state['last_error']} (at {state.get('last_attempt')})"))
    for aspect, recorded, current in (
        ("airflow.cfg", state.get("config_hash"), cfg_hash),
        ("cluster file", state.get("cluster_file_hash"), cluster_hash),
    ):
        if not recorded:
            findings.append((Status.WARNING, aspect, "no hash recorded by sync yet"))
        elif current is None:
            findings.append((Status.CRITICAL, aspect, "missing on this node"))
        elif current != recorded:
            findings.append((Status.WARNING, aspect, "changed since the last sync (local edit, or a sync is due)"))
        else:
            findings.append((Status.OK, aspect, f"as synced ({current[:12]})"))
    revision = state.get("dag_revision")
    if revision:
        findings.append((Status.OK, "DAG revision", str(revision)[:12]))
    else:
        findings.append((Status.WARNING, "DAG revision", "no DAG tree published on this node yet"))
    return findings


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result per consistency aspect (or one if sync never ran)."""
    path = probe_input.target.path(SYNC_STATE_FILE)
    target = str(path)
    try:
        state = statefile.load_json(path, limit=1 << 20)
    except UserError:
        return [Result(Status.UNKNOWN, NAME, target, None, "unreadable sync state (not JSON airflow-node wrote)")]
    if state is None:
        return [Result(Status.WARNING, NAME, target, None, "never synced (no sync state file)")]
    if not isinstance(state, dict):
        return [Result(Status.UNKNOWN, NAME, target, None, "sync state is not a JSON object")]
    findings = judge_sync_state(
        state,
        sha256_file(probe_input.target.path(probe_input.ctx.airflow_cfg), unreadable_ok=True),
        sha256_file(probe_input.target.path(CLUSTER_FILE), unreadable_ok=True),
        probe_input.ctx.cluster.sync_interval_minutes,
        datetime.now(timezone.utc),
    )
    if probe_input.ctx.role.follows_master and broker_is_ours(probe_input):
        findings.append(compare_with_master(probe_input, state))
    return [Result(status, NAME, aspect, None, detail) for status, aspect, detail in findings]


def broker_is_ours(probe_input: ProbeInput) -> bool:
    """On the real system the broker is the cluster's; a tree rendered under --root only asks one on
    this machine (tests render clusters whose addresses must never be contacted)."""
    if probe_input.target.real_system:
        return True
    hosts = {e.host for e in broker_endpoints(probe_input.ctx.cluster.broker_url)}
    return hosts <= {"127.0.0.1", "::1", "localhost"}


def compare_with_master(probe_input: ProbeInput, state: dict) -> tuple[Status, str, str]:
    """This node against the master's live record in the broker (what the master published last)."""
    from redis.exceptions import RedisError

    aspect = "the master's live record"
    ctx = probe_input.ctx
    try:
        records, now = read_records(ctx, probe_input.remaining())
    except (RedisError, UserError) as exc:
        return Status.UNKNOWN, aspect, f"cannot read it from the broker ({exc.__class__.__name__})"
    # several masters: the first master's live record, else another's (fleet.reference_master)
    master = reference_master(records, named_masters(ctx.cluster), now, period_seconds(ctx))
    if master is None and ctx.cluster.several_masters:
        return Status.WARNING, aspect, "no master record (none published yet)"
    if master is None:
        return Status.WARNING, aspect, "no single master record (none published yet, or two claim the role)"
    mine = {**node_facts(ctx, probe_input.target), "dags": state.get("dag_revision") or ""}
    differing = [name for name in COMPARED if name in master and name in mine and master[name] != mine[name]]
    if differing:
        return Status.WARNING, aspect, f"differs from the master's: {', '.join(differing)}"
    return Status.OK, aspect, f"same as the master's ({master['node']})"


PROBE = Probe(NAME, check, description="airflow.cfg, cluster file and DAGs as last synced")
