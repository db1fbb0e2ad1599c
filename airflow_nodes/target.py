"""Target: the node airflow-node acts on, and how far it may act on it.

Every "real system or a rendered tree?" decision reads this one value, so tests inject a Target
(a temp root, a recording runner) instead of patching os.geteuid or comparing paths with "/".
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute
from airflow_nodes.errors import UserError
from airflow_nodes.node import under_root

Runner = Callable[..., None]  # runs one system command (useradd, systemctl, supervisorctl), maybe with input=


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

    @property
    def node_root(self) -> Path | None:
        """Where the node's "/" is when it is not this system's (under --root), else None."""
        return None if self.real_system else self.root

    def path(self, node_path: str) -> Path:
        """Given an absolute path on the node, return where it is under root. Raise UserError when a
        directory on the way is a link another account made, or (under --root) leads out of the root:
        root would otherwise write, chmod or delete wherever that link points."""
        path = under_root(self.root, node_path)
        current = self.root
        for part in path.relative_to(self.root).parts[:-1]:
            current = current / part
            try:
                info = current.lstat()
            except OSError:
                break  # not there yet: nothing on the way can redirect us
            if stat.S_ISLNK(info.st_mode) and not self._trusted_link(current, info):
                raise UserError(f"{current}: a link on the way to {node_path}; airflow-node does not follow it")
        return path

    def _trusted_link(self, link: Path, info: os.stat_result) -> bool:
        """An administrator's link (/opt -> /data/opt) is followed; one another account could make, or
        one out of a --root tree, is not."""
        if info.st_uid not in (0, os.geteuid()):
            return False
        resolved = Path(os.path.realpath(link))
        return self.real_system or resolved == self.root or self.root in resolved.parents


def check_creatable_dir(path: Path, where: str) -> None:
    """Raise UserError naming `where` unless path is an absolute directory we may write in, or one we may
    create (checked, not created)."""
    if not path.is_absolute():
        raise UserError(f"{where}: {path} must be an absolute path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if probe == path and not probe.is_dir():
        raise UserError(f"{where}: {path} is not a directory")
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        reason = f"{path} is not writable" if probe == path else f"cannot create {path} ({probe} is not writable)"
        raise UserError(f"{where}: {reason}")
