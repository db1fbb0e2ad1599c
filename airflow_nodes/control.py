"""start / stop / restart / status of a node's role, through its init system."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from airflow_nodes import execute
from airflow_nodes.context import load_context
from airflow_nodes.execute import CommandError, failure_reason
from airflow_nodes.initsystems import init_system
from airflow_nodes.target import Target


@dataclass(frozen=True)
class ControlOutcome:
    """What start | stop | restart | status did: the daemons it was about (or the whole role), the
    commands only listed (on a rendered tree), and for status each unit's or program's state."""

    action: str
    scope: str  # the daemons named, or the role (airflow-<role>)
    init_system: str
    listed: tuple[str, ...] = ()  # under --root: the commands, not run
    states: tuple[tuple[str, str], ...] = ()  # status: (unit or program, state)

    def summary(self) -> str:
        """One line for a progress report (the upgrade's, a sync's); under --root, the commands listed."""
        if self.listed:
            return "\n".join(["not run under --root:", *(f"  {argv}" for argv in self.listed)])
        return f"{self.action}: {self.scope} ({self.init_system})"


def control(action: str, target: Target, daemons: tuple[str, ...] = ()) -> ControlOutcome:
    """Run the role's start/stop/restart/status commands (or only the named daemons'); on a rendered
    tree, list them instead."""
    ctx = load_context(target)
    manager = init_system(ctx.node.init_system)
    commands = manager.control_argv(ctx, action, daemons, manager.installed(ctx.node, target))
    outcome = ControlOutcome(action, ", ".join(daemons) or ctx.role_name, ctx.node.init_system)
    if not target.real_system:
        return dataclasses.replace(outcome, listed=tuple(" ".join(argv) for argv in commands))
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
        return dataclasses.replace(outcome, states=tuple(manager.parse_status("".join(outputs))))
    return outcome
