"""systemd: one hardened unit per daemon, plus a target per role."""

from __future__ import annotations

from airflow_nodes.context import NodeContext
from airflow_nodes.localservers import server_services
from airflow_nodes.node import RELEASE_REQUESTS_DIR, STATE_DIR, SYSTEMD_DIR, NodeSettings
from airflow_nodes.plan import Command, PlannedDir, PlannedFile, Retirement, Trigger
from airflow_nodes.render import render
from airflow_nodes.target import Target
from airflow_nodes.versions import Daemon


def unit_name(daemon: Daemon) -> str:
    return f"airflow-{daemon.name}.service"


def target_name(ctx: NodeContext) -> str:
    return f"{ctx.role_name}.target"


def unit_path(name: str) -> str:
    return f"{SYSTEMD_DIR}/{name}"


def task_requests(ctx: NodeContext, daemon: Daemon) -> list[str]:
    """Where a task asks the follower for its DAG version: writable under the sandbox of the daemon that runs tasks."""
    return [RELEASE_REQUESTS_DIR] if daemon.runs_tasks and ctx.line.versioned_dags else []


def _render_unit(ctx: NodeContext, daemon: Daemon) -> str:
    migrate = [unit_name(d) for d in ctx.daemons if d.oneshot] if daemon.needs_migrated_db else []
    servers = list(server_services(ctx.node))  # this host's Redis and PostgreSQL, if init set them up: first
    return render(
        "systemd/airflow-daemon.service.j2",
        unit=unit_name(daemon),
        daemon=daemon,
        role=ctx.node.role,
        cluster_name=ctx.cluster.name,
        target=target_name(ctx),
        after=[*servers, *migrate],
        wants=servers,
        requires=migrate,
        user=ctx.cluster.airflow_user,
        env_file=ctx.env_file,
        airflow_home=ctx.airflow_home,
        exec_start=ctx.argv(daemon),
        stop_timeout=ctx.node.stop_timeout,
        # "-" prefix: a path that does not exist yet must not stop the unit from starting
        writable_paths=[
            f"-{path}" for path in (ctx.airflow_home, *task_requests(ctx, daemon), *ctx.node.writable_path_list)
        ],
        # the follower: the releases and its state, and the DAG folder link it flips
        follower_paths=[f"-{path}" for path in (STATE_DIR, ctx.airflow_home)],
    )


class Systemd:
    name = "systemd"

    def plan_dirs(self, ctx: NodeContext) -> list[PlannedDir]:
        return []

    def plan_files(self, ctx: NodeContext, config_digest: str) -> list[PlannedFile]:
        files = [PlannedFile(unit_path(unit_name(d)), _render_unit(ctx, d).encode(), 0o644) for d in ctx.daemons]
        target = render(
            "systemd/airflow-role.target.j2",
            target=target_name(ctx),
            role=ctx.node.role,
            cluster_name=ctx.cluster.name,
            units=[unit_name(d) for d in ctx.daemons],
        )
        files.append(PlannedFile(unit_path(target_name(ctx)), target.encode(), 0o644))
        return files

    def boot_command(self, ctx: NodeContext) -> tuple[str, ...] | None:
        return None  # the enabled target starts the role

    def installed(self, node: NodeSettings | None, target: Target) -> tuple[str, ...]:
        """Our unit files on disk (units are retired by name: airflow-*.service, airflow-*.target). A node an
        older airflow-node rendered may lack a unit its role has now, which stop and restart must not name."""
        try:
            return tuple(sorted(path.name for path in target.path(SYSTEMD_DIR).glob("airflow-*")))
        except OSError:
            return ()

    def triggers(self, ctx: NodeContext, installed: tuple[str, ...]) -> list[Trigger]:
        """After unit changes: reload and enable. After a daemon's unit or config changes: try-restart it.
        Last, while the role runs, a daemon it gained (a newer airflow-node's) is started: try-restart and
        enable leave a new unit stopped until the next `start`."""
        config_paths = (ctx.airflow_cfg, ctx.env_file)
        units = [unit_name(d) for d in ctx.daemons]
        unit_files = tuple(unit_path(u) for u in [*units, target_name(ctx)])
        result = [
            Trigger(
                unit_files,
                (
                    Command(("systemctl", "daemon-reload"), "unit files changed"),
                    Command(("systemctl", "enable", target_name(ctx), *units), "start the role at boot"),
                ),
            )
        ]
        for daemon in ctx.daemons:
            if daemon.oneshot or daemon.ours:  # the follower reads the config anew on every look
                continue
            name = unit_name(daemon)
            # try-restart leaves a stopped daemon stopped; the worker's stop is a warm shutdown.
            command = Command(("systemctl", "try-restart", name), f"{name} or its config changed")
            result.append(Trigger((unit_path(name), *config_paths), (command,)))
        running = ("systemctl", "is-active", "--quiet", target_name(ctx))
        start = Command(("systemctl", "start", *units), "the role runs: start a daemon it gained", only_if=running)
        result.append(Trigger(unit_files, (start,)))
        return result

    def retirements(self, node: NodeSettings | None, installed: tuple[str, ...]) -> list[Retirement]:
        """A unit no longer planned is stopped and disabled while its file still exists, then forgotten."""
        disable = Command(("systemctl", "disable", "--now", "{name}"), "no longer planned")
        reload = Command(("systemctl", "daemon-reload"), "unit files removed")
        return [
            Retirement(unit_path(pattern), (disable,), (reload,))
            for pattern in ("airflow-*.service", "airflow-*.target")
        ]

    def control_argv(
        self, ctx: NodeContext, action: str, daemons: tuple[str, ...] = (), installed: tuple[str, ...] = ()
    ) -> list[tuple[str, ...]]:
        if action == "status":
            units = [unit_name(d) for d in ctx.daemons]
            return [("systemctl", "show", "--property=Id,ActiveState,SubState,NRestarts", *units)]
        if daemons:
            return [("systemctl", action, *(unit_name(d) for d in ctx.daemons if d.name in daemons))]
        if action == "start":
            return [("systemctl", "start", target_name(ctx))]
        # stop, restart: the target's own job is done at once; naming its units too makes systemctl wait
        # until they have stopped (a worker's running tasks first), so nothing changes under a live daemon.
        # Only units on disk: systemctl refuses the whole command for one it does not know.
        units = [unit_name(d) for d in ctx.daemons if not installed or unit_name(d) in installed]
        return [("systemctl", action, target_name(ctx), *units)]

    def ensure_running(self, node: NodeSettings) -> None:
        pass  # systemd is PID 1

    def observable_under_root(self, node: NodeSettings) -> bool:
        return False  # the real host's units say nothing about a rendered tree

    def settle(self, node: NodeSettings, target: Target, conf_given: bool) -> NodeSettings:
        return node

    def parse_status(self, output: str) -> list[tuple[str, str]]:
        """Given `systemctl show` output for several units, return (unit, state) pairs."""
        result = []
        for block in output.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if "Id" in props:
                state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
                if props.get("NRestarts", "0") not in ("", "0"):
                    state += f", {props['NRestarts']} restarts"
                result.append((props["Id"], state))
        return result
