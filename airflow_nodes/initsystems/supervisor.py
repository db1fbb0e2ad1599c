"""supervisor: one conf.d file with a program per daemon, each its own process group."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from airflow_nodes import execute, statefile
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import OWN_SUPERVISOR_SOCKET, OWN_SUPERVISORD_CONF, NodeSettings
from airflow_nodes.plan import Command, PlannedDir, PlannedFile, Retirement, Trigger
from airflow_nodes.polling import wait_until
from airflow_nodes.render import render
from airflow_nodes.target import Target
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
    environment: dict[str, str]
    ours: bool = False  # airflow-node's own daemon, run as root


def program_name(daemon: Daemon) -> str:
    return f"airflow-{daemon.name}"


def _program(ctx: NodeContext, daemon: Daemon, config_digest: str) -> Program:
    environment = dict(ctx.environment)
    if not (daemon.oneshot or daemon.ours):  # the follower reads the config anew on every look
        # part of the program's definition: a config change is a changed program, which `update` restarts
        environment["AIRFLOW_NODE_CONFIG_DIGEST"] = config_digest
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
        environment=environment,
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


def owns_supervisord(node: NodeSettings) -> bool:
    """Whether this node runs under the supervisord init set up (there was none)."""
    return node.supervisord_conf == OWN_SUPERVISORD_CONF


# the names we give programs and groups: anything else in the file is not ours to name to supervisorctl
# (which splits its arguments again on spaces, and reads "all" as every group)
_OUR_NAME = re.compile(r"airflow-[a-z0-9-]{1,40}")


def _processes_in(text: str) -> tuple[str, ...]:
    """Given a conf.d file we wrote, return each program as supervisorctl names it, GROUP:PROGRAM: each its
    own group (PROGRAM:PROGRAM), or, in a file an earlier airflow-node wrote, members of the role's group
    (airflow-<role>:PROGRAM). A file that does not parse names none."""
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return ()
    group_of = {}
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if kind == "group":
            group_of.update((member.strip(), name) for member in parser[section].get("programs", "").split(","))
    programs = [section.partition(":")[2] for section in parser.sections() if section.startswith("program:")]
    names = [(group_of.get(program, program), program) for program in programs]
    return tuple(
        f"{group}:{program}" for group, program in names if _OUR_NAME.fullmatch(group) and _OUR_NAME.fullmatch(program)
    )


def _groups(processes: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(process.partition(":")[0] for process in processes))


class Supervisor:
    """Each program is a process group of its own, so that supervisor's `update` (its own old/new diff,
    computed per group) restarts exactly the programs whose definition changed. A program's definition
    holds the digest of the config its daemon reads: a config change restarts the daemons that read it."""

    name = "supervisor"

    def plan_dirs(self, ctx: NodeContext) -> list[PlannedDir]:
        return [PlannedDir(ctx.node.supervisor_conf_file.rsplit("/", 1)[0], 0o755)]

    def plan_files(self, ctx: NodeContext, config_digest: str) -> list[PlannedFile]:
        text = render(
            "supervisor/airflow-node.conf.j2",
            role=ctx.node.role,
            cluster_name=ctx.cluster.name,
            programs=[_program(ctx, d, config_digest) for d in ctx.daemons],
            user=ctx.cluster.airflow_user,
            airflow_home=ctx.airflow_home,
        )
        files = [PlannedFile(ctx.node.supervisor_conf_file, text.encode(), 0o644)]
        if owns_supervisord(ctx.node):
            files.append(PlannedFile(OWN_SUPERVISORD_CONF, _render_supervisord_conf(ctx).encode(), 0o644))
        return files

    def boot_command(self, ctx: NodeContext) -> tuple[str, ...] | None:
        # our own supervisord has no other way to start at boot
        return (ctx.node.airflow_node_bin, "start") if owns_supervisord(ctx.node) else None

    def installed(self, node: NodeSettings | None, target: Target) -> tuple[str, ...]:
        """The programs of our conf.d file on disk (GROUP:PROGRAM), which supervisord loaded when it was written.
        Root's own file, read without following a link and bounded; one that is not ours to read (a
        link, not text) holds none we act on."""
        if node is None:
            return ()
        try:
            text = statefile.read_text(target.path(node.supervisor_conf_file), limit=1 << 20)
        except UserError:
            return ()
        return _processes_in(text or "")

    def triggers(self, ctx: NodeContext, installed: tuple[str, ...]) -> list[Trigger]:
        """`update` naming the groups loaded now and the programs planned: supervisor stops and removes the
        ones gone, restarts the changed ones and adds the new ones; the others keep running."""
        planned = [program_name(d) for d in ctx.daemons]
        names = dict.fromkeys([*_groups(installed), *planned])
        update = if_running(ctx.node, supervisorctl(ctx.node, "update", *names), "programs or their config changed")
        return [Trigger((ctx.node.supervisor_conf_file,), (update,))]

    def retirements(self, node: NodeSettings | None, installed: tuple[str, ...]) -> list[Retirement]:
        """Our conf.d file no longer planned: its programs are stopped (gracefully) and removed while
        supervisord can still be asked; our own supervisord, no longer planned, is shut down."""
        if node is None:  # no node file: no supervisord.conf to ask
            return []
        groups = _groups(installed)
        programs = (
            if_running(node, supervisorctl(node, "stop", *(f"{g}:*" for g in groups)), "programs no longer planned"),
            *(if_running(node, supervisorctl(node, "remove", g), "programs no longer planned") for g in groups),
        ) if groups else ()  # fmt: skip
        shutdown = if_running(node, supervisorctl(node, "shutdown"), "our supervisord is no longer needed")
        rules = [Retirement(node.supervisor_conf_file, before=programs)]
        if owns_supervisord(node):
            rules.append(Retirement(OWN_SUPERVISORD_CONF, before=(shutdown,)))
        return rules

    def control_argv(
        self, ctx: NodeContext, action: str, daemons: tuple[str, ...] = (), installed: tuple[str, ...] = ()
    ) -> list[tuple[str, ...]]:
        chosen = [d for d in ctx.daemons if not daemons or d.name in daemons]
        # as loaded (a file an earlier airflow-node wrote has them in the role's group), else as planned
        loaded = {process.partition(":")[2]: process for process in installed}
        named = [(d, loaded.get(program_name(d), program_name(d))) for d in chosen]
        programs = [name for _, name in named]
        oneshots = [name for d, name in named if d.oneshot]
        if action == "start" and oneshots:
            # the migration runs first and exits; starting the rest then finds a migrated DB
            return [supervisorctl(ctx.node, "start", *oneshots), supervisorctl(ctx.node, "start", *programs)]
        return [supervisorctl(ctx.node, action, *programs)]

    def ensure_running(self, node: NodeSettings, timeout: float = 20) -> None:
        """Start the supervisord init set up (a host without one) unless it answers already; wait until it does."""
        if not owns_supervisord(node):
            return

        def answers() -> bool:
            return execute.run(supervisorctl(node, "pid"), ok_codes=None, timeout=10).returncode == 0

        if answers():
            return
        supervisord = [supervisor_bin(node, "supervisord"), "-c", node.supervisord_conf]
        execute.run(supervisord, what="starting supervisord", clean_env=True, timeout=30)
        if not wait_until(answers, timeout, 0.2):
            raise OperationError(f"supervisord ({node.supervisord_conf}) did not answer within {timeout:g} s")

    def observable_under_root(self, node: NodeSettings) -> bool:
        # its supervisord.conf path is explicit: a rendered tree's own supervisord can be asked
        return os.path.exists(node.supervisord_conf)

    def settle(self, node: NodeSettings, target: Target, conf_given: bool) -> NodeSettings:
        """The supervisord to run under: the one named, else the host's, else (none here) our own. Raise
        UserError when the named config is a directory."""
        if not conf_given and not target.path(node.supervisord_conf).exists():
            node = dataclasses.replace(node, supervisord_conf=OWN_SUPERVISORD_CONF)
        if target.path(node.supervisord_conf).is_dir():
            raise UserError(
                f"--supervisord-conf: {node.supervisord_conf} is a directory; name supervisord's config file"
            )
        return node

    def parse_status(self, output: str) -> list[tuple[str, str]]:
        """Given `supervisorctl status` output, return (program, state) pairs."""
        result = []
        for line in output.strip().splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                result.append((parts[0], " ".join(parts[1:])))
        return result


def _render_supervisord_conf(ctx: NodeContext) -> str:
    return render(
        "supervisor/supervisord.conf.j2",
        conf=OWN_SUPERVISORD_CONF,
        supervisord=supervisor_bin(ctx.node, "supervisord"),
        socket=OWN_SUPERVISOR_SOCKET,
        pidfile="/run/airflow-node-supervisord.pid",
        log_dir=ctx.log_dir,
    )
