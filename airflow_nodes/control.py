"""start / stop / restart / status of a node's role, through its init system."""

from __future__ import annotations

import time

from airflow_nodes import execute
from airflow_nodes.context import load_context
from airflow_nodes.errors import OperationError
from airflow_nodes.execute import CommandError, failure_reason
from airflow_nodes.initsystems import init_system
from airflow_nodes.initsystems.supervisor import supervisor_bin, supervisorctl
from airflow_nodes.node import NodeSettings
from airflow_nodes.nodeplan import owns_supervisord
from airflow_nodes.target import Target


def control(action: str, target: Target, daemons: tuple[str, ...] = ()) -> str:
    """Run the role's start/stop/restart/status commands (or only the named daemons'); on a rendered
    tree, list them instead."""
    ctx = load_context(target)
    manager = init_system(ctx.node.init_system)
    commands = manager.control_argv(ctx, action, daemons)
    if not target.real_system:
        return "\n".join(["not run under --root:", *(f"  {' '.join(argv)}" for argv in commands)])
    if action in ("start", "restart") and owns_supervisord(ctx.node):
        start_own_supervisord(ctx.node)
    outputs = []
    for argv in commands:
        # supervisorctl status exits 3 when a program is not running: that is an answer, not a failure
        result = execute.run(argv, ok_codes=None if action == "status" else (0,))
        if result.returncode != 0 and not result.stdout.strip():
            raise CommandError(" ".join(argv), failure_reason(argv, result.returncode, result.stderr))
        outputs.append(result.stdout)
    if action == "status":
        rows = manager.parse_status("".join(outputs))
        width = max((len(name) for name, _ in rows), default=0)
        return "\n".join(f"{name:<{width}}  {state}" for name, state in rows)
    return f"{action}: {', '.join(daemons) or ctx.role_name} ({ctx.node.init_system})"


def start_own_supervisord(node: NodeSettings, timeout: float = 20) -> None:
    """Start the supervisord init set up (a host without one) unless it answers already; wait until it does."""
    ctl = supervisorctl(node, "pid")
    if execute.run(ctl, ok_codes=None, timeout=10).returncode == 0:
        return
    supervisord = [supervisor_bin(node, "supervisord"), "-c", node.supervisord_conf]
    execute.run(supervisord, what="starting supervisord", clean_env=True, timeout=30)
    deadline = time.monotonic() + timeout
    while execute.run(ctl, ok_codes=None, timeout=10).returncode != 0:
        if time.monotonic() > deadline:
            raise OperationError(f"supervisord ({node.supervisord_conf}) did not answer within {timeout:g} s")
        time.sleep(0.2)
