"""The packages probe: a node whose installed set differs from the master's is reported."""

from __future__ import annotations

import json

import pytest

from airflow_nodes.cluster import dump_cluster
from airflow_nodes.detect import package_set_hash

from conftest import make_cluster

MASTER_SET = {"apache-airflow-core": "3.3.2", "celery": "5.6.3"}


def worker_health(run_cli, tmp_path, venv, recorded: str) -> tuple[int, dict]:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(dump_cluster(make_cluster(airflow_packages=recorded)))
    root = tmp_path / "node"
    init = run_cli("init", "--role", "worker", "--root", root, "--config", cluster, "--venv", venv,
                   "--node-name", "w1", "--init-system", "supervisor",
                   "--airflow-node-bin", "/usr/local/bin/x")  # fmt: skip
    assert init.code == 0, init.err
    result = run_cli("health", "--root", root, "--only", "packages", "--json")
    row = next(r for r in json.loads(result.out)["results"] if r["probe"] == "packages")
    return result.code, row


@pytest.mark.parametrize(
    "installed,expected_code,expected_status,words",
    [
        (MASTER_SET, 0, "OK", "same set as the master"),
        ({**MASTER_SET, "celery": "5.7.0"}, 1, "WARNING", "differs from the master's"),
    ],
)
def test_package_set_is_compared_with_the_masters(run_cli, tmp_path, make_venv, installed, expected_code,
                                                  expected_status, words):  # fmt: skip
    recorded = package_set_hash([f"{k}=={v}" for k, v in MASTER_SET.items()])
    code, row = worker_health(run_cli, tmp_path, make_venv(**installed), recorded)
    assert (code, row["status"]) == (expected_code, expected_status)
    assert words in row["detail"]
