"""The one interface every DAG source kind implements, and how a spec picks its module."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from airflow_nodes.dagsource import GIT, PATH, SSH, DagSourceSpec
from airflow_nodes.syncing import source_git, source_path, source_ssh
from airflow_nodes.syncing.changes import Fetched
from airflow_nodes.syncing.commands import TransferRunner


class DagSource(Protocol):
    spec: DagSourceSpec

    def fetch(self, mirror: Path, last_source_revision: str | None) -> Fetched:
        """Bring mirror in line with the source. Raise OperationError (source unreachable, transfer failed)."""
        ...


def open_source(spec: DagSourceSpec, runner: TransferRunner, root: Path) -> DagSource:
    """Given a parsed spec, return the source that fetches it (local paths re-rooted under root)."""
    if spec.kind == SSH:
        return source_ssh.SshSource(spec, runner)
    if spec.kind == PATH:
        return source_path.PathSource(spec, runner, root)
    if spec.kind == GIT:
        return source_git.GitSource(spec, runner)
    raise ValueError(spec.kind)  # pragma: no cover - parse_dags_source returns only these kinds
