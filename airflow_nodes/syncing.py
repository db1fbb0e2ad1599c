"""`airflow-node sync`: bring DAGs and the cluster config in line with the master."""

from __future__ import annotations

from pathlib import Path

from airflow_nodes.errors import OperationError


def sync(root: Path) -> str:
    raise OperationError("sync: DAG and config sync is not implemented yet (see the sync issue)")
