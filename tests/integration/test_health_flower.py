"""`airflow-node health` against a real flower (basic auth) and real Celery workers on a test Redis."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from servers import FLOWER_PASSWORD, CeleryProcesses, RedisServer, free_port, render_node

from airflow_nodes.cli import main
from airflow_nodes.cluster import dump_cluster, read_cluster

pytestmark = pytest.mark.integration
DB = "postgresql://airflow:pw@127.0.0.1:1/airflow"


@pytest.fixture(scope="module")
def celery(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("celery")
    redis = RedisServer(workdir)
    processes = CeleryProcesses(workdir, redis.url())
    yield redis, processes
    processes.stop()
    redis.stop()


def run_health(capsys, root, only: str) -> tuple[int, list[dict], str]:
    code = main(["health", "--root", str(root), "--only", only, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)["results"], captured.out + captured.err


def node(tmp_path, capsys, redis, flower, role: str, name: str = "n1", password: str = FLOWER_PASSWORD):
    root = render_node(
        tmp_path / f"{role}-{name}", role, broker=redis.url(), db=DB, node_name=name, flower_port=flower.port
    )
    cluster_file = root / "etc/airflow-node/cluster.toml"
    config = read_cluster(cluster_file)
    cluster_file.write_text(dump_cluster(replace(config, secrets=replace(config.secrets, flower_password=password))))
    capsys.readouterr()
    return root


def test_online_worker_count_follows_real_workers(tmp_path, capsys, celery):
    redis, flower = celery
    master = node(tmp_path, capsys, redis, flower, "master")

    code, results, output = run_health(capsys, master, "flower")
    by_target = {r["target"].rsplit("/", 1)[-1]: r for r in results}
    assert by_target["healthcheck"]["status"] == "OK"
    assert by_target["workers"]["status"] == "WARNING"
    assert by_target["workers"]["detail"].startswith("0 online")
    assert code == 1
    assert FLOWER_PASSWORD not in output

    flower.start_worker("celery@wnode")
    code, results, _ = run_health(capsys, master, "flower")
    workers = next(r for r in results if r["target"].endswith("/workers"))
    assert workers["detail"] == "1 online: celery@wnode"
    assert code == 0

    # the worker node named wnode sees its own Celery worker online; a node whose worker never ran does not
    code, results, _ = run_health(capsys, node(tmp_path, capsys, redis, flower, "worker", "wnode"), "worker")
    assert (code, results[0]["detail"]) == (0, "celery@wnode online")
    code, results, _ = run_health(capsys, node(tmp_path, capsys, redis, flower, "worker", "ghost"), "worker")
    assert (code, results[0]["detail"]) == (2, "celery@ghost unknown to flower (never started?)")


def test_wrong_flower_password_is_reported_without_leaking(tmp_path, capsys, celery):
    redis, flower = celery
    master = node(tmp_path, capsys, redis, flower, "master", password="wrong-flower-password-123")
    code, results, output = run_health(capsys, master, "flower")
    workers = next(r for r in results if r["target"].endswith("/workers"))
    assert workers["status"] == "CRITICAL" and "rejected the credentials" in workers["detail"]
    assert code == 2
    assert "wrong-flower-password-123" not in output


def test_flower_not_running_is_critical(tmp_path, capsys, celery):
    redis, flower = celery
    root = render_node(tmp_path / "m", "master", broker=redis.url(), db=DB, flower_port=free_port())
    capsys.readouterr()
    code, results, _ = run_health(capsys, root, "flower")
    assert code == 2 and all("connection refused" in r["detail"] for r in results)
