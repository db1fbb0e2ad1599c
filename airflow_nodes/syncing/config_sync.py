"""The cluster file travels like the DAGs: fetch the master's, and when it differs re-render as `init` would.

`apply` restarts only the daemons whose files changed, so an unchanged cluster file restarts nothing
and a change that only touches (say) the cron entry restarts no daemon either.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes.apply import ApplyResult, Runner, apply, run_command
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import OperationError
from airflow_nodes.node import CLUSTER_FILE, under_root
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.syncing.spec import SSH, DagSourceSpec


@dataclass(frozen=True)
class ConfigSyncOutcome:
    changed: bool
    written: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()  # restarts run (or, under --root, listed: not run)
    ran_commands: bool = False


def master_endpoint(ctx: NodeContext, spec: DagSourceSpec) -> tuple[str, int | None]:
    """Return ([user@]host, port) to read the master's cluster file from: the DAG source's SSH endpoint
    when it has one, else the cluster's airflow user on the master host."""
    if spec.kind == SSH:
        return (f"{spec.user}@{spec.host}" if spec.user else str(spec.host)), spec.port
    return f"{ctx.cluster.airflow_user}@{ctx.cluster.master_host}", None


def fetch_master_cluster_file(runner: TransferRunner, destination: str, port: int | None, master_root: str) -> bytes:
    """Return the bytes of the master's cluster file, read with `ssh … cat`. Raise OperationError."""
    remote_path = master_root.rstrip("/") + CLUSTER_FILE
    argv = [*runner.ssh_argv(port), destination, "cat", shlex.quote(remote_path)]
    result = runner.run(argv, f"reading {destination}:{remote_path}")
    if not result.stdout.strip():
        raise OperationError(f"reading {destination}:{remote_path}: the master's cluster file is empty")
    return result.stdout


def sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def rerender_node(ctx: NodeContext, root: Path, cluster_bytes: bytes, force: bool, runner: Runner) -> ApplyResult:
    """Re-render this node from new cluster-file bytes exactly as `init` would, and apply it.

    The bytes go to a 0600 temp file (they hold the cluster's secrets) removed afterwards.
    """
    from airflow_nodes.init import InitRequest, plan_init

    node = ctx.node
    fd, name = tempfile.mkstemp(prefix="airflow-node-cluster-", suffix=".toml")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(cluster_bytes)
        request = InitRequest(
            role=node.role,
            root=root,
            config_file=Path(name),
            airflow_version=node.airflow_version,
            airflow_bin=node.airflow_bin,
            airflow_node_bin=node.airflow_node_bin,
            init_system=node.init_system,
            node_name=node.node_name,
            concurrency=node.concurrency,
            queues=node.queues,
            stop_timeout=node.stop_timeout,
            supervisord_conf=node.supervisord_conf,
        )
        outcome = plan_init(request)
        return apply(outcome.preview, force=force, runner=runner)
    finally:
        os.unlink(name)


def sync_config(
    ctx: NodeContext,
    root: Path,
    spec: DagSourceSpec,
    transfer: TransferRunner,
    master_root: str = "",
    force: bool = False,
    runner: Runner = run_command,
) -> ConfigSyncOutcome:
    """Fetch the master's cluster file; when it differs from ours, re-render and restart what changed."""
    destination, port = master_endpoint(ctx, spec)
    fetched = fetch_master_cluster_file(transfer, destination, port, master_root)
    local = under_root(root, CLUSTER_FILE)
    if local.read_bytes() == fetched:
        return ConfigSyncOutcome(changed=False)
    result = rerender_node(ctx, root, fetched, force, runner)
    commands = result.ran or result.skipped
    return ConfigSyncOutcome(
        changed=True,
        written=tuple(result.written),
        commands=tuple(" ".join(c.argv) for c in commands if c.argv[0] != "useradd"),
        ran_commands=bool(result.ran),
    )
