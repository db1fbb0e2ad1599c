"""`airflow-node upgrade --to X.Y.Z` on the master: move a running cluster to a newer Airflow.

Upstream's upgrade guide, done in order by the tool: preflight (a lock for this Python, DAGs that
pass ruff's Airflow 3 rules, a reachable DB, the new Airflow accepting the new config), the new
Airflow built beside the old one, the cluster drained, a pg_dump backup, the role stopped, the venv
link switched, the node re-rendered for the new version (daemons added and removed), `airflow db
migrate`, the role started and its health awaited. Each of these is a Step with its undo
(upgrade_steps): the dry run prints the very steps the run carries out, and when one fails (or Ctrl-C
comes) the steps done are undone, newest first (airflow_nodes/steps.py): before the role is stopped,
that is the drain alone, nothing changed; after, the old venv, the DB from the backup (when migrate
began) and the old units come back, and it says so. Workers follow on their next sync (they see the
new version line).

The drain: the scheduler stops first, so nothing new is queued; the queued and running tasks finish
under the old Airflow, against the DB they started with; then every worker stops consuming (Celery's
cancel_consumer, what upstream's `airflow celery remove-all-queues` sends), so a worker still on the
old Airflow never takes a task of the new one (it would fail it) until its sync restarts it on the new.

Several masters: before the drain, this master's gate says it upgrades (UPGRADE_MARKER) and the others'
followers stop their Airflow until it is done (none may run on the DB this one migrates); last, they
follow it to the new Airflow as workers do (masters.converge_master).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from airflow_nodes import defaults, execute
from airflow_nodes.apply import apply
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.celerycontrol import consumed_queues, set_consuming
from airflow_nodes.cluster import ClusterConfig, dump_cluster
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.control import control
from airflow_nodes.errors import OperationError, UserError, clipped
from airflow_nodes.fleet import known_workers, master_live, publish_packages, read_records
from airflow_nodes.health.model import ProbeInput, Status
from airflow_nodes.health.runner import run_probes, select_probes
from airflow_nodes.initsystems.systemd import unit_name
from airflow_nodes.install import (
    Lock,
    build_release,
    check_wheelhouse,
    find_lock,
    python_version,
    switch_venv,
    venv_of,
)
from airflow_nodes.join import upgrade_marker
from airflow_nodes.masters import look_at_peers
from airflow_nodes.netio import ProbeFailure
from airflow_nodes.node import UPGRADE_MARKER, NodeSettings
from airflow_nodes.nodeplan import read_credentials, reconcile_node, render_airflow_cfg
from airflow_nodes.pgclient import connect, libpq_tool_args, query_database
from airflow_nodes.polling import wait_until
from airflow_nodes.sanitise import printable
from airflow_nodes.steps import Step, StepFailed, reason_of, run_steps
from airflow_nodes.sync import gate_transfer
from airflow_nodes.syncing.state import record_rendered_config
from airflow_nodes.target import Target, check_creatable_dir
from airflow_nodes.trust import first_untrusted
from airflow_nodes.versions import MASTER_FOLLOWER, AirflowVersion, parse_airflow_version

# ruff's Airflow 3 rules: code that no longer runs (removed, or moved to a provider we do not install)
# blocks; code that still runs but is deprecated (AIR311, AIR312) is listed
BLOCKING_RULES = ("AIR301", "AIR302")
FOLLOWER_UNIT = unit_name(MASTER_FOLLOWER)  # each of several masters' follower


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
    drain_timeout: float = defaults.DRAIN_TIMEOUT

    def steps(self) -> list[str]:
        """The dry run: the description of every step the upgrade runs, in order (see upgrade_steps)."""
        return [step.description for step in upgrade_steps(self)]


def plan_upgrade(target: Target, to: str, backup_dir: Path, wheelhouse: Path | None = None,
                 drain_timeout: float = defaults.DRAIN_TIMEOUT) -> UpgradePlan:  # fmt: skip
    """Given the node and the target version, return the upgrade's plan. Raise UserError (exit 2, nothing
    changed) for a worker, an unknown or older target, or a Python the target's lock does not cover."""
    ctx = load_context(target)
    if not ctx.role.creates_cluster:
        raise UserError(
            f"upgrade: this node is a {ctx.node.role}; run it on the master (workers follow on `airflow-node sync`)"
        )
    new = parse_airflow_version(to, "--to")
    current = parse_airflow_version(ctx.node.airflow_version, "node.airflow_version")
    if new.patch is None:
        raise UserError(f"--to: {to!r}: give the full version, such as 3.3.2")
    if (new.major, new.minor, new.patch) <= (current.major, current.minor, current.patch or 0):
        raise UserError(f"--to: {new} is not newer than the installed {current} (to go back, restore the backup)")
    check_backup_dir(backup_dir)  # the backup comes after the drain: fail before it
    venv, python = venv_of(ctx.node, target)
    try:
        lock = find_lock(str(new), python_version(python))
    except UserError as exc:
        raise exc.about_instead("--to") from None
    new_cluster = dataclasses.replace(
        ctx.cluster, airflow_version=new.series, airflow_packages=lock.package_hash, serial=ctx.cluster.serial + 1
    )  # the other masters take it (masters.py)
    if wheelhouse is None and ctx.node.wheelhouse:  # the one `init --wheelhouse` recorded
        wheelhouse = Path(ctx.node.wheelhouse)
    check_wheelhouse(wheelhouse)
    return UpgradePlan(ctx, current, new, lock, venv, python, backup_dir, new_cluster, wheelhouse, drain_timeout)


# -- preflight -------------------------------------------------------------------------------------


def check_dags(plan: UpgradePlan, target: Target) -> tuple[list[str], list[str]]:
    """Run ruff's Airflow 3 rules over the published DAGs; return (blocking, deprecated) findings."""
    ruff = Path(sys.prefix) / "bin" / "ruff"
    folder = str(target.path(plan.ctx.dags_folder))
    argv = [ruff, "check", "--preview", "--select", "AIR3", "--no-cache", "--output-format", "json", "--exit-zero",
            "--isolated", folder + "/"]  # fmt: skip
    user = plan.ctx.cluster.airflow_user if target.privileged else None  # its tree: read as the account
    findings = json.loads(execute.run(argv, what="ruff (DAG check)", timeout=600, user=user).stdout or "[]")
    lines = {True: [], False: []}
    for finding in findings:
        where = f"{os.path.relpath(finding['filename'], folder)}:{finding['location']['row']}"
        lines[finding["code"] in BLOCKING_RULES].append(f"{where}: {finding['code']} {finding['message']}")
    return lines[True], lines[False]


DB_CLIENTS = ("pg_dump", "pg_restore", "psql")  # the backup, and the restore of a rollback


def check_database(plan: UpgradePlan) -> None:
    """Raise UserError when the metadata DB does not answer, or a client the backup or its restore runs
    is missing (found before the drain, not after)."""
    if missing := [tool for tool in DB_CLIENTS if shutil.which(tool) is None]:
        raise UserError(f"upgrade: {', '.join(missing)} not installed (the DB backup and its restore need them: "
                        "Debian's postgresql-client); nothing was changed")  # fmt: skip
    try:
        query_database(plan.ctx.cluster.db_url, timeout=10)
    except ProbeFailure as exc:
        raise UserError(f"upgrade: the metadata DB does not answer: {exc}") from None


def config_lint(plan: UpgradePlan, release: Path) -> list[str]:
    """`airflow config lint` of the new Airflow on the config the upgrade will render. Raise UserError
    when it names a key we set that the new version removed or renamed; return its other remarks
    (a changed default we set explicitly, say)."""
    new_ctx = NodeContext(plan.new_cluster, plan.ctx.node)
    # Airflow imports from the DAG folder and AIRFLOW_HOME the config names: it runs as the airflow
    # account, which may read the config (group) but not change it
    user = plan.ctx.cluster.airflow_user if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory() as home:  # 0700: no one else opens the file while it is written
        cfg = Path(home, "airflow.cfg")
        cfg.write_text(render_airflow_cfg(new_ctx))
        os.chmod(cfg, 0o640)
        if user:
            group = pwd.getpwnam(user).pw_gid
            os.chown(cfg, 0, group)
            os.chown(home, 0, group)
            os.chmod(home, 0o750)
        env = {"AIRFLOW_HOME": home, "AIRFLOW_CONFIG": str(cfg)}
        result = execute.run([release / "bin" / "airflow", "config", "lint"], env=env, timeout=300, clean_env=True,
                             user=user)  # fmt: skip
    remarks = [line.strip()[2:] for line in result.stdout.splitlines() if line.strip().startswith("- ")]
    blocking = [r for r in remarks if r.startswith("Removed") or " moved from " in r or " renamed to " in r]
    if blocking:
        raise UserError(f"upgrade: `airflow config lint` of Airflow {plan.to} on the new config: {blocking[0]}")
    return remarks


# -- the drain -------------------------------------------------------------------------------------

# task instances that a worker holds or is about to take
UNFINISHED_TASKS = (
    "SELECT dag_id, task_id, state, coalesce(hostname, '') FROM task_instance "
    "WHERE state IN ('queued', 'running', 'restarting') ORDER BY dag_id, task_id"
)


# the scheduling daemons of other hosts that heartbeat now: another master still running its Airflow
OTHER_MASTERS_RUNNING = (
    "SELECT DISTINCT coalesce(hostname, ''), job_type FROM job WHERE state = 'running' "
    "AND job_type IN ('SchedulerJob', 'TriggererJob', 'DagProcessorJob') "
    "AND latest_heartbeat > now() - interval '60 seconds' AND coalesce(hostname, '') <> %s ORDER BY 1, 2"
)


def other_masters_running(db_url: str, own_address: str) -> list[str]:
    """The scheduler, triggerer and DAG processor jobs other hosts heartbeat now, as "JobType on host"
    (hostname_callable makes each host's its advertised address)."""
    try:
        with connect(db_url, timeout=10, application_name="airflow-node-upgrade") as connection:
            rows = connection.execute(OTHER_MASTERS_RUNNING, (own_address,)).fetchall()
    except ProbeFailure as exc:
        raise UserError(f"upgrade: the metadata DB does not answer: {exc}") from None
    return [clipped(printable(f"{job_type} on {host or '?'}"), 200) for host, job_type in rows]


def check_no_other_upgrade(plan: UpgradePlan, target: Target, progress: Callable[[str], None]) -> None:
    """Several masters: raise UserError when another master upgrades the cluster now; name the masters
    that do not answer (they move when they come back: their followers follow this one)."""
    if not plan.ctx.cluster.several_masters:
        return
    look = look_at_peers(plan.ctx, target, gate_transfer(plan.ctx, target))
    if look.upgrading:
        address, version = min(look.upgrading.items())
        raise UserError(f"upgrade: the master {address} is upgrading the cluster to Airflow {version} now; "
                        "nothing was changed")  # fmt: skip
    for address in sorted(set(plan.ctx.other_masters) - look.answered):
        progress(f"  the master {address} does not answer: its follower moves it to Airflow {plan.to} when it is "
                 "back (its old Airflow may run until then)")  # fmt: skip


def live_other_masters(plan: UpgradePlan) -> dict[str, str]:
    """The other masters whose fleet records are fresh: address -> name (none when the broker does not say)."""
    try:
        records, now = read_records(plan.ctx, timeout=2.0)
    except Exception:  # noqa: BLE001 - the broker did not answer: none known live
        return {}
    return {r["address"]: str(r.get("node")) for r in records
            if r.get("address") in plan.ctx.other_masters and master_live(r, now)}  # fmt: skip


def stop_other_masters(plan: UpgradePlan, run: UpgradeRun) -> None:
    """Several masters: tell the others to stop their Airflow (this master's gate says it upgrades; their
    followers ask every PEER_POLL seconds), and wait until none of their schedulers, triggerers or DAG
    processors heartbeats: none may run on the DB this one migrates. Two masters that began at once both
    see the other's mark, and both give up."""
    write_atomically(run.target.path(UPGRADE_MARKER), upgrade_marker(str(plan.to)), 0o644)
    check_no_other_upgrade(plan, run.target, lambda line: None)
    run.held = live_other_masters(plan)
    running: list[str] = []

    def stopped() -> bool:
        nonlocal running
        running = other_masters_running(plan.ctx.cluster.db_url, plan.ctx.node.advertise_address)
        return not running

    if not wait_until(stopped, defaults.MASTERS_STOP_WAIT, interval=2):
        raise OperationError(f"the other masters did not stop their Airflow within {defaults.MASTERS_STOP_WAIT:g} s "
                             f"({', '.join(running[:3])}): see the log of {FOLLOWER_UNIT} there")  # fmt: skip
    run.progress(f"  the other masters stopped their Airflow: {', '.join(sorted(run.held.values())) or 'none live'}")


def release_other_masters(plan: UpgradePlan, run: UpgradeRun) -> None:
    """The other masters start their Airflow again (on theirs, which the DB is again); raise OperationError
    while the DB is not the old Airflow's."""
    if run.db_migrated:
        raise OperationError(f"the other masters stay stopped: the DB is not Airflow {plan.current}'s (remove "
                             f"{UPGRADE_MARKER} here once it is)")  # fmt: skip
    run.target.path(UPGRADE_MARKER).unlink(missing_ok=True)


def other_masters_follow(plan: UpgradePlan, run: UpgradeRun) -> None:
    """The upgrade is done: the other masters' followers take this master's cluster file and move to its
    Airflow (stopped, built, switched, started: as a worker follows). Wait until the fleet record of each
    one that was live when they stopped says so; name those that do not within MASTERS_FOLLOW_WAIT
    (nothing is undone for them: their followers go on trying)."""
    run.target.path(UPGRADE_MARKER).unlink(missing_ok=True)
    behind: list[str] = []
    started = time.monotonic()

    def moved() -> bool:
        nonlocal behind
        try:
            records, _ = read_records(plan.ctx, timeout=2.0)
        except Exception:  # noqa: BLE001 - the broker did not answer this time: ask again
            return False
        on = {r.get("address"): r.get("airflow") for r in records}
        behind = [f"{name} ({address}) on {on.get(address) or '?'}" for address, name in sorted(run.held.items())
                  if on.get(address) != str(plan.to)]  # fmt: skip
        return not behind

    if wait_until(moved, defaults.MASTERS_FOLLOW_WAIT, interval=3):
        run.progress(f"  the other masters are on Airflow {plan.to} ({time.monotonic() - started:.0f} s)")
    else:
        run.progress(f"  not on Airflow {plan.to} yet: {', '.join(behind[:5])}; its follower says why (the log "
                     f"of {FOLLOWER_UNIT} there)")  # fmt: skip


def unfinished_tasks(db_url: str) -> list[str]:
    """The task instances queued or running now in the metadata DB, as "dag.task state on host"."""
    try:
        with connect(db_url, timeout=10, application_name="airflow-node-upgrade") as connection:
            rows = connection.execute(UNFINISHED_TASKS).fetchall()
    except ProbeFailure as exc:
        raise OperationError(f"drain: the metadata DB: {exc}") from None
    return [clipped(printable(f"{dag}.{task} {state}" + (f" on {host}" if host else "")), 200)
            for dag, task, state, host in rows]  # fmt: skip


def wait_for_tasks(plan: UpgradePlan, progress: Callable[[str], None]) -> None:
    """Wait until no task is queued or running (the scheduler is stopped: none is added); raise
    OperationError at the drain timeout."""
    tasks: list[str] = []

    def finished() -> bool:
        nonlocal tasks
        now = unfinished_tasks(plan.ctx.cluster.db_url)
        if now and now != tasks:
            progress(f"  waiting for {len(now)} task(s) to finish: {', '.join(now[:5])}")
        tasks = now
        return not tasks

    if not wait_until(finished, plan.drain_timeout, interval=2):
        raise OperationError(f"drain: {len(tasks)} task(s) still queued or running after {plan.drain_timeout:g} s "
                             f"({', '.join(tasks[:3])}): wait, give a longer --drain-timeout, or clear a task "
                             "whose worker is gone")  # fmt: skip


def stop_consuming(plan: UpgradePlan, consumed: dict[str, list[str]], progress: Callable[[str], None]) -> None:
    """Tell the workers that answered (consumed_queues) to take no more tasks from the queues they consume."""
    for worker, queues in sorted(consumed.items()):
        progress(f"  {worker} stopped consuming {', '.join(queues) or 'nothing'}")
    silent = sorted(known_workers(plan.ctx) - consumed.keys())
    if silent or not consumed:
        progress(f"  {', '.join(silent) or 'no worker'} did not answer: a worker that runs or comes back on "
                 f"Airflow {plan.current} takes tasks until `airflow-node sync` runs there")  # fmt: skip
    for unconfirmed in set_consuming(plan.ctx, plan.venv, consumed, on=False):
        progress(f"  not confirmed: {unconfirmed} stopped consuming")


def undrain(plan: UpgradePlan, target: Target, consumed: dict[str, list[str]], progress) -> str:
    """Undo the drain: the workers consume again, the scheduler runs. Return what could not be undone."""
    problems = []
    try:
        problems += [
            f"{q} did not confirm it consumes again" for q in set_consuming(plan.ctx, plan.venv, consumed, on=True)
        ]
    except OperationError as exc:
        problems.append(f"the workers could not be told to consume again ({exc}): restart them")
    try:
        progress(control("start", target, daemons=("scheduler",)).summary())
    except OperationError as exc:
        problems.append(f"the scheduler did not start ({exc}): airflow-node start")
    return "; ".join(problems)


# -- the database ----------------------------------------------------------------------------------


# what backup_database writes: the only entries a backup directory may hold, as it is made 0700
DUMP_NAME = re.compile(r"airflow-db-[0-9A-Za-z.+-]+-[0-9]{8}T[0-9]{6}Z\.dump")


def check_backup_dir(path: Path) -> None:
    """Raise UserError naming --backup-dir unless root may keep DB dumps in path: a directory it may
    create or write, no link, not another account's, below directories no other account may change
    (that account could swap it for a link while pg_dump writes), and holding nothing but our dumps
    (it is made 0700: never /etc or /var/backups)."""
    check_creatable_dir(path, "--backup-dir")
    info = path.lstat() if os.path.lexists(path) else None
    if info and stat.S_ISLNK(info.st_mode):
        raise UserError(f"--backup-dir: {path} is a symbolic link; give the directory itself")
    if info and info.st_uid != os.geteuid():
        raise UserError(f"--backup-dir: {path} belongs to another account (uid {info.st_uid}); DB dumps go only "
                        "in root's own directory")  # fmt: skip
    if os.geteuid() == 0 and (above := first_untrusted(path.parent)):
        raise UserError(f"--backup-dir: {above} is another account's or others may write it; DB dumps go only "
                        "where no other account can change the way to them")  # fmt: skip
    try:
        other = next((name for name in os.listdir(path) if not DUMP_NAME.fullmatch(name)), None) if info else None
    except OSError as exc:
        raise UserError(f"--backup-dir: cannot read {path}: {exc.strerror}") from None
    if other is not None:
        raise UserError(f"--backup-dir: {path} holds {other[:60]!r}, not only DB dumps; give a directory of their "
                        "own (it is made 0700)")  # fmt: skip


def backup_database(plan: UpgradePlan) -> Path:
    """Dump the metadata DB with pg_dump into a new file of the backup directory (made 0700), 0600 from
    its creation on. Return its path. Raise OperationError, leaving no dump, when the directory is no
    longer fit (see check_backup_dir) or pg_dump fails."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dump = plan.backup_dir / f"airflow-db-{plan.current}-{stamp}.dump"
    try:
        check_backup_dir(plan.backup_dir)  # again: the drain took a while
        plan.backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = os.open(plan.backup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(directory, 0o700)
            os.close(os.open(dump.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory))
        finally:
            os.close(directory)
    except UserError as exc:
        raise OperationError(str(exc)) from None
    except OSError as exc:
        raise OperationError(f"--backup-dir: cannot create {dump}: {exc.strerror}") from None
    options, env = libpq_tool_args(plan.ctx.cluster.db_url)
    try:  # pg_dump truncates the file we made, keeping its mode
        execute.run(["pg_dump", "--format=custom", "--file", dump, *options], what="pg_dump (DB backup)", env=env,
                    timeout=3600)  # fmt: skip
    except BaseException:
        dump.unlink(missing_ok=True)
        raise
    return dump


def restore_database(plan: UpgradePlan, dump: Path) -> None:
    """Put the DB back as the dump has it: the migrated schema goes, the dump's comes back."""
    options, env = libpq_tool_args(plan.ctx.cluster.db_url)
    sql = "DROP SCHEMA public CASCADE; CREATE SCHEMA public;"
    execute.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql, *options], what="psql (reset schema)",
                env=env, timeout=600)  # fmt: skip
    execute.run(["pg_restore", "--no-owner", "--single-transaction", *options, dump], what="pg_restore", env=env,
                timeout=3600)  # fmt: skip


# -- the run ---------------------------------------------------------------------------------------


def migrate(ctx: NodeContext, release: Path) -> None:
    env = {**ctx.environment, "PATH": f"{release}/bin:/usr/bin:/bin"}
    execute.run([release / "bin" / "airflow", "db", "migrate"], what=f"airflow db migrate ({release.name})",
                user=ctx.cluster.airflow_user, env=env, clean_env=True, timeout=3600)  # fmt: skip


def render(target: Target, cluster: ClusterConfig, node, previous) -> None:
    """Converge the node to a cluster file and settings, as init and sync do (files, units, retirements)."""
    text = dump_cluster(cluster).encode()
    apply(reconcile_node(cluster, text, node, target, force=True, previous=previous,
                         credentials=read_credentials(target)))  # fmt: skip
    ctx = NodeContext(cluster, node)
    record_rendered_config(target, ctx.airflow_cfg)
    publish_packages(ctx, target)


def wait_healthy(target: Target, timeout: float) -> None:
    """Poll the web server and scheduler probes until both are OK; raise OperationError at the deadline."""
    last = "no answer yet"

    def healthy() -> bool:
        nonlocal last
        probe_input = ProbeInput(ctx=load_context(target), target=target, timeout=5, deadline=time.monotonic() + 5)
        probes, _ = select_probes(probe_input, ("web", "scheduler"))
        results = run_probes(probes, probe_input)
        bad = [r for r in results if r.status != Status.OK]
        last = "; ".join(f"{r.probe} {r.detail}" for r in bad)[:300]
        return bool(results) and not bad

    if not wait_until(healthy, timeout, interval=3):
        raise OperationError(f"not healthy within {timeout:g} s: {last}")


# -- the steps, each with its undo -----------------------------------------------------------------


@dataclass
class UpgradeRun:
    """One run of the upgrade: where it runs, and what each step learns for the steps and undos after it."""

    target: Target
    progress: Callable[[str], None]
    health_timeout: float
    release: Path | None = None  # the new Airflow, built beside the old one
    consumed: dict[str, list[str]] = field(default_factory=dict)  # the queues each worker consumed
    dump: Path | None = None  # the DB backup
    old_release: Path | None = None  # where the venv link pointed before the switch
    db_migrated: bool = False  # migrate began and no restore finished since: no old Airflow may run on the DB
    held: dict[str, str] = field(default_factory=dict)  # the other masters stopped for the upgrade: address -> name
    paused: float = 0.0  # when the scheduler stopped (time.monotonic)
    down: float = 0.0  # when the master stopped
    healthy: float = 0.0  # when it was healthy again


def upgraded_node(plan: UpgradePlan) -> NodeSettings:
    return dataclasses.replace(plan.ctx.node, airflow_version=str(plan.to))


def preflight(plan: UpgradePlan, run: UpgradeRun) -> None:
    """Raise UserError when a published DAG cannot run on the new Airflow or the DB does not answer."""
    blocking, deprecated = check_dags(plan, run.target)
    for line in deprecated:
        run.progress(f"  deprecated in Airflow 3 (still runs): {line}")
    if blocking:
        raise UserError(f"upgrade: {len(blocking)} DAG finding(s) that Airflow {plan.to} cannot run, first: "
                        f"{blocking[0]} (ruff check --preview --select AIR3 {plan.ctx.dags_folder})")  # fmt: skip
    check_database(plan)
    check_no_other_upgrade(plan, run.target, run.progress)


def build_new_release(plan: UpgradePlan, run: UpgradeRun) -> None:
    run.release = build_release(plan.lock, plan.venv, plan.python, plan.wheelhouse, run.progress)
    for remark in config_lint(plan, run.release):
        run.progress(f"  airflow config lint: {remark}")


def drain(plan: UpgradePlan, run: UpgradeRun) -> None:
    """The scheduler stops first, so nothing new is queued; the queued and running tasks finish; then every
    worker that answers stops consuming."""
    run.paused = time.monotonic()
    run.progress(control("stop", run.target, daemons=("scheduler",)).summary())
    wait_for_tasks(plan, run.progress)
    run.consumed = consumed_queues(plan.ctx, plan.venv)  # kept before they are told: the undo tells them again
    stop_consuming(plan, run.consumed, run.progress)


def undo_drain(plan: UpgradePlan, run: UpgradeRun) -> None:
    """The workers consume again and the scheduler runs; raise OperationError saying what could not be done."""
    if run.db_migrated:
        raise OperationError(f"the scheduler and the workers stay stopped: the DB is not Airflow {plan.current}'s")
    if problems := undrain(plan, run.target, run.consumed, run.progress):
        raise OperationError(problems)


def back_up(plan: UpgradePlan, run: UpgradeRun) -> None:
    run.dump = backup_database(plan)
    run.progress(f"  backup: {run.dump}")


def stop_master(plan: UpgradePlan, run: UpgradeRun) -> None:
    run.down = time.monotonic()
    run.progress(control("stop", run.target).summary())


def stop_master_quietly(plan: UpgradePlan, run: UpgradeRun) -> None:
    """Stop the role whatever state it is in; a stop that fails is said, not raised (as after a failed start)."""
    try:
        run.progress(control("stop", run.target).summary())
    except OperationError as exc:
        run.progress(f"  stop: {exc}")


def start_old_master(plan: UpgradePlan, run: UpgradeRun) -> None:
    if run.db_migrated:
        raise OperationError(f"{plan.ctx.role_name} not started: the DB is not Airflow {plan.current}'s")
    start_master(plan, run)
    run.progress(f"  rolled back: Airflow {plan.current} healthy again")


def switch_to_new(plan: UpgradePlan, run: UpgradeRun) -> None:
    run.old_release = plan.venv.resolve()
    switch_venv(plan.venv, run.release, run.progress)


def switch_back(plan: UpgradePlan, run: UpgradeRun) -> None:
    if run.old_release is not None:
        switch_venv(plan.venv, run.old_release, run.progress)


def render_new_node(plan: UpgradePlan, run: UpgradeRun) -> None:
    render(run.target, plan.new_cluster, upgraded_node(plan), plan.ctx.node)


def render_old_node(plan: UpgradePlan, run: UpgradeRun) -> None:
    switch_back(plan, run)  # before: the fleet record render publishes names the packages the link points at
    render(run.target, plan.ctx.cluster, plan.ctx.node, upgraded_node(plan))


def migrate_db(plan: UpgradePlan, run: UpgradeRun) -> None:
    run.db_migrated = True
    migrate(NodeContext(plan.new_cluster, upgraded_node(plan)), run.release)


def restore_db(plan: UpgradePlan, run: UpgradeRun) -> None:
    stop_master_quietly(plan, run)  # nothing may hold the DB while its schema is replaced
    restore_database(plan, run.dump)
    run.db_migrated = False


def start_master(plan: UpgradePlan, run: UpgradeRun) -> None:
    """Start the role (whichever Airflow the venv link names) and wait until it is healthy."""
    run.progress(control("start", run.target).summary())
    wait_healthy(run.target, run.health_timeout)
    run.healthy = time.monotonic()


StepAction = Callable[[UpgradePlan, UpgradeRun], None]
DRAIN, STOP_MASTER, MIGRATE = "drain", "stop the master", "migrate"
STOP_MASTERS = "stop the other masters"


def upgrade_steps(plan: UpgradePlan) -> list[Step[UpgradeRun]]:
    """Given the plan, return the upgrade's steps in order, each with its undo: the dry run prints their
    descriptions (UpgradePlan.steps), upgrade() runs them."""

    def step(name: str, description: str, do: StepAction, undo: StepAction | None = None) -> Step[UpgradeRun]:
        # each step with an undo can stop halfway (a half-migrated DB, a half-rendered node), and each
        # undo is safe on a change half made: a failed step is undone too
        return Step(name, description, partial(do, plan), undo and partial(undo, plan), undo_if_failed=bool(undo))

    daemons = [d.name for d in plan.ctx.daemons]
    several = plan.ctx.cluster.several_masters
    new_daemons = [d.name for d in plan.ctx.role.daemons(plan.to.line, several_masters=several)]
    added = ", ".join(sorted(set(new_daemons) - set(daemons))) or "none"
    removed = ", ".join(sorted(set(daemons) - set(new_daemons))) or "none"
    replaced = " (Airflow 3: api-server replaces webserver)" if plan.ctx.line.major < plan.to.line.major else ""
    stop_others = step(STOP_MASTERS, "stop the other masters' Airflow (this master's gate tells their followers), "
                       f"and wait up to {defaults.MASTERS_STOP_WAIT:g} s until none of their schedulers, triggerers "
                       "or DAG processors heartbeats; undo: they start it again", stop_other_masters,
                       release_other_masters)  # fmt: skip
    others_follow = step("the other masters follow", f"the other masters move to Airflow {plan.to} as workers do "
                         "(their followers build it, stop, switch and start); wait up to "
                         f"{defaults.MASTERS_FOLLOW_WAIT:g} s until their fleet records say so",
                         other_masters_follow)  # fmt: skip
    return [
        step("preflight", f"preflight: the Airflow {plan.to} lock for Python {plan.lock.python}; DAGs in "
             f"{plan.ctx.dags_folder} against ruff {', '.join(BLOCKING_RULES)}; the metadata DB answers",
             preflight),
        step(f"build Airflow {plan.to} and lint its config", f"build Airflow {plan.to} beside {plan.venv} "
             f"({plan.venv}.releases/); `airflow config lint` of the new config with it", build_new_release),
        *([stop_others] if several else []),
        step(DRAIN, f"drain: stop the scheduler; wait up to {plan.drain_timeout:g} s for queued and running tasks "
             "to finish; every worker stops consuming; undo: the workers consume again, the scheduler starts",
             drain, undo_drain),
        step("backup", f"back up the metadata DB with pg_dump into {plan.backup_dir}", back_up),
        step(STOP_MASTER, f"stop {plan.ctx.role_name} ({', '.join(daemons)}); undo: start it on Airflow {plan.current} "
             "and wait until it is healthy", stop_master, start_old_master),
        step("switch the venv", f"switch {plan.venv} to the new build; undo: switch it back", switch_to_new,
             switch_back),
        step("re-render", f"re-render the node: cluster file airflow_version {plan.ctx.cluster.airflow_version} -> "
             f"{plan.new_cluster.airflow_version}; daemons {added} added, {removed} removed{replaced}; undo: "
             f"re-render the Airflow {plan.current} node", render_new_node, render_old_node),
        step(MIGRATE, f"airflow db migrate with Airflow {plan.to}; undo: stop {plan.ctx.role_name}, restore the DB "
             "from the backup", migrate_db, restore_db),
        step("start and health", f"start {plan.ctx.role_name} and wait until the web server and scheduler are "
             "healthy; undo: stop it. The workers then follow on their next `airflow-node sync`, which installs the "
             "same lock, stops them (running tasks get their stop timeout) and starts them on the new Airflow",
             start_master, stop_master_quietly),
        *([others_follow] if several else []),
    ]  # fmt: skip


def upgrade(
    plan: UpgradePlan, target: Target, progress: Callable[[str], None], health_timeout: float
) -> UpgradeOutcome:
    """Carry out the plan on the real master, step by step (upgrade_steps). Raise UserError (nothing
    changed) when preflight blocks; OperationError when a step fails, after undoing the steps done."""
    return carry_out(plan, upgrade_steps(plan), UpgradeRun(target, progress, health_timeout))


@dataclass(frozen=True)
class UpgradeOutcome:
    to: AirflowVersion
    timings: tuple[tuple[str, float], ...]  # (step, seconds)
    master_down: float  # seconds from the master's stop to its health
    no_scheduling: float  # seconds from the scheduler's stop to the master's health
    backup: Path


def carry_out(plan: UpgradePlan, steps: list[Step[UpgradeRun]], run: UpgradeRun) -> UpgradeOutcome:
    """Run the upgrade's steps; return what was done, with the timings. Raise the failure as it came
    when nothing was to be undone, else OperationError (failure_message)."""
    try:
        timings = run_steps(steps, run, run.progress)
    except StepFailed as failed:
        raise OperationError(failure_message(plan, run, failed)) from None
    return UpgradeOutcome(plan.to, tuple(timings), run.healthy - run.down, run.healthy - run.paused, run.dump)


def failure_message(plan: UpgradePlan, run: UpgradeRun, failed: StepFailed) -> str:
    """Given a failed run of the upgrade's steps, return its one-line error: before the master was
    stopped, nothing was changed; after, the rollback, and what of it failed."""
    reason = reason_of(failed.cause)
    tried = {step.name for step in failed.undone} | {step.name for step, _ in failed.not_undone}
    drain_problems = "; ".join(str(exc) for step, exc in failed.not_undone if step.name == DRAIN)
    if STOP_MASTER not in tried:
        undone = f"but {drain_problems}" if drain_problems else "the scheduler and the workers run again"
        return f"upgrade: {reason}; nothing was changed, {undone}"
    but = f"; but {drain_problems}" if drain_problems else ""
    if rollback := [f"undoing {step.name}: {reason_of(exc)}" for step, exc in failed.not_undone if step.name != DRAIN]:
        return (f"upgrade to {plan.to} failed ({reason}), and so did the rollback ({'; '.join(rollback)}): the DB "
                f"backup is {run.dump}, the old Airflow {run.old_release or plan.venv.resolve()}; the workers take no "
                f"tasks until restarted{but}")  # fmt: skip
    db = f"the DB restored from {run.dump}" if MIGRATE in tried else f"the DB unchanged (backup {run.dump})"
    return f"upgrade to {plan.to} failed ({reason}); rolled back to Airflow {plan.current}, {db}{but}"
