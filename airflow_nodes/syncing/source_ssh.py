"""DAGs from the master (or any host) with rsync over SSH, run as the airflow user."""

from __future__ import annotations

import shlex
from pathlib import Path

from airflow_nodes.dagsource import DagSourceSpec
from airflow_nodes.syncing.changes import Fetched
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.syncing.rsync import rsync_into_mirror


class SshSource:
    def __init__(self, spec: DagSourceSpec, runner: TransferRunner):
        self.spec = spec
        self.runner = runner

    @property
    def destination(self) -> str:
        return f"{self.spec.user}@{self.spec.host}" if self.spec.user else str(self.spec.host)

    def fetch(self, mirror: Path, last_source_revision: str | None) -> Fetched:
        source = f"{self.destination}:{shlex.quote(self.spec.path.rstrip('/') + '/')}"
        rsh = self.runner.ssh_argv(self.spec.port)
        return rsync_into_mirror(self.runner, source, mirror, f"rsync from {self.spec.describe()}", rsh=rsh)
