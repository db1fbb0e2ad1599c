"""`airflow-node uninstall`: remove exactly what init installed, and nothing a person changed.

Uninstalling is reconciling to an empty plan: every file in the manifest is "no longer planned", so
the same apply that converges a node retires its units or programs (stopped and disabled, the
worker with its warm shutdown) and removes the files, keeping edited ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from airflow_nodes.apply import ApplyResult, apply, preview, read_manifest
from airflow_nodes.context import load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.initsystems import all_init_systems
from airflow_nodes.join import leave
from airflow_nodes.localservers import DB_NAME, DB_USER, drop_database_sql, gather_facts, psql, psql_command
from airflow_nodes.localservers import retirements as server_retirements
from airflow_nodes.node import CLUSTER_FILE, MANIFEST_FILE
from airflow_nodes.plan import Plan
from airflow_nodes.target import Target


@dataclass(frozen=True)
class UninstallOutcome:
    applied: ApplyResult
    left: str  # what the master said when this joined worker left it ("" when it never joined)
    kept: str | None  # the cluster file, kept (no --purge)
    kept_database: str = ""  # the database of our PostgreSQL, kept (no --purge)


def uninstall(target: Target, purge: bool = False, force: bool = False) -> UninstallOutcome:
    """Retire the role and delete the files in the manifest whose content is still ours (with force,
    edited ones are moved aside as backups). Raise UserError if nothing was installed here, or if
    the preview refuses; then nothing changed, here or on the master.

    The cluster file is kept unless purge: it holds the Fernet key, without which encrypted
    connections and variables in the metadata DB cannot be read.
    """
    manifest = read_manifest(target)
    keep = () if purge else (CLUSTER_FILE,)
    if not set(manifest.files) - set(keep):
        raise UserError(f"{target.path(MANIFEST_FILE)}: nothing was installed here by airflow-node")
    try:
        ctx = load_context(target)
        nodes = [ctx.node]
    except UserError:
        ctx, nodes = None, []
    # without node.toml, units are still retired by name (a supervisor group is not: no supervisord.conf)
    rules = [
        rule
        for system in all_init_systems()
        for node in nodes or [None]
        for rule in system.retirements(node, system.installed(node, target))
    ]
    rules += [rule for node in nodes or [None] for rule in server_retirements(node)]
    database = ctx.node.local_postgres if ctx else ""
    # the database holds the cluster's metadata: dropped with --purge only, as the cluster file's secrets
    final = ()
    if purge and database:
        facts = gather_facts(False, True, target, database)
        if target.real_system:  # before anything is removed: once node.toml is gone, nothing says what to drop
            try:
                psql(facts, "SELECT 1;", f"PostgreSQL {database}")
            except OperationError as exc:
                raise UserError(f"uninstall --purge: cannot drop the database: {exc}; start PostgreSQL {database}, "
                                "or uninstall without --purge; nothing was changed") from None  # fmt: skip
        final = (psql_command(facts, drop_database_sql(), f"drop database {DB_NAME} and role {DB_USER} (--purge)"),)
    plan = Plan(retirements=tuple(rules), keep=keep, purge_secrets=purge, final_commands=final)
    planned = preview(plan, target, force=force)  # refuses (a link, a backup in the way) before anything
    left = leave(target, ctx) if ctx else ""  # a joined worker's key on the master goes with it
    result = apply(planned)
    if not read_manifest(target).files:  # nothing of ours is left: neither is the manifest
        target.path(MANIFEST_FILE).unlink(missing_ok=True)
        for directory in sorted(manifest.dirs, key=len, reverse=True):
            with contextlib.suppress(OSError):
                target.path(directory).rmdir()
    kept_database = "" if purge or not database else f"database {DB_NAME} in PostgreSQL {database}"
    return UninstallOutcome(result, left, None if purge else str(target.path(CLUSTER_FILE)), kept_database)
