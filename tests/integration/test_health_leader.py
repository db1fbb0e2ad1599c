"""`airflow-node health --only leader` on a master of several, against a real redis-server: the lock
`airflow-node lead` holds names this host, another, or nobody."""

from __future__ import annotations

import json

import pytest
from servers import REDIS_PASSWORD, RedisServer, render_node

from airflow_nodes.cli import main
from airflow_nodes.cluster import MASTER, Member
from airflow_nodes.context import load_context
from airflow_nodes.leader import lock_key
from airflow_nodes.redisclient import connect
from airflow_nodes.sshkeys import public_key_line
from airflow_nodes.target import Target

pytestmark = pytest.mark.integration
DB = "postgresql://airflow:pw@127.0.0.1:1/airflow"  # never probed here: --only leader
KEY = lock_key("dag-processor")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-health-leader"), password=REDIS_PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def client(redis_server):
    client = connect(redis_server.url(), "", 2.0)
    yield client
    client.delete(KEY)
    client.close()


def second_master() -> Member:
    key, host_key = (public_key_line(b"m2".ljust(32, c)) for c in (b"k", b"h"))
    return Member("m2", MASTER, "10.20.0.2", "10.20.0.2", key, host_key)


def leader_health(root, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["health", "--root", str(root), "--only", "leader", "--json"])
    document = json.loads(capsys.readouterr().out)
    (result,) = document["results"]
    return code, result


def test_the_leader_probe_names_the_holder_or_says_nobody_parses(tmp_path, capsys, redis_server, client):
    root = render_node(tmp_path / "m1", "master", broker=redis_server.url(), db=DB, members=(second_master(),))
    own = load_context(Target.at(str(root))).own_address  # the holder names this master by its address
    client.set(KEY, f"{own} pid 4242", px=20_000)
    code, result = leader_health(root, capsys)
    assert (code, result["status"]) == (0, "OK") and result["target"] == KEY
    assert result["detail"] == f"led by {own} pid 4242 (this host)"

    client.set(KEY, "other-master pid 7", px=20_000)
    code, result = leader_health(root, capsys)
    assert (code, result["status"], result["detail"]) == (0, "OK", "standing by; led by other-master pid 7")

    client.delete(KEY)
    code, result = leader_health(root, capsys)
    assert (code, result["status"]) == (2, "CRITICAL") and result["detail"].startswith("nobody holds the lock")


def test_one_master_has_no_leader_to_check(tmp_path, capsys, redis_server):
    root = render_node(tmp_path / "m1", "master", broker=redis_server.url(), db=DB)
    capsys.readouterr()
    code = main(["health", "--root", str(root), "--only", "leader", "--json"])
    document = json.loads(capsys.readouterr().out)
    assert document["results"] == [] and document["skipped"] == ["leader"] and code == 3  # nothing checked: UNKNOWN


def test_the_broker_down_is_unknown_not_a_leader_lost(tmp_path, capsys):
    root = render_node(tmp_path / "m1", "master", broker="redis://127.0.0.1:1/0", db=DB, members=(second_master(),))
    code, result = leader_health(root, capsys)
    assert (code, result["status"]) == (3, "UNKNOWN") and "cannot read the lock" in result["detail"]
