"""Target: the node airflow-node acts on, and how far it may act on it.

Every "real system or a rendered tree?" decision reads this one value, so tests inject a Target
(a temp root, a recording runner) instead of patching os.geteuid or comparing paths with "/".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute
from airflow_nodes.errors import UserError
from airflow_nodes.node import under_root

Runner = Callable[[Sequence[str]], None]  # runs one system command (useradd, systemctl, supervisorctl)


@dataclass(frozen=True)
class Target:
    root: Path  # absolute; the node's "/" lives here
    real_system: bool  # root is "/": system commands run, the init system is live
    privileged: bool  # root on the real system: owners are set, transfers drop to the airflow user
    runner: Runner = execute.run_checked

    @classmethod
    def at(cls, root: Path | str, runner: Runner = execute.run_checked) -> Target:
        """Given --root, return the Target for it (made absolute). Raise UserError for an empty root or
        one that is not a directory."""
        if str(root) in ("", "."):
            raise UserError("--root: give a directory (an empty --root would mean the current directory)")
        absolute = Path(os.path.abspath(root))
        if absolute.exists() and not absolute.is_dir():
            raise UserError(f"--root: {absolute} is not a directory")
        real = absolute == Path("/")
        return cls(absolute, real, real and os.geteuid() == 0, runner)

    def path(self, node_path: str) -> Path:
        """Given an absolute path on the node, return where it is under root."""
        return under_root(self.root, node_path)
