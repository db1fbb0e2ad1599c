"""DAGs from a local or NFS directory, mirrored with rsync."""

from __future__ import annotations

from pathlib import Path

from airflow_nodes.dagsource import DagSourceSpec
from airflow_nodes.errors import OperationError
from airflow_nodes.node import under_root
from airflow_nodes.syncing.changes import Fetched
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.syncing.rsync import rsync_into_mirror


class PathSource:
    def __init__(self, spec: DagSourceSpec, runner: TransferRunner, root: Path):
        self.spec = spec
        self.runner = runner
        self.directory = under_root(root, spec.path)

    def fetch(self, mirror: Path, last_source_revision: str | None) -> Fetched:
        if not self.directory.is_dir():
            raise OperationError(f"{self.directory}: the DAG source directory is missing (not mounted?)")
        return rsync_into_mirror(self.runner, str(self.directory), mirror, f"rsync from {self.directory}")
