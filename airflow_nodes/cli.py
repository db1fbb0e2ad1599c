"""The `airflow-node` command: parse options, call one function, format its result, pick the exit code."""

from __future__ import annotations

import enum
import sys
from pathlib import Path

import click

from airflow_nodes.errors import OperationError, UserError


class Exit(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2


root_option = click.option(
    "--root",
    type=click.Path(file_okay=True, dir_okay=True, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Act on a node rendered under this directory; commands that need the real system are listed, not run.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="airflow-nodes")
def cli() -> None:
    """Turn this host into a master or worker node of an Airflow CeleryExecutor cluster."""


@cli.command()
@click.option("--role", type=click.Choice(["master", "worker"]), required=True, help="What this host runs.")
@root_option
@click.option("--dry-run", is_flag=True, help="Print the plan and a diff against the disk; change nothing.")
@click.option("--force", is_flag=True, help="Replace files someone edited since we wrote them (kept as a backup).")
@click.option("--airflow-version", metavar="X.Y[.Z]", help="Use this version instead of detecting the installed one.")
@click.option("--venv", metavar="DIR", help="Virtualenv Airflow is installed in [default: airflow on PATH].")
@click.option("--airflow-bin", metavar="PATH", help="The airflow executable, if not DIR/bin/airflow.")
@click.option("--init-system", type=click.Choice(["systemd", "supervisor"]), help="[default: systemd if PID 1]")
@click.option("--node-name", metavar="NAME", help="This node's name; the Celery worker is celery@NAME.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Worker: tasks run at once [default: 16].")
@click.option("-q", "--queues", metavar="Q1,Q2", help="Worker: Celery queues to consume [default: Airflow's].")
@click.option("--stop-timeout", type=int, metavar="SEC", help="Worker: time running tasks get on stop [600].")
@click.option("--supervisord-conf", metavar="PATH", help="supervisord.conf whose conf.d/ gets our programs.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="Worker: the cluster file to use.")
@click.option("--from-master", metavar="[USER@]HOST[:PORT]", help="Worker: fetch the cluster file over SSH.")
@click.option("--master-host", metavar="HOST", help="Master: address workers use to reach this host.")
@click.option("--broker-url", metavar="URL", help="Master: Redis broker, redis://[:PASSWORD@]HOST:6379/0.")
@click.option("--db-url", metavar="URL", help="Master: metadata DB, postgresql://USER:PASSWORD@HOST/DB.")
@click.option("--result-backend", metavar="URL", help="Master: Celery result backend [default: db+ the DB URL].")
@click.option("--dags-source", metavar="SPEC", help="Master: where nodes sync DAGs from.")
@click.option("--sync-interval", "sync_interval_minutes", type=int, metavar="MIN", help="Master: minutes [5].")
@click.option("--airflow-home", metavar="DIR", help="Master: AIRFLOW_HOME on every node [/opt/airflow].")
@click.option("--visibility-timeout", type=int, metavar="SEC", help="Master: longest task plus margin [86400].")
@click.option("--web-port", type=int, help="Master: webserver / api-server port [8080].")
@click.option("--flower-port", type=int, help="Master: flower port [5555].")
@click.option("--airflow-node-bin", metavar="PATH", hidden=True)
def init(dry_run: bool, force: bool, **options: object) -> None:
    """Write this node's config, units and cron entry, and enable its daemons."""
    from airflow_nodes.apply import apply
    from airflow_nodes.init import InitRequest, plan_init
    from airflow_nodes.report import format_apply, format_preview

    outcome = plan_init(InitRequest(**options))
    click.echo(format_preview(outcome, show_diff=dry_run))
    if dry_run or outcome.preview.nothing_to_do:
        return
    click.echo(format_apply(apply(outcome.preview, force=force)))


def _control(action: str, root: Path) -> None:
    from airflow_nodes.control import control

    click.echo(control(action, root))


@cli.command()
@root_option
def status(root: Path) -> None:
    """Show the state of this node's daemons."""
    _control("status", root)


@cli.command()
@root_option
def start(root: Path) -> None:
    """Start every daemon of this node's role."""
    _control("start", root)


@cli.command()
@root_option
def stop(root: Path) -> None:
    """Stop every daemon of this node's role (workers finish their running tasks first)."""
    _control("stop", root)


@cli.command()
@root_option
def restart(root: Path) -> None:
    """Restart every daemon of this node's role (workers finish their running tasks first)."""
    _control("restart", root)


@cli.command()
@root_option
@click.option("--purge", is_flag=True, help="Also remove the cluster file, which holds the cluster's secrets.")
@click.option("--force", is_flag=True, help="Also remove files someone edited since we wrote them.")
def uninstall(root: Path, purge: bool, force: bool) -> None:
    """Stop the role and remove exactly what init installed."""
    from airflow_nodes.uninstall import uninstall as run_uninstall

    click.echo(run_uninstall(root, purge=purge, force=force))


# --- sync: owned by the sync work (airflow_nodes/syncing/) ---------------------------------
@cli.command()
@root_option
@click.option("--quiet", is_flag=True, help="Print nothing when all is well (for cron).")
def sync(root: Path, quiet: bool) -> None:
    """Bring DAGs and the cluster config in line with the master (run by cron)."""
    from airflow_nodes.syncing import sync as run_sync

    message = run_sync(root)
    if not quiet:
        click.echo(message)


# --- end of sync --------------------------------------------------------------------------


# --- health: owned by the health work (airflow_nodes/health/) -----------------------------
@cli.command()
@root_option
def health(root: Path) -> None:
    """Probe this node and the cluster (Nagios exit codes: 0 ok, 1 warning, 2 critical, 3 unknown)."""
    raise UserError("health: not implemented yet")


# --- end of health ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="airflow-node", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("airflow-node: aborted", err=True)
        return Exit.FAILED
    except click.UsageError as exc:
        click.echo(f"airflow-node: {exc.format_message()}", err=True)
        return Exit.USAGE
    except UserError as exc:
        click.echo(f"airflow-node: {exc}", err=True)
        return Exit.USAGE
    except OperationError as exc:
        click.echo(f"airflow-node: {exc}", err=True)
        return Exit.FAILED
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
