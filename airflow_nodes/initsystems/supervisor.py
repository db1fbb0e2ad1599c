"""supervisor: one conf.d file with a program per daemon and a group per role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from airflow_nodes.context import NodeContext
from airflow_nodes.node import OWN_SUPERVISORD_CONF, NodeSettings
from airflow_nodes.plan import Command, PlannedFile, Retirement, Trigger
from airflow_nodes.render import render
from airflow_nodes.versions import Daemon


@dataclass(frozen=True)
class Program:
    name: str
    command: tuple[str, ...]
    priority: int
    oneshot: bool
    graceful_stop: bool
    startsecs: int
    startretries: int
    stopwaitsecs: int
    log_file: str
    ours: bool = False  # airflow-node's own daemon, run as root


def program_name(daemon: Daemon) -> str:
    return f"airflow-{daemon.name}"


def _program(ctx: NodeContext, daemon: Daemon) -> Program:
    return Program(
        name=program_name(daemon),
        command=ctx.argv(daemon),
        priority=10 if daemon.oneshot else 20,
        oneshot=daemon.oneshot,
        graceful_stop=daemon.graceful_stop,
        startsecs=10,
        # daemons that need a migrated DB crash until the migrate program is done: keep retrying
        startretries=30 if daemon.needs_migrated_db else 10,
        stopwaitsecs=ctx.node.stop_timeout if daemon.graceful_stop else 60,
        log_file=f"{ctx.log_dir}/{program_name(daemon)}.log",
        ours=daemon.ours,
    )


def supervisor_bin(node: NodeSettings, name: str) -> str:
    """supervisorctl or supervisord from airflow-node's own environment (supervisor is one of our
    dependencies), by absolute path: cron's PATH does not hold that environment."""
    return str(PurePosixPath(node.airflow_node_bin).parent / name)


def supervisorctl(node: NodeSettings, *args: str) -> tuple[str, ...]:
    return (supervisor_bin(node, "supervisorctl"), "-c", node.supervisord_conf, *args)


def if_running(node: NodeSettings, argv: tuple[str, ...], reason: str) -> Command:
    """A supervisorctl command that runs only while supervisord answers (it reads the config when it starts)."""
    return Command(argv, reason, only_if=supervisorctl(node, "pid"))


class Supervisor:
    name = "supervisor"

    def plan_files(self, ctx: NodeContext) -> list[PlannedFile]:
        text = render(
            "supervisor/airflow-node.conf.j2",
            role=ctx.node.role,
            cluster_name=ctx.cluster.name,
            group=ctx.role_name,
            programs=[_program(ctx, d) for d in ctx.daemons],
            user=ctx.cluster.airflow_user,
            airflow_home=ctx.airflow_home,
            environment=ctx.environment,
        )
        return [PlannedFile(ctx.node.supervisor_conf_file, text.encode(), 0o644)]

    def triggers(self, ctx: NodeContext, config_paths: tuple[str, ...]) -> list[Trigger]:
        """`update` re-adds a changed group (restarting it); a config-only change restarts the daemons."""
        conf = ctx.node.supervisor_conf_file
        reload = Trigger(
            (conf,),
            (
                if_running(ctx.node, supervisorctl(ctx.node, "reread"), "program definitions changed"),
                if_running(ctx.node, supervisorctl(ctx.node, "update", ctx.role_name), "apply the changed programs"),
            ),
        )
        # the follower reads the config anew on every look: Airflow's daemons only
        long_running = [f"{ctx.role_name}:{program_name(d)}" for d in ctx.daemons if not (d.oneshot or d.ours)]
        restart = Trigger(
            config_paths,
            (if_running(ctx.node, supervisorctl(ctx.node, "restart", *long_running), "airflow config changed"),),
            unless=(conf,),
        )
        return [reload, restart]

    def retirements(self, node: NodeSettings) -> list[Retirement]:
        """Our conf.d file no longer planned: the role's group is stopped (gracefully) and removed while
        supervisord can still be asked; our own supervisord, no longer planned, is shut down."""
        group = (
            if_running(node, supervisorctl(node, "stop", f"{node.role_name}:*"), "programs no longer planned"),
            if_running(node, supervisorctl(node, "remove", node.role_name), "programs no longer planned"),
        )
        shutdown = if_running(node, supervisorctl(node, "shutdown"), "our supervisord is no longer needed")
        rules = [Retirement(node.supervisor_conf_file, before=group)]
        if node.supervisord_conf == OWN_SUPERVISORD_CONF:
            rules.append(Retirement(OWN_SUPERVISORD_CONF, before=(shutdown,)))
        return rules

    def control_argv(self, ctx: NodeContext, action: str, daemons: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        if daemons:
            programs = [f"{ctx.role_name}:{program_name(d)}" for d in ctx.daemons if d.name in daemons]
            return [supervisorctl(ctx.node, action, *programs)]
        group = f"{ctx.role_name}:*"
        if action == "start" and ctx.node.role == "master":
            # the migration runs first and exits; starting the rest then finds a migrated DB
            oneshots = [f"{ctx.role_name}:{program_name(d)}" for d in ctx.daemons if d.oneshot]
            return [supervisorctl(ctx.node, "start", *oneshots), supervisorctl(ctx.node, "start", group)]
        return [supervisorctl(ctx.node, action, group)]

    def parse_status(self, output: str) -> list[tuple[str, str]]:
        """Given `supervisorctl status` output, return (program, state) pairs."""
        result = []
        for line in output.strip().splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                result.append((parts[0], " ".join(parts[1:])))
        return result
