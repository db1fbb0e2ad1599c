"""The sync state file, read by `airflow-node health`: JSON with exactly the keys of SyncState."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from airflow_nodes import statefile
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.digest import sha256_file
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import CLUSTER_FILE, SYNC_STATE_FILE
from airflow_nodes.target import Target


@dataclass(frozen=True)
class SyncState:
    dag_revision: str | None = None  # content hash of the published DAG tree
    source_revision: str | None = None  # the source as last fetched: tree hash, or git commit
    config_hash: str | None = None  # sha256 of this node's airflow.cfg after the last sync
    cluster_file_hash: str | None = None  # sha256 of the local cluster.toml
    last_success: str | None = None  # ISO-8601 UTC
    last_attempt: str | None = None
    last_error: str | None = None  # one line; None after a successful run


def read_state(target: Target) -> SyncState:
    """Return the recorded state, or an empty one before the first sync. Raise UserError if corrupt."""
    path = target.path(SYNC_STATE_FILE)
    unreadable = UserError(f"{path}: the sync state is unreadable; remove it (the next sync rewrites it)")
    try:
        data = statefile.load_json(path, limit=1 << 20)
    except UserError:
        raise unreadable from None
    if data is None:
        return SyncState()
    if not isinstance(data, dict):
        raise unreadable
    fields = {f.name for f in dataclasses.fields(SyncState)}
    values = {key: value for key, value in data.items() if key in fields}
    if not all(value is None or isinstance(value, str) for value in values.values()):
        raise unreadable
    return SyncState(**values)


def write_state(target: Target, state: SyncState) -> None:
    """Write the state file atomically (temp file beside it, fsync, rename); 0644: it holds no secrets."""
    path = target.path(SYNC_STATE_FILE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, (json.dumps(dataclasses.asdict(state), indent=2) + "\n").encode(), 0o644)
    except OSError as exc:
        raise OperationError(f"{path}: cannot record the sync state ({exc.strerror})") from None


def record_rendered_config(target: Target, airflow_cfg: str) -> None:
    """After a render outside sync (an upgrade): the config on disk is what this node should run, so
    health's consistency probe compares with it."""
    state = dataclasses.replace(
        read_state(target),
        config_hash=sha256_file(target.path(airflow_cfg), unreadable_ok=True),
        cluster_file_hash=sha256_file(target.path(CLUSTER_FILE), unreadable_ok=True),
    )
    write_state(target, state)
