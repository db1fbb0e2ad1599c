"""`airflow-node drain` / `resume`: what the fleet view shows of a drained worker, and what is refused.
(The drain itself, a running task finishing and a queued one waiting for `resume`, is proven end to end in
tests/e2e/test_one_host.py: it needs a real Celery worker in a real Airflow.)"""

from __future__ import annotations

import os

from airflow_nodes import fleet
from airflow_nodes.celerycontrol import DrainFlag, process_start, read_drain_flag
from airflow_nodes.node import DRAINED_FLAG
from airflow_nodes.target import Target

from conftest import snapshot, worker_args


def record(name: str, role: str, **flags: object) -> dict:
    return {"node": name, "role": role, "published": 1000.0, **flags}


def test_the_fleet_view_shows_a_drained_worker_drained_not_missing():
    records = [record("m", "master"), record("w1", "worker", worker_online=True, drained=True),
               record("w2", "worker", worker_online=True, drained=False)]  # fmt: skip
    report = fleet.compare(records, "w1,w2", period=300, now=1000.0)
    findings = {row.record["node"]: row.findings for row in report.rows}
    assert findings["w1"] == ["drained: takes no new tasks (`airflow-node resume` there)"]
    assert findings["w2"] == [] and report.missing == []
    assert report.status == fleet.DRIFT and "w1" in report.verdict  # a warning: less capacity, on purpose


def test_a_worker_is_drained_while_the_process_the_drain_stopped_runs(run_cli, tmp_path, cluster_file):
    """The flag names the worker's process: once it restarted (consuming again), the flag no longer counts."""
    root = tmp_path / "w"
    assert run_cli(*worker_args(root, cluster_file)).code == 0
    target = Target.at(root)
    ctx, flag = fleet.load_context(target), target.path(DRAINED_FLAG)
    assert fleet.node_facts(ctx, target)["drained"] is False
    flag.parent.mkdir(parents=True, exist_ok=True)
    DrainFlag(os.getpid(), process_start(os.getpid()), ("default",)).write(flag)  # this process stands in
    assert fleet.node_facts(ctx, target)["drained"] is True
    assert read_drain_flag(flag).queues == ("default",)
    DrainFlag(os.getpid(), "1", ("default",)).write(flag)  # the same pid, another process: a restart
    assert fleet.node_facts(ctx, target)["drained"] is False
    flag.write_text('{"pid": 1, "started": "1", "queues": ["-Q bad"]}')  # not ours
    assert read_drain_flag(flag) is None and fleet.node_facts(ctx, target)["drained"] is False


def test_drain_and_resume_are_refused_where_no_worker_runs_or_under_root(run_cli, tmp_path, cluster_file):
    root = tmp_path / "w"
    assert run_cli(*worker_args(root, cluster_file)).code == 0
    before = snapshot(root)
    for command in ("drain", "resume"):
        result = run_cli(command, "--root", root)
        assert result.code == 2 and result.err.count("\n") == 1
        assert f"{command}: only on the node itself" in result.err
    assert snapshot(root) == before
    master = tmp_path / "m"
    (master / "etc/airflow-node").mkdir(parents=True)
    (master / "etc/airflow-node/cluster.toml").write_bytes(cluster_file.read_bytes())
    assert run_cli("init", "--role", "master", "--root", master, "--airflow-version", "3.3.2").code == 0
    result = run_cli("drain", "--root", master)
    assert result.code == 2 and "drain: this node runs no Celery worker (a master)" in result.err
    assert run_cli("drain", "--root", root, "--timeout", "nan").code == 2  # bounded and finite
