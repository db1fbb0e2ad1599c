"""The packages probe: a node whose installed set differs from the master's is reported."""

from __future__ import annotations

import json

import pytest

from airflow_nodes import fleet
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.detect import package_set_hash, parse_pin
from airflow_nodes.install import Lock, available_locks, reference_constraints

from conftest import make_cluster

MASTER_SET = {"apache-airflow-core": "3.3.2", "celery": "5.6.3"}


def worker_health(run_cli, tmp_path, venv, recorded: str, **named: str) -> tuple[int, dict]:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(dump_cluster(make_cluster(airflow_packages=recorded)))
    root = tmp_path / "node"
    extra = [arg for key, value in named.items() for arg in (f"--{key.replace('_', '-')}", value)]
    init = run_cli("init", "--role", "worker", "--root", root, "--config", cluster, "--venv", venv,
                   "--node-name", "w1", "--init-system", "supervisor",
                   "--airflow-node-bin", "/usr/local/bin/x", *extra)  # fmt: skip
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
    code, row = worker_health(run_cli, tmp_path, make_venv(root=tmp_path / "node", **installed), recorded)
    assert (code, row["status"]) == (expected_code, expected_status)
    assert words in row["detail"]


def lock(version: str, python: str) -> Lock:
    return next(lk for lk in available_locks() if (lk.airflow_version, lk.python) == (version, python))


def test_locks_of_one_airflow_version_agree_on_airflow_providers_and_celery():
    """A node on another Python line must run the same Airflow, providers and Celery. Only a lock whose
    header says so may differ: Python 3.10, which the newest providers dropped."""
    for version in {lk.airflow_version for lk in available_locks()}:
        shared = [lk for lk in available_locks() if lk.airflow_version == version and not lk.own_pins]
        assert len(shared) >= 2, [lk.python for lk in shared]
        assert all(lk.cluster_pins == shared[0].cluster_pins for lk in shared), version
        assert {lk.python for lk in available_locks() if lk.own_pins} <= {"3.10"}


def test_a_new_lock_is_constrained_by_the_newest_python_lock_that_shares_the_pins():
    constraints = dict(parse_pin(line) for line in reference_constraints("3.3.2", "3.14").splitlines())
    assert constraints == lock("3.3.2", "3.13").cluster_pins != lock("3.3.2", "3.10").cluster_pins


@pytest.mark.parametrize(
    "python,expected_code,expected_status,words",
    [
        ("3.13", 0, "OK", "the lock for Python 3.13: same Airflow, providers and Celery as the master's (Python 3.11)"),
        ("3.10", 1, "WARNING", "the lock for Python 3.10 has apache-airflow-providers-"),
    ],
)
def test_a_node_on_another_python_line_is_compared_by_its_lock(run_cli, tmp_path, make_venv, python, expected_code,
                                                               expected_status, words):  # fmt: skip
    installed = dict(parse_pin(line) for line in lock("3.3.2", python).requirements())
    venv = make_venv(root=tmp_path / "node", **installed)
    code, row = worker_health(run_cli, tmp_path, venv, lock("3.3.2", "3.11").package_hash)
    assert (code, row["status"]) == (expected_code, expected_status), row
    assert words in row["detail"]


def test_the_fleet_view_applies_the_same_rule_to_a_node_on_another_python_line():
    def record(name: str, role: str, python: str) -> dict:
        return {"node": name, "role": role, "packages": lock("3.3.2", python).package_hash, "published": 1000.0}

    records = [record("m", "master", "3.11"), record("w13", "worker", "3.13"), record("w10", "worker", "3.10")]
    report = fleet.compare(records, "", period=300, now=1000.0)
    assert {row.record["node"]: row.differing for row in report.rows} == {"m": set(), "w13": set(), "w10": {"packages"}}


def test_under_root_the_probe_reads_the_nodes_airflow_not_this_hosts(run_cli, tmp_path, make_venv):
    """A venv at the node's path on this host is not the node's: under --root only the tree counts."""
    host_venv = make_venv(**MASTER_SET)  # on this host, at a path the node's file names too
    recorded = package_set_hash([f"{k}=={v}" for k, v in MASTER_SET.items()])
    code, row = worker_health(run_cli, tmp_path, host_venv, recorded, airflow_version="3.3.2")
    assert (code, row["status"]) != (0, "OK"), row
    assert str(tmp_path / "node") in row["target"], row  # it looked in the tree


def test_upgrade_dry_run_under_root_needs_no_airflow_on_this_host(run_cli, tmp_path):
    root = tmp_path / "master"
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "2.11.2",
                     "--master-host", "10.20.0.1", "--broker-url", "redis://10.20.0.1:6379/0",
                     "--db-url", "postgresql://a@10.20.0.1/airflow",
                     "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    dry = run_cli("upgrade", "--root", root, "--to", "3.3.2", "--dry-run")
    assert dry.code == 0, dry.err
