"""start / stop / restart / status of a node's role, through its init system."""

from __future__ import annotations

import subprocess
from pathlib import Path

from airflow_nodes.context import load_context
from airflow_nodes.errors import OperationError
from airflow_nodes.initsystems import get_init_system


def control(action: str, root: Path) -> str:
    """Run the role's start/stop/restart/status commands; under --root, list them instead."""
    ctx = load_context(root)
    init_system = get_init_system(ctx.node.init_system)
    commands = init_system.control_argv(ctx, action)
    if root != Path("/"):
        return "\n".join(["not run under --root:", *(f"  {' '.join(argv)}" for argv in commands)])
    outputs = []
    for argv in commands:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise OperationError(f"{argv[0]}: command not found") from None
        # supervisorctl status exits 3 when a program is not running: that is an answer, not a failure
        if result.returncode != 0 and not (action == "status" and result.stdout.strip()):
            raise OperationError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")
        outputs.append(result.stdout)
    if action == "status":
        rows = init_system.parse_status("".join(outputs))
        width = max((len(name) for name, _ in rows), default=0)
        return "\n".join(f"{name:<{width}}  {state}" for name, state in rows)
    return f"{action}: {ctx.role_name} ({ctx.node.init_system})"
