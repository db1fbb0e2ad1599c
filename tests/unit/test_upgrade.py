"""`airflow-node upgrade`: the plan, and the input it refuses before anything changes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from airflow_nodes.cluster import dump_cluster
from airflow_nodes.context import load_context
from airflow_nodes.target import Target
from airflow_nodes.upgrade import check_dags, follow_master, plan_upgrade

from conftest import make_cluster, snapshot, worker_args


@pytest.fixture
def master_root(run_cli, tmp_path, make_venv):
    root = tmp_path / "master"
    venv = make_venv(**{"apache-airflow": "2.11.2"})
    result = run_cli("init", "--role", "master", "--root", root, "--venv", venv, "--master-host", "10.20.0.1",
                     "--broker-url", "redis://10.20.0.1:6379/0", "--db-url", "postgresql://a@10.20.0.1/airflow",
                     "--init-system", "systemd", "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    return root


def test_dry_run_shows_the_whole_plan_and_changes_nothing(run_cli, master_root):
    before = snapshot(master_root)
    result = run_cli("upgrade", "--root", master_root, "--to", "3.3.2", "--dry-run")
    assert result.code == 0, result.err
    for words in ("from Airflow 2.11.2 to 3.3.2", "pg_dump", "api-server, dag-processor added, webserver removed",
                  "airflow db migrate", "restore the DB from the backup", "AIR301"):  # fmt: skip
        assert words in result.out, result.out
    assert snapshot(master_root) == before


@pytest.mark.parametrize(
    "args,words",
    [
        (["--to", "3.3.1"], "--to: no lock file for Airflow 3.3.1"),
        (["--to", "2.11.2"], "--to: 2.11.2 is not newer than the installed 2.11.2"),
        (["--to", "2.10.5"], "--to: 2.10.5 is not newer"),
        (["--to", "3.3"], "--to: '3.3': give the full version"),
        (["--to", "4.0.0"], "--to"),
        (["--to", "3.3.2", "--backup-dir", "relative"], "--backup-dir"),
        (["--to", "3.3.2", "--wheelhouse", "/nonexistent"], "--wheelhouse"),
        (["--to", "3.3.2"], "runs on the real master only"),  # not under --root: a test tree is not a master
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_changed(run_cli, master_root, args, words):
    before = snapshot(master_root)
    result = run_cli("upgrade", "--root", master_root, *args)
    assert result.code == 2, (result.out, result.err)
    assert words in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert snapshot(master_root) == before


def test_a_worker_refuses_and_follows_the_masters_new_version_line(run_cli, tmp_path):
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(make_cluster("2.11")))
    root = tmp_path / "worker"
    assert run_cli(*worker_args(root, cluster_file, "2.11.2", "systemd")).code == 0
    result = run_cli("upgrade", "--root", root, "--to", "3.3.2", "--dry-run")
    assert result.code == 2 and "this node is a worker" in result.err
    target = Target.at(root)
    ctx = load_context(target)
    assert follow_master(ctx, ctx.cluster, target) == (ctx.node, [])  # the same line: nothing to follow
    node, done = follow_master(ctx, dataclasses.replace(ctx.cluster, airflow_version="3.3"), target)
    assert node.airflow_version == "3.3.2" and done == ["the master moved to Airflow 3.3.2"]


def test_dags_that_airflow_3_cannot_run_block_and_deprecated_ones_are_listed(master_root):
    dags = master_root / "opt/airflow/dags"
    (dags / "old.py").write_text(
        "from datetime import datetime\nfrom airflow import DAG\n"
        "with DAG('old', schedule_interval='@daily', start_date=datetime(2024, 1, 1)):\n    pass\n"
    )
    plan = plan_upgrade(Target.at(master_root), "3.3.2", Path("/var/backups/airflow-node"))
    blocking, deprecated = check_dags(plan, Target.at(master_root))
    assert [line.split(" ", 1)[0] for line in blocking] == ["old.py:3:"] and "AIR301" in blocking[0]
    assert any("AIR311" in line for line in deprecated)  # `from airflow import DAG` still runs on 3.x
