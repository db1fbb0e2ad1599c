"""start / stop / restart / status of a node's role, through its init system."""

from __future__ import annotations

from airflow_nodes import execute
from airflow_nodes.context import load_context
from airflow_nodes.execute import CommandError, failure_reason
from airflow_nodes.initsystems import init_system
from airflow_nodes.target import Target


def control(action: str, target: Target, daemons: tuple[str, ...] = ()) -> str:
    """Run the role's start/stop/restart/status commands (or only the named daemons'); on a rendered
    tree, list them instead."""
    ctx = load_context(target)
    manager = init_system(ctx.node.init_system)
    commands = manager.control_argv(ctx, action, daemons)
    if not target.real_system:
        return "\n".join(["not run under --root:", *(f"  {' '.join(argv)}" for argv in commands)])
    if action in ("start", "restart"):
        manager.ensure_running(ctx.node)
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
