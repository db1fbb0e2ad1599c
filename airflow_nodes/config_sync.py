"""The cluster file travels like the DAGs: fetch the master's, and when it differs converge the node
through the same `reconcile_node` as `init`.

`apply` restarts only the daemons whose files changed, so an unchanged cluster file restarts nothing
and a change that only touches (say) the cron entry restarts no daemon either.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes.apply import apply
from airflow_nodes.celerycontrol import stop_consuming
from airflow_nodes.cluster import ClusterConfig, check_account_and_home, check_served_cluster, parse_cluster
from airflow_nodes.context import NodeContext
from airflow_nodes.control import control
from airflow_nodes.dagsource import DagSourceSpec, master_endpoint
from airflow_nodes.digest import sha256_file
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.install import (
    available_locks,
    build_release,
    check_wheelhouse,
    lock_with_hash,
    python_version,
    switch_venv,
    venv_of,
)
from airflow_nodes.node import CLUSTER_FILE, NODE_FILE, NodeSettings
from airflow_nodes.nodeplan import reconcile_node
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.target import Target
from airflow_nodes.versions import parse_airflow_version


@dataclass(frozen=True)
class ConfigSyncOutcome:
    changed: bool
    written: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()  # restarts run (or, under --root, listed: not run)
    ran_commands: bool = False


def fetch_master_cluster_file(runner: TransferRunner, destination: str, port: int | None, master_root: str) -> bytes:
    """Return the bytes of the master's cluster file, read with `ssh … cat`. Raise OperationError."""
    remote_path = master_root.rstrip("/") + CLUSTER_FILE
    argv = [*runner.ssh_argv(port), "--", destination, "cat", shlex.quote(remote_path)]
    result = runner.run(argv, f"reading {destination}:{remote_path}")
    if not result.stdout.strip():
        raise OperationError(f"reading {destination}:{remote_path}: the master's cluster file is empty")
    return result.stdout


def sync_config(
    ctx: NodeContext,
    target: Target,
    spec: DagSourceSpec,
    transfer: TransferRunner,
    master_root: str = "",
    force: bool = False,
    master_hash: str = "",
) -> ConfigSyncOutcome:
    """Fetch the master's cluster file; when it differs from ours, converge this node to it exactly as
    `init` would (files added, changed and removed; only what changed restarts). master_hash: its sha256,
    when the master's gate said it (the file is then fetched only when ours differs)."""
    if master_hash and master_hash == sha256_file(target.path(CLUSTER_FILE), unreadable_ok=True):
        return ConfigSyncOutcome(changed=False)
    destination, port = master_endpoint(spec, ctx.cluster.airflow_user, ctx.cluster.master_host)
    fetched = fetch_master_cluster_file(transfer, destination, port, master_root)
    if target.path(CLUSTER_FILE).read_bytes() == fetched:
        return ConfigSyncOutcome(changed=False)
    where = f"{destination}:{CLUSTER_FILE}"
    try:
        cluster = parse_cluster(fetched.decode(), where)
    except UnicodeDecodeError:
        raise UserError(f"{where}: the cluster file is not UTF-8 text") from None
    # the master's airflow account serves this file: it must not pick the account or the home root
    # hands out here
    check_served_cluster(cluster, ctx.cluster, where)
    if target.privileged:
        check_account_and_home(cluster, target.path(cluster.airflow_home), where)
    node, upgraded = follow_master(ctx, cluster, target)
    try:
        result = apply(reconcile_node(cluster, fetched, node, target, force=force, previous=ctx.node))
    except (OperationError, UserError) as exc:
        if not (upgraded and target.real_system):
            raise
        raise type(exc)(f"{exc}; this worker is stopped, its venv already on Airflow {node.airflow_version}: "
                        "the next sync tries again") from None  # fmt: skip
    if upgraded and target.real_system:  # drained for the upgrade: back to work on the new Airflow
        upgraded.append(control("start", target).summary())
    commands = result.ran or result.skipped
    return ConfigSyncOutcome(
        changed=True,
        written=tuple(result.written + result.removed),
        commands=tuple(upgraded) + tuple(" ".join(c.argv) for c in commands if c.argv[0] != "useradd"),
        ran_commands=bool(result.ran or upgraded),
    )


def airflow_daemons(ctx: NodeContext) -> tuple[str, ...]:
    """The node's Airflow daemons: all but airflow-node's own (its follower goes on following)."""
    return tuple(daemon.name for daemon in ctx.daemons if not daemon.ours)


def stop_airflow(ctx: NodeContext, target: Target) -> str:
    """Stop the node's Airflow daemons; return what was done, with how long it took."""
    started = time.monotonic()
    return f"{control('stop', target, daemons=airflow_daemons(ctx)).summary()} in {time.monotonic() - started:.1f}s"


def follow_master(ctx: NodeContext, cluster: ClusterConfig, target: Target) -> tuple[NodeSettings, list[str]]:
    """A node whose new cluster file names another Airflow than it runs (another line; or another
    version, when the master runs one of our locks): a worker stops consuming (the master's upgrade has
    done so already, unless this worker was down then); it builds the lock of that version for its Python
    beside the old one (from its wheelhouse, if it has one), stops its Airflow (a worker's warm stop:
    running tasks get its stop timeout) and switches the venv. Return its new settings and what was
    done. Other changes leave the settings alone. A master follows the master that upgraded the cluster
    (masters.converge_master)."""
    locks = available_locks()
    # the master runs one of our locks: be on its very version (a patch upgrade stays within a line);
    # a set of its own: its line is all there is to follow
    master_lock = lock_with_hash(cluster.airflow_packages)
    masters = {master_lock.airflow_version} if master_lock else set()
    if ctx.node.airflow_version in masters or (not masters and cluster.airflow_version == ctx.node.version.series):
        return ctx.node, []
    of_line = {
        lock.airflow_version
        for lock in locks
        if parse_airflow_version(lock.airflow_version).series == cluster.airflow_version
    }
    wanted = masters or of_line
    venv, python = venv_of(ctx.node, target)
    pyver = python_version(python) if target.real_system else f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [lock for lock in locks if lock.python == pyver and lock.airflow_version in wanted]
    if not candidates:
        raise OperationError(f"the master runs Airflow {cluster.airflow_version}: no shipped lock for it on Python "
                             f"{pyver}; this {ctx.node.role} stays on {ctx.node.airflow_version}")  # fmt: skip
    lock = max(candidates, key=lambda lock: parse_airflow_version(lock.airflow_version))
    done = [f"the master moved to Airflow {lock.airflow_version}"]
    if target.real_system:
        wheelhouse = Path(ctx.node.wheelhouse) if ctx.node.wheelhouse else None
        check_wheelhouse(wheelhouse, f"{NODE_FILE}: wheelhouse")
        if ctx.role.runs_tasks:  # a worker stops consuming, builds, then stops (running tasks finish meanwhile)
            consumed, _ = stop_consuming(ctx, venv, (ctx.node.celery_name,))
            done += [f"{worker} stopped consuming {', '.join(queues)}" for worker, queues in consumed.items() if queues]
        else:  # a master stops first: its old scheduler must not run on the DB the upgrade migrated
            done.append(stop_airflow(ctx, target))
        started = time.monotonic()
        try:
            release = build_release(lock, venv, python, wheelhouse, progress=lambda line: None)
        except OperationError as exc:
            waits = "taking no tasks, until a sync" if ctx.role.runs_tasks else "stopped, until its follower"
            raise OperationError(f"{exc}; this {ctx.node.role} stays on Airflow {ctx.node.airflow_version}, {waits} "
                                 f"builds {lock.airflow_version}") from None  # fmt: skip
        done.append(f"built Airflow {lock.airflow_version} in {time.monotonic() - started:.1f}s: {release}")
        if ctx.role.runs_tasks:
            done.append(stop_airflow(ctx, target))  # Celery's warm shutdown: running tasks finish first
        switch_venv(venv, release)
    return dataclasses.replace(ctx.node, airflow_version=lock.airflow_version), done
