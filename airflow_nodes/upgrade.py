"""`airflow-node upgrade --to X.Y.Z` on the master: move a running cluster to a newer Airflow.

Upstream's upgrade guide, done in order by the tool: preflight (a lock for this Python, DAGs that
pass ruff's Airflow 3 rules, a reachable DB, the new Airflow accepting the new config), a pg_dump
backup, the new Airflow built beside the old one, the role stopped, the venv link switched, the node
re-rendered for the new version (daemons added and removed), `airflow db migrate`, the role started
and its health awaited. When migrate or health fails, the old venv, the DB from the backup and the old
units come back, and it says so. Workers follow on their next sync (they see the new version line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from airflow_nodes import execute
from airflow_nodes.apply import apply
from airflow_nodes.cluster import ClusterConfig, dump_cluster
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.control import control
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.install import (
    Lock,
    available_locks,
    build_release,
    find_lock,
    install_airflow,
    python_version,
    switch_venv,
)
from airflow_nodes.node import NodeSettings
from airflow_nodes.nodeplan import read_credentials, reconcile_node, render_airflow_cfg
from airflow_nodes.target import Target
from airflow_nodes.urls import parse_url
from airflow_nodes.versions import AirflowVersion, parse_airflow_version

# ruff's Airflow 3 rules: code that no longer runs (removed, or moved to a provider we do not install)
# blocks; code that still runs but is deprecated (AIR311, AIR312) is listed
BLOCKING_RULES = ("AIR301", "AIR302")


@dataclass(frozen=True)
class UpgradePlan:
    ctx: NodeContext  # the node as it is
    current: AirflowVersion
    to: AirflowVersion
    lock: Lock
    venv: Path  # the link the daemons run through
    python: str
    backup_dir: Path
    new_cluster: ClusterConfig
    wheelhouse: Path | None = None  # install offline from these wheels

    def steps(self) -> list[str]:
        old, new = self.ctx.line, self.to.line
        daemons = [d.name for d in self.ctx.daemons]
        new_daemons = [d.name for d in new.master_daemons]
        return [
            f"preflight: the Airflow {self.to} lock for Python {self.lock.python}; DAGs in {self.ctx.dags_folder} "
            f"against ruff {', '.join(BLOCKING_RULES)}; the metadata DB answers; `airflow config lint` of the "
            "new config",
            f"build Airflow {self.to} beside {self.venv} ({self.venv}.releases/)",
            f"back up the metadata DB with pg_dump into {self.backup_dir}",
            f"stop airflow-master ({', '.join(daemons)})",
            f"switch {self.venv} to the new build; cluster file: airflow_version {self.ctx.cluster.airflow_version} "
            f"-> {self.new_cluster.airflow_version}",
            f"re-render the node: daemons {', '.join(sorted(set(new_daemons) - set(daemons))) or 'none'} added, "
            f"{', '.join(sorted(set(daemons) - set(new_daemons))) or 'none'} removed"
            + (" (Airflow 3: api-server replaces webserver)" if old.major < new.major else ""),
            f"airflow db migrate with Airflow {self.to}",
            "start airflow-master and wait until the web server and scheduler are healthy",
            "on a failed migrate or health: stop, restore the DB from the backup, switch back, re-render the old "
            "node, start",
            "workers: their next `airflow-node sync` drains them, installs the same lock and restarts them",
        ]


def venv_of(node: NodeSettings) -> tuple[Path, str]:
    """The venv link a node's daemons run through, and the system interpreter it was made from (a new
    release is built with that one)."""
    venv = Path(node.airflow_bin).parent.parent
    return venv, str((venv / "bin" / "python").resolve())


def plan_upgrade(target: Target, to: str, backup_dir: Path, wheelhouse: Path | None = None) -> UpgradePlan:
    """Given the node and the target version, return the upgrade's plan. Raise UserError (exit 2, nothing
    changed) for a worker, an unknown or older target, or a Python the target's lock does not cover."""
    ctx = load_context(target)
    if ctx.node.role != "master":
        raise UserError("upgrade: this node is a worker; run it on the master (workers follow on `airflow-node sync`)")
    new = parse_airflow_version(to, "--to")
    current = parse_airflow_version(ctx.node.airflow_version, "node.airflow_version")
    if new.patch is None:
        raise UserError(f"--to: {to!r}: give the full version, such as 3.3.2")
    if (new.major, new.minor, new.patch) <= (current.major, current.minor, current.patch or 0):
        raise UserError(f"--to: {new} is not newer than the installed {current} (to go back, restore the backup)")
    if not backup_dir.is_absolute():
        raise UserError(f"--backup-dir: {backup_dir} must be an absolute path")
    venv, python = venv_of(ctx.node)
    try:
        lock = find_lock(str(new), python_version(python))
    except UserError as exc:
        raise UserError("--to: " + str(exc).split(": ", 1)[1]) from None
    new_cluster = dataclasses.replace(ctx.cluster, airflow_version=new.series, airflow_packages=lock.package_hash)
    if wheelhouse is not None and not (wheelhouse.is_dir() and any(wheelhouse.glob("*.whl"))):
        raise UserError(f"--wheelhouse: {wheelhouse} is not a directory of wheels")
    return UpgradePlan(ctx, current, new, lock, venv, python, backup_dir, new_cluster, wheelhouse)


# -- preflight -------------------------------------------------------------------------------------


def check_dags(plan: UpgradePlan, target: Target) -> tuple[list[str], list[str]]:
    """Run ruff's Airflow 3 rules over the published DAGs; return (blocking, deprecated) findings."""
    ruff = Path(sys.prefix) / "bin" / "ruff"
    folder = str(target.path(plan.ctx.dags_folder))
    argv = [ruff, "check", "--preview", "--select", "AIR3", "--no-cache", "--output-format", "json", "--exit-zero",
            "--isolated", folder + "/"]  # fmt: skip
    findings = json.loads(execute.run(argv, what="ruff (DAG check)", timeout=600).stdout or "[]")
    lines = {True: [], False: []}
    for finding in findings:
        where = f"{os.path.relpath(finding['filename'], folder)}:{finding['location']['row']}"
        lines[finding["code"] in BLOCKING_RULES].append(f"{where}: {finding['code']} {finding['message']}")
    return lines[True], lines[False]


def check_database(plan: UpgradePlan) -> None:
    from airflow_nodes.health.database import libpq_url, query_database
    from airflow_nodes.health.netio import ProbeFailure

    try:
        query_database(libpq_url(plan.ctx.cluster.db_url), timeout=10)
    except ProbeFailure as exc:
        raise UserError(f"upgrade: the metadata DB does not answer: {exc}") from None


def config_lint(plan: UpgradePlan, release: Path) -> list[str]:
    """`airflow config lint` of the new Airflow on the config the upgrade will render. Raise UserError
    when it names a key we set that the new version removed or renamed; return its other remarks
    (a changed default we set explicitly, say)."""
    new_ctx = NodeContext(plan.new_cluster, plan.ctx.node)
    with tempfile.TemporaryDirectory() as home:
        cfg = Path(home, "airflow.cfg")
        cfg.write_text(render_airflow_cfg(new_ctx))
        os.chmod(cfg, 0o600)
        env = {"AIRFLOW_HOME": home, "AIRFLOW_CONFIG": str(cfg)}
        result = execute.run([release / "bin" / "airflow", "config", "lint"], env=env, timeout=300, clean_env=True)
    remarks = [line.strip()[2:] for line in result.stdout.splitlines() if line.strip().startswith("- ")]
    blocking = [r for r in remarks if r.startswith("Removed") or " moved from " in r or " renamed to " in r]
    if blocking:
        raise UserError(f"upgrade: `airflow config lint` of Airflow {plan.to} on the new config: {blocking[0]}")
    return remarks


# -- the database ----------------------------------------------------------------------------------


def _libpq(plan: UpgradePlan) -> tuple[list[str], dict[str, str]]:
    """Connection options for pg_dump and pg_restore, and the password for their environment (never argv)."""
    from airflow_nodes.health.database import libpq_url

    parts = parse_url(libpq_url(plan.ctx.cluster.db_url), "database.url")
    options = ["-h", parts.host or "localhost", "-p", str(parts.port or 5432), "-U", parts.user, "-d", parts.path]
    return options, {"PGPASSWORD": parts.password} if parts.password else {}


def backup_database(plan: UpgradePlan) -> Path:
    plan.backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dump = plan.backup_dir / f"airflow-db-{plan.current}-{stamp}.dump"
    options, env = _libpq(plan)
    execute.run(["pg_dump", "--format=custom", "--file", dump, *options], what="pg_dump (DB backup)", env=env,
                timeout=3600)  # fmt: skip
    os.chmod(dump, 0o600)
    return dump


def restore_database(plan: UpgradePlan, dump: Path) -> None:
    """Put the DB back as the dump has it: the migrated schema goes, the dump's comes back."""
    options, env = _libpq(plan)
    sql = "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"
    execute.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql, *options], what="psql (reset schema)", env=env,
                timeout=600)  # fmt: skip
    execute.run(["pg_restore", "--no-owner", "--single-transaction", *options, dump], what="pg_restore", env=env,
                timeout=3600)  # fmt: skip


# -- the run ---------------------------------------------------------------------------------------


def migrate(ctx: NodeContext, release: Path) -> None:
    env = {**ctx.environment, "PATH": f"{release}/bin:/usr/bin:/bin"}
    execute.run([release / "bin" / "airflow", "db", "migrate"], what=f"airflow db migrate ({release.name})",
                user=ctx.cluster.airflow_user, env=env, clean_env=True, timeout=3600)  # fmt: skip


def render(target: Target, cluster: ClusterConfig, node, previous) -> None:
    """Converge the node to a cluster file and settings, as init and sync do (files, units, retirements)."""
    from airflow_nodes.detect import installed_package_hash
    from airflow_nodes.fleet import publish_record
    from airflow_nodes.syncing.state import record_rendered_config

    text = dump_cluster(cluster).encode()
    apply(reconcile_node(cluster, text, node, target, force=True, previous=previous,
                         credentials=read_credentials(target)))  # fmt: skip
    ctx = NodeContext(cluster, node)
    record_rendered_config(target, ctx.airflow_cfg)
    # the fleet view compares every node's packages with the master's record: renew it at once
    if target.real_system:
        publish_record(ctx, target, {"packages": installed_package_hash(node.airflow_bin)})


def wait_healthy(target: Target, timeout: float) -> None:
    """Poll the web server and scheduler probes until both are OK; raise OperationError at the deadline."""
    from airflow_nodes.health.model import ProbeInput, Status
    from airflow_nodes.health.runner import run_probes, select_probes

    deadline, last = time.monotonic() + timeout, "no answer yet"
    while time.monotonic() < deadline:
        ctx = load_context(target)
        probe_input = ProbeInput(ctx=ctx, target=target, timeout=5, deadline=time.monotonic() + 5)
        probes, _ = select_probes(probe_input, ("web", "scheduler"))
        results = run_probes(probes, probe_input)
        bad = [r for r in results if r.status != Status.OK]
        if results and not bad:
            return
        last = "; ".join(f"{r.probe} {r.detail}" for r in bad)[:300]
        time.sleep(3)
    raise OperationError(f"not healthy within {timeout:g} s: {last}")


def upgrade(plan: UpgradePlan, target: Target, progress: Callable[[str], None], health_timeout: float) -> str:
    """Carry out the plan on the real master. Raise UserError (nothing changed) when preflight blocks,
    OperationError after a rollback when migrate or health failed."""
    timings: list[str] = []

    def phase(name: str, started: float) -> None:
        timings.append(f"{name} {time.monotonic() - started:.1f}s")
        progress(f"  done: {timings[-1]}")

    started = time.monotonic()
    blocking, deprecated = check_dags(plan, target)
    for line in deprecated:
        progress(f"  deprecated in Airflow 3 (still runs): {line}")
    if blocking:
        raise UserError(f"upgrade: {len(blocking)} DAG finding(s) that Airflow {plan.to} cannot run, first: "
                        f"{blocking[0]} (ruff check --preview --select AIR3 {plan.ctx.dags_folder})")  # fmt: skip
    check_database(plan)
    phase("preflight", started)

    started = time.monotonic()
    release = build_release(plan.lock, plan.venv, plan.python, plan.wheelhouse, progress)
    for remark in config_lint(plan, release):
        progress(f"  airflow config lint: {remark}")
    phase(f"build Airflow {plan.to} and lint its config", started)

    started = time.monotonic()
    dump = backup_database(plan)
    progress(f"  backup: {dump}")
    phase("backup", started)

    old_release = plan.venv.resolve()
    new_node = dataclasses.replace(plan.ctx.node, airflow_version=str(plan.to))
    down = time.monotonic()
    progress(control("stop", target))
    try:
        started = time.monotonic()
        switch_venv(plan.venv, release, progress)
        render(target, plan.new_cluster, new_node, plan.ctx.node)
        migrate(NodeContext(plan.new_cluster, new_node), release)
        phase("migrate", started)
        started = time.monotonic()
        progress(control("start", target))
        wait_healthy(target, health_timeout)
        phase("start and health", started)
    except (OperationError, UserError) as exc:
        progress(f"  FAILED: {exc}; rolling back to Airflow {plan.current}")
        try:
            rollback(plan, target, dump, old_release, health_timeout, progress)
        except (OperationError, UserError) as failed:
            raise OperationError(f"upgrade to {plan.to} failed ({exc}), and so did the rollback ({failed}): the DB "
                                 f"backup is {dump}, the old Airflow {old_release}") from None  # fmt: skip
        raise OperationError(f"upgrade to {plan.to} failed ({exc}); rolled back to Airflow {plan.current}, "
                             f"the DB restored from {dump}") from None  # fmt: skip
    timings.append(f"master down {time.monotonic() - down:.1f}s")
    return (f"upgraded the master to Airflow {plan.to} ({', '.join(timings)}); backup {dump}; workers follow on "
            "their next `airflow-node sync`")  # fmt: skip


def rollback(plan: UpgradePlan, target: Target, dump: Path, old_release: Path, health_timeout: float,
             progress: Callable[[str], None]) -> None:  # fmt: skip
    try:
        progress(control("stop", target))
    except OperationError as exc:
        progress(f"  stop: {exc}")
    restore_database(plan, dump)
    switch_venv(plan.venv, old_release, progress)
    render(target, plan.ctx.cluster, plan.ctx.node, dataclasses.replace(plan.ctx.node, airflow_version=str(plan.to)))
    progress(control("start", target))
    wait_healthy(target, health_timeout)
    progress(f"  rolled back: Airflow {plan.current} healthy again")


# -- workers follow ----------------------------------------------------------------------------------


def follow_master(ctx: NodeContext, cluster: ClusterConfig, target: Target) -> tuple[NodeSettings, list[str]]:
    """A worker whose new cluster file names another Airflow line than it runs: drain it (a warm stop,
    so running tasks finish within its stop timeout), install that line's lock for its Python, and return
    its new settings and what was done. Other changes leave the settings alone."""
    if cluster.airflow_version == ctx.node.version.series:
        return ctx.node, []
    venv, python = venv_of(ctx.node)
    pyver = python_version(python) if target.real_system else f"{sys.version_info[0]}.{sys.version_info[1]}"
    series = cluster.airflow_version
    candidates = [
        lock for lock in available_locks() if lock.python == pyver and lock.airflow_version.startswith(series + ".")
    ]
    if not candidates:
        raise OperationError(f"the master runs Airflow {cluster.airflow_version}: no shipped lock for it on Python "
                             f"{pyver}; this worker stays on {ctx.node.airflow_version}")  # fmt: skip
    lock = max(candidates, key=lambda lock: parse_airflow_version(lock.airflow_version))
    done = [f"the master moved to Airflow {lock.airflow_version}"]
    if target.real_system:
        started = time.monotonic()
        done.append(control("stop", target))  # the drain: Celery's warm shutdown
        done.append(f"drained in {time.monotonic() - started:.1f}s")
        done.append(install_airflow(lock.airflow_version, venv, python=python, force=True).message)
    return dataclasses.replace(ctx.node, airflow_version=lock.airflow_version), done
