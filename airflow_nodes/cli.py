"""The `airflow-node` command: parse options, call one function, format its result, pick the exit code."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from airflow_nodes import defaults, output, roles
from airflow_nodes.errors import ERROR_PREFIX, OperationError, UserError
from airflow_nodes.exitcodes import ExitCode
from airflow_nodes.node import INIT_SYSTEMS
from airflow_nodes.sanitise import one_line, printable, printable_lines
from airflow_nodes.target import Target


class Finite(click.FloatRange):
    """A float within [min, max], and finite: click's FloatRange lets nan through (every comparison with
    nan is false), which would switch off the guard or the timeout the option sets."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def echo(text: str) -> None:
    """Print a command's output. What came from outside (a worker's name, a server's answer, a DAG
    file's name) may hold escape sequences: they show escaped and never act on root's terminal."""
    click.echo(printable_lines(text))


def error(message: str) -> None:
    """Print an error as one line on stderr: escaped, and bounded however long a value it quotes."""
    click.echo(one_line(message), err=True)


def _target(ctx: click.Context, param: click.Parameter, value: str) -> Target:
    try:
        return Target.at(value)
    except UserError as exc:
        # click's message names the option itself: "Invalid value for '--root': DETAIL"
        raise click.BadParameter(exc.detail if exc.about == "--root" else str(exc), ctx, param) from None


root_option = click.option(
    "--root",
    "target",
    default="/",
    show_default=True,
    callback=_target,
    help="Act on a node rendered under this directory; commands that need the real system are listed, not run.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airflow-nodes")
def cli() -> None:
    """Turn this host into a node of an Airflow CeleryExecutor cluster: a master, a worker, or the whole cluster."""


ROLE_HELP = "What this host runs: " + "; ".join(f"{role.name}, {role.summary}" for role in roles.ROLES.values())


@cli.command()
@click.option("--role", type=click.Choice(roles.NAMES), required=True, help=ROLE_HELP)
@root_option
@click.option("--dry-run", is_flag=True, help="Print the plan and a diff against the disk; change nothing.")
@click.option("--force", is_flag=True, help="Replace files someone edited since we wrote them (kept as a backup).")
@click.option("--airflow-version", metavar="X.Y[.Z]", help="Use this version instead of detecting the installed one.")
@click.option("--venv", metavar="DIR", help="Virtualenv Airflow is installed in [default: airflow on PATH].")
@click.option("--airflow-bin", metavar="PATH", help="The airflow executable, if not DIR/bin/airflow.")
@click.option("--init-system", type=click.Choice(INIT_SYSTEMS), help="[default: systemd if PID 1]")
@click.option("--node-name", metavar="NAME", help="This node's name; the Celery worker is celery@NAME.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help=f"Worker: tasks run at once [default: {defaults.CONCURRENCY}].")  # fmt: skip
@click.option("-q", "--queues", metavar="Q1,Q2", help="Worker: Celery queues to consume [default: Airflow's].")
@click.option("--stop-timeout", type=int, metavar="SEC",
              help=f"Worker: time running tasks get on stop [{defaults.STOP_TIMEOUT}].")  # fmt: skip
@click.option("--supervisord-conf", metavar="PATH", help="supervisord.conf whose conf.d/ gets our programs.")
@click.option("--writable-path", "writable_paths", multiple=True, metavar="DIR",
              help="A directory this node's daemons (and so tasks) may write under systemd's sandbox; "
              "repeat for more; replaces the recorded list ('' clears it).")  # fmt: skip
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Worker: the cluster file to use.")
@click.option("--from-master", metavar="[USER@]HOST[:PORT]", help="Worker: fetch the cluster file over SSH.")
@click.option("--join", metavar="TOKEN", envvar="AIRFLOW_NODE_JOIN_TOKEN", show_envvar=True,
              help="Worker or another master: join the master this token names (`airflow-node join-token` there): "
              "enroll, fetch the cluster file, render and start this node.")  # fmt: skip
@click.option("--join-file", type=click.Path(path_type=Path), metavar="FILE", help="Worker: read --join from a file.")
@click.option("--advertise-address", metavar="ADDRESS",
              help="The address the other nodes reach this one at (task logs) [default: this host's address "
              "on its route to the master].")  # fmt: skip
@click.option("--master-host", metavar="HOST", help="Master: address workers use to reach this host.")
@click.option("--broker-url", metavar="URL", envvar="AIRFLOW_NODE_BROKER_URL", show_envvar=True,
              help="Master: Redis broker, redis://[:PASSWORD@]HOST:6379/0 (keep the password out of ps and "
              "shell history: use the environment variable or --broker-url-file).")  # fmt: skip
@click.option("--broker-url-file", type=click.Path(path_type=Path), metavar="FILE",
              help="Master: read --broker-url from this file (its first line).")  # fmt: skip
@click.option("--db-url", metavar="URL", envvar="AIRFLOW_NODE_DB_URL", show_envvar=True,
              help="Master: metadata DB, postgresql://USER:PASSWORD@HOST/DB (or the environment variable, "
              "or --db-url-file).")  # fmt: skip
@click.option("--db-url-file", type=click.Path(path_type=Path), metavar="FILE",
              help="Master: read --db-url from this file (its first line).")  # fmt: skip
@click.option(
    "--api-address",
    metavar="HOST",
    help="Master: the cluster address of the web/API server (a load balancer's) [the master's].",
)
@click.option(
    "--floating-address",
    metavar="ADDRESS/PREFIX",
    help="Master: a cluster address keepalived moves among the masters (two or more; systemd).",
)
@click.option("--sentinel-master", metavar="NAME", help="Master: the master name, with a sentinel:// broker list.")
@click.option("--expect-workers", "expected_workers", metavar="N|NAME,...",
              help="Master: the workers to expect; `airflow-node cluster` flags a missing one.")  # fmt: skip
@click.option("--result-backend", metavar="URL", envvar="AIRFLOW_NODE_RESULT_BACKEND", show_envvar=True,
              help="Master: Celery result backend [default: db+ the DB URL].")  # fmt: skip
@click.option("--dags-source", metavar="SPEC", help="Master: where nodes sync DAGs from.")
@click.option("--sync-interval", "sync_interval_minutes", type=int, metavar="MIN",
              help=f"Master: minutes [{defaults.SYNC_INTERVAL_MINUTES}].")  # fmt: skip
@click.option("--airflow-home", metavar="DIR",
              help=f"Master: AIRFLOW_HOME on every node [{defaults.AIRFLOW_HOME}].")  # fmt: skip
@click.option("--visibility-timeout", type=int, metavar="SEC",
              help=f"Master: longest task plus margin [{defaults.VISIBILITY_TIMEOUT}].")  # fmt: skip
@click.option("--web-port", type=int, help=f"Master: webserver / api-server port [{defaults.WEB_PORT}].")
@click.option("--flower-port", type=int, help=f"Master: flower port [{defaults.FLOWER_PORT}].")
@click.option("--with-redis/--without-redis", default=None,
              help="Master: set up this host's Redis (the distribution's package) as the broker, with a generated "
              "password, instead of --broker-url [default: as the last init].")  # fmt: skip
@click.option(
    "--with-postgres/--without-postgres",
    default=None,
    help="Master: set up this host's PostgreSQL (the distribution's package) with a role and database "
    "for Airflow, instead of --db-url; enrolled workers are admitted [default: as the last init].",
)
@click.option("--db-allow", "db_allow", multiple=True, metavar="NETWORK",
              help="Master, --with-postgres: also admit this network (10.0.0.0/24), say for workers set up with "
              "--config; repeat for more; replaces the recorded list ('' clears it).")  # fmt: skip
@click.option("--start", is_flag=True, help="Start the node's daemons once it is set up.")
@click.option("--install-airflow", metavar="X.Y.Z", help="First install this Airflow into --venv from a shipped lock.")
@click.option("--wheelhouse", metavar="DIR",
              help="Install Airflow offline from this directory of wheels (root's own): for --install-airflow, "
              "and when a worker follows the master to a new Airflow; recorded ('' clears it).")  # fmt: skip
@click.option("--airflow-node-bin", metavar="PATH", hidden=True)
def init(target: Target, dry_run: bool, force: bool, start: bool, **options: object) -> None:
    """Write this node's config, units and cron entry, and enable its daemons; remove what a previous
    init wrote that this one no longer needs."""
    from airflow_nodes.apply import apply, node_lock
    from airflow_nodes.init import (
        InitRequest,
        after_init,
        install_requested_airflow,
        install_requested_servers,
        plan_init,
    )
    from airflow_nodes.join import check_token, read_token
    from airflow_nodes.report import format_apply, format_preview

    options["join"] = read_token(options["join"], options.pop("join_file"))
    for listed in ("writable_paths", "db_allow"):
        options[listed] = ",".join(options[listed]) if options[listed] else None
    if dry_run and options["join"]:  # joining changes the master: a dry run only checks the token
        echo(check_token(options["join"]))
        return
    request, installed = install_requested_airflow(InitRequest(**options), target, dry_run, progress=echo)
    with node_lock(target):
        outcome = plan_init(request, target, force=force)  # every option checked before a package is installed
        servers_installed = install_requested_servers(request, target, dry_run)
        if servers_installed and target.real_system and not dry_run:
            outcome = plan_init(request, target, force=force)  # with the servers as installed now
        for done in (installed, servers_installed):  # before the plan: they run (or would) before it is made
            if done:
                echo(done)
        echo(format_preview(outcome, show_diff=dry_run))
        if dry_run:
            return
        if not outcome.preview.nothing_to_do:
            echo(format_apply(apply(outcome.preview)))
    echo(after_init(outcome, target, start=start or bool(request.join), joined=bool(request.join)))


@cli.command()
@root_option
@click.option("--timeout", type=Finite(0, 7 * 86400), default=defaults.DRAIN_TIMEOUT, show_default=True,
              metavar="SEC", help="How long to wait for the running tasks.")  # fmt: skip
def drain(target: Target, timeout: float) -> int:
    """Stop this node's worker taking new tasks and wait for its running tasks (exit 1 if some still run);
    the fleet view shows it drained until `resume` (or a restart of the worker)."""
    from airflow_nodes.drain import drain as drain_worker

    outcome = drain_worker(target, timeout)
    echo(output.drained(outcome))
    return ExitCode.OK if outcome.running == () else ExitCode.FAILED


@cli.command()
@root_option
def resume(target: Target) -> None:
    """Let this node's drained worker take tasks again (its queues, or Airflow's default queue)."""
    from airflow_nodes.drain import resume as resume_worker

    worker, queues = resume_worker(target)
    echo(f"{worker} takes tasks again from {', '.join(queues)}")


@cli.command()
@root_option
def admit(target: Target) -> None:
    """Let the workers enrolled now reach this master's PostgreSQL (init --with-postgres): the node is
    planned again as its last init recorded it, so pg_hba lists them. A path unit runs it whenever a worker
    enrolls or leaves."""
    from airflow_nodes.init import admit as admit_workers
    from airflow_nodes.report import format_apply

    applied = admit_workers(target)
    echo("\n".join(map(format_apply, applied)) if applied else "Nothing to change.")


def _control(action: str, target: Target) -> None:
    from airflow_nodes.control import control

    echo(output.control_outcome(control(action, target)))


@cli.command()
@root_option
def status(target: Target) -> None:
    """Show the state of this node's daemons."""
    _control("status", target)


@cli.command()
@root_option
def start(target: Target) -> None:
    """Start every daemon of this node's role (one of several masters: also while another's upgrade held it)."""
    from airflow_nodes.masters import release_hold

    release_hold(target)
    _control("start", target)


@cli.command()
@root_option
def stop(target: Target) -> None:
    """Stop every daemon of this node's role (workers finish their running tasks first)."""
    _control("stop", target)


@cli.command()
@root_option
def restart(target: Target) -> None:
    """Restart every daemon of this node's role (workers finish their running tasks first)."""
    _control("restart", target)


@cli.command("join-token")
@root_option
@click.option("--ttl", type=click.IntRange(60, defaults.JOIN_TOKEN_MAX_TTL), default=defaults.JOIN_TOKEN_TTL,
              show_default=True, metavar="SEC", help="How long the token can enroll workers.")  # fmt: skip
@click.option("--ssh-port", type=click.IntRange(1, 65535), default=22, show_default=True,
              help="The port of the master's sshd.")  # fmt: skip
@click.option("--list", "show", is_flag=True, help="List the tokens and the enrolled workers.")
@click.option("--revoke", metavar="ID|NODE", help="Revoke a token, or an enrolled node's key.")
@click.option(
    "--role",
    type=click.Choice(["worker", "master"]),
    default="worker",
    show_default=True,
    help="What the token joins: a worker, or another master of this cluster.",
)
def join_token(target: Target, ttl: int, ssh_port: int, show: bool, revoke: str | None, role: str) -> None:
    """On a master: print the command that joins a worker or a master (a new token), or list or revoke."""
    from airflow_nodes import join, masters

    if show:
        echo(output.join_listing(join.list_joins(target)))
    elif revoke is not None:
        echo(output.revoked(masters.revoke(target, revoke)))
    else:
        if role == "master":  # the masters fetch from each other: this one needs a key and a place in the file
            masters.prepare_for_peers(target)
        echo(join.token_command(join.master_join_token(target, ttl, ssh_port, role)))


@cli.command("ssh-gate", hidden=True)
@click.option("--keys", type=click.Path(path_type=Path), required=True)
@click.option("--root", "gate_root", default="/")
@click.argument("words", nargs=-1)
def ssh_gate(keys: Path, gate_root: str, words: tuple[str, ...]) -> None:
    """The forced command of every key airflow-node adds on the master (see join.py)."""
    import os

    from airflow_nodes.join import gate
    from airflow_nodes.sshkeys import KeysFile

    keys_file = KeysFile(keys, sys.argv[0], gate_root)
    output = gate(keys_file, list(words), os.environ.get("SSH_ORIGINAL_COMMAND", ""), sys.stdin.buffer)
    sys.stdout.buffer.write(output)


@cli.command()
@root_option
@click.option("--purge", is_flag=True, help="Also remove the cluster file, which holds the cluster's secrets.")
@click.option("--force", is_flag=True, help="Also remove files someone edited since we wrote them (kept as backups).")
def uninstall(target: Target, purge: bool, force: bool) -> None:
    """Stop the role and remove exactly what init installed."""
    from airflow_nodes.report import format_uninstall
    from airflow_nodes.uninstall import uninstall as run_uninstall

    echo(format_uninstall(run_uninstall(target, purge=purge, force=force)))


@cli.command("install-airflow")
@click.option("--version", "airflow_version", default="3.3.2", show_default=True, help="Airflow version to install.")
@click.option("--venv", type=click.Path(path_type=Path), default=Path(defaults.AIRFLOW_VENV), show_default=True)
@click.option("--python", default=sys.executable, show_default=True, help="Interpreter the venv is built from.")
@click.option("--wheelhouse", type=click.Path(path_type=Path), help="Install offline from this directory of wheels.")
@click.option("--force", is_flag=True, help="Replace a venv that holds a different Airflow or package set.")
def install_airflow_command(
    airflow_version: str, venv: Path, python: str, wheelhouse: Path | None, force: bool
) -> None:
    """Create VENV with Airflow and the celery, postgres and redis extras from a shipped lock file."""
    from airflow_nodes.install import install_airflow

    result = install_airflow(airflow_version, venv, python, wheelhouse, force, progress=echo)
    echo(f"{result.message} (package set {result.package_hash})")


@cli.command()
@root_option
@click.option("--to", "to", required=True, metavar="X.Y.Z", help="The Airflow version to move the cluster to.")
@click.option("--dry-run", is_flag=True, help="Print the plan and check the input; change nothing.")
@click.option("--backup-dir", type=click.Path(path_type=Path), default=defaults.BACKUP_DIR, show_default=True,
              help="Where the pg_dump of the metadata DB goes before the migration.")  # fmt: skip
@click.option("--health-timeout", type=Finite(10, 3600), default=defaults.UPGRADE_HEALTH_TIMEOUT, show_default=True,
              metavar="SEC", help="How long the upgraded master gets to report healthy before a rollback.")  # fmt: skip
@click.option("--drain-timeout", type=Finite(0, 7 * 86400), default=defaults.DRAIN_TIMEOUT, show_default=True,
              metavar="SEC", help="How long queued and running tasks get to finish before the migration; "
              "past it the upgrade stops, nothing changed.")  # fmt: skip
@click.option(
    "--wheelhouse", type=click.Path(path_type=Path), help="Install the new Airflow offline from these wheels."
)
def upgrade(target: Target, to: str, dry_run: bool, backup_dir: Path, health_timeout: float, drain_timeout: float,
            wheelhouse: Path | None) -> None:  # fmt: skip
    """Master: move the cluster to a newer Airflow (backup, migrate, re-render, health; rollback on failure)."""
    from airflow_nodes.upgrade import plan_upgrade
    from airflow_nodes.upgrade import upgrade as run_upgrade

    plan = plan_upgrade(target, to, backup_dir, wheelhouse, drain_timeout)
    echo(output.upgrade_plan(plan))
    if dry_run:
        return
    if not target.real_system:
        raise UserError(
            "runs on the real master only (not under --root); use --dry-run to see the plan", about="upgrade"
        )
    echo(output.upgraded(run_upgrade(plan, target, echo, health_timeout)))


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--version", "airflow_version", default="3.3.2", show_default=True, help="Airflow version.")
@click.option("--python", default=sys.executable, show_default=True, help="Interpreter of the target hosts.")
def wheelhouse(directory: Path, airflow_version: str, python: str) -> None:
    """Collect the wheels of a lock into DIRECTORY, for `install-airflow --wheelhouse` on offline hosts."""
    from airflow_nodes.install import build_wheelhouse

    echo(f"wheels in {build_wheelhouse(airflow_version, directory, python, progress=echo)}")


@cli.command()
@root_option
@click.option("--quiet", is_flag=True, help="Print nothing when all is well (for cron).")
@click.option("-v", "--verbose", is_flag=True, help="Print each step and its timing.")
@click.option("--status", "show_status", is_flag=True, help="Print the last sync's state and exit.")
@click.option("--force", is_flag=True, help="Publish even an empty source or a mass delete; replace edited config.")
@click.option(
    "--max-delete-ratio", type=Finite(0, 1), default=defaults.MAX_DELETE_RATIO, show_default=True,
    help="Refuse a sync that deletes more than this share of the DAG files.",
)  # fmt: skip
@click.option(
    "--validate", type=click.Choice(["off", "warn", "refuse"]), default=defaults.VALIDATE, show_default=True,
    help="Byte-compile changed .py files before publishing; warn about or refuse files that do not parse.",
)  # fmt: skip
@click.option("--keep", "keep_releases", type=click.IntRange(1, 100), default=defaults.KEEP_RELEASES, show_default=True,
              help="DAG releases kept on disk (the published one always).")  # fmt: skip
@click.option("--wait", "lock_wait", type=Finite(0, 3600), default=defaults.MANUAL_LOCK_WAIT, show_default=True,
              metavar="SEC",
              help="Wait this long for a running sync, then skip (exit 0).")  # fmt: skip
@click.option("--ssh-key", metavar="FILE", help="SSH private key [default: the airflow user's]; "
              "more options in $AIRFLOW_NODE_SSH_OPTS.")  # fmt: skip
@click.option("--splay", type=Finite(0, 3600), default=0, metavar="SECONDS",
              help="First wait this node's own fixed share of SECONDS (the cron line's spread).")  # fmt: skip
@click.option("--keep-days", type=Finite(0, 3650), default=defaults.RELEASE_KEEP_DAYS, show_default=True,
              metavar="DAYS", help="Keep replaced DAG releases this long as well (runs pinned to them).")  # fmt: skip
@click.option("--worker-wait", type=Finite(0, 3600), default=defaults.WORKER_WAIT, show_default=True,
              metavar="SEC", help="Airflow 2, the master: wait this long for every live worker to hold a new "
              "release before the master's Airflow sees it.")  # fmt: skip
@click.option("--dags-only", is_flag=True, help="Sync the DAGs, not the cluster file.")
@click.option("--master-root", default="", hidden=True, help="Tests: the master's files live under this dir.")
def sync(target: Target, quiet: bool, verbose: bool, show_status: bool, force: bool, max_delete_ratio: float,
         validate: str, **options: object) -> None:  # fmt: skip
    """Bring DAGs and the cluster config in line with the master (run by cron)."""
    from airflow_nodes.sync import SyncRequest
    from airflow_nodes.sync import sync as run_sync
    from airflow_nodes.syncing.checks import Guards
    from airflow_nodes.syncing.commands import ssh_extra_from_env
    from airflow_nodes.syncing.state import read_state

    if show_status:
        echo(output.sync_status(read_state(target)))
        return
    guards = Guards(max_delete_ratio=max_delete_ratio, validate=validate, force=force)
    result = run_sync(SyncRequest(target=target, guards=guards, ssh_extra=ssh_extra_from_env(), **options))
    if verbose:
        for line in result.details:
            echo(f"  {printable(line)}")
    if not quiet or (result.dags and result.dags.warnings):
        echo(printable(result.summary))


class _CheckCommand(click.Command):
    """A monitoring check: bad options exit 3 (UNKNOWN), never 2, which Nagios reads as CRITICAL."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            error(f"{ctx.command_path}: {exc.format_message()}")
            sys.exit(ExitCode.UNKNOWN)


@cli.command()
@root_option
@click.option("--poll", type=Finite(0.1, 3600), default=defaults.FOLLOW_POLL, show_default=True, metavar="SEC",
              help="Seconds between looks at the broker's doorbell and at the releases tasks asked for.")  # fmt: skip
@click.option("--splay", type=Finite(0, 3600), default=defaults.FOLLOW_SPLAY, show_default=True, metavar="SEC",
              help="Spread the workers' fetches of a new release over at most this many seconds.")  # fmt: skip
@click.option("--passes", type=click.IntRange(1, 10**6), default=None, help="Look this many times, then exit.")
def follow(target: Target, poll: float, splay: float, passes: int | None) -> None:
    """Fetch each new DAG release within seconds, and the release a task asks for (the worker's daemon)."""
    from airflow_nodes.follow import follow as run_follow

    run_follow(target, poll, splay, passes)


@cli.command(cls=_CheckCommand)
@root_option
@click.option("--timeout", type=Finite(0.1, 300), default=defaults.HEALTH_TIMEOUT, show_default=True,
              help="Seconds per probe.")  # fmt: skip
@click.option(
    "--only",
    metavar="P1,P2",
    help="Run only these probes: redis, db, migrations, flower, web, scheduler, leader, worker, logs, execution-api, "
    "units, consistency, clock, packages.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.prom",
              help="Also write node_exporter textfile-collector metrics to this file (atomically).")  # fmt: skip
@click.option("--deep", is_flag=True, help="Also run slow checks (`airflow db check-migrations`).")
def health(
    target: Target, timeout: float, only: str | None, as_json: bool, prometheus: Path | None, deep: bool
) -> None:
    """Probe this node and the cluster (Nagios exit codes: 0 ok, 1 warning, 2 critical, 3 unknown)."""
    from airflow_nodes.health.formatting import format_prometheus, write_textfile
    from airflow_nodes.health.runner import parse_only, run_health

    try:
        report = run_health(target, timeout=timeout, only=parse_only(only), deep=deep)
    except UserError as exc:
        error(f"airflow-node health: {exc}")
        sys.exit(ExitCode.UNKNOWN)
    echo(output.health_json(report) if as_json else output.health_table(report))
    if prometheus is not None:
        try:
            write_textfile(prometheus, format_prometheus(report))
        except OSError as exc:
            error(f"airflow-node health: --prometheus {prometheus}: {exc.strerror}")
            sys.exit(ExitCode.UNKNOWN)
    if report.status:
        raise click.exceptions.Exit(report.status.exit_code)


@cli.command("cluster", cls=_CheckCommand)
@root_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--timeout", type=Finite(0.1, 300), default=defaults.HEALTH_TIMEOUT, show_default=True,
              help="Seconds to read the records from the broker.")  # fmt: skip
def cluster_view(target: Target, as_json: bool, timeout: float) -> None:
    """Every node of this cluster from its record in the broker, the master's values as the reference
    (Nagios exit codes: 0 consistent, 1 drift or a stale node, 2 a node missing or no broker, 3 unknown)."""
    from airflow_nodes.fleet import fleet_report

    try:
        report = fleet_report(target, timeout)
    except (UserError, OperationError) as exc:
        error(f"airflow-node cluster: {exc}")
        sys.exit(ExitCode.UNKNOWN)
    echo(output.fleet_json(report) if as_json else output.fleet_table(report))
    if report.status:
        raise click.exceptions.Exit(report.status.exit_code)


@cli.command(hidden=True)
@root_option
@click.option("--ttl", type=float, metavar="SEC", help="Seconds the lock outlives a holder that stops renewing it "
              "(5-300) [default: 20].")  # fmt: skip
@click.option("--poll", type=float, metavar="SEC", help="Seconds between two tries of a host standing by "
              "(1-60, under half of --ttl) [default: 5].")  # fmt: skip
@click.argument("name")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def lead(target: Target, ttl: float | None, poll: float | None, name: str, argv: tuple[str, ...]) -> int:
    """Run ARGV only while this host holds the cluster-wide lock NAME (one DAG processor among the
    masters): `airflow-node lead NAME [--ttl SEC] [--poll SEC] -- ARGV...`, as the airflow account."""
    from airflow_nodes.leader import check_lead_request
    from airflow_nodes.leader import lead as run_lead

    return run_lead(target, check_lead_request(name, argv, ttl, poll))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        # without standalone mode, click returns a command's exit code instead of raising Exit
        code = cli.main(args=argv, prog_name="airflow-node", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # health and cluster exit 3 (Nagios UNKNOWN) from inside click
        return exc.code if isinstance(exc.code, int) else ExitCode.FAILED
    except click.Abort:
        error(f"{ERROR_PREFIX}aborted")
        return ExitCode.FAILED
    except click.UsageError as exc:
        error(f"{ERROR_PREFIX}{exc.format_message()}")
        return ExitCode.USAGE
    except UserError as exc:
        error(f"{ERROR_PREFIX}{exc}")
        return ExitCode.USAGE
    except OperationError as exc:
        error(f"{ERROR_PREFIX}{exc}")
        return ExitCode.FAILED
    return code if isinstance(code, int) else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
