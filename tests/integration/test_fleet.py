"""The fleet view against a real redis-server: three nodes rendered under --root report through
`airflow-node health`, and `airflow-node cluster` compares them with the master's record."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import tracemalloc
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from servers import REDIS_PASSWORD, REDIS_SERVER, RedisServer, free_port, stop_pid, wait_for

from airflow_nodes.cli import main
from airflow_nodes.cluster import dump_cluster, read_cluster
from airflow_nodes.context import load_context
from airflow_nodes.fleet import (
    MAX_RECORD_BYTES,
    MAX_RECORDS,
    TEXT_FIELDS,
    TooManyRecords,
    known_workers,
    publish_record,
    read_fleet,
    record_key,
    seal,
)
from airflow_nodes.target import Target

pytestmark = pytest.mark.integration
DB = "postgresql://airflow:pw@127.0.0.1:1/airflow"  # never reached: health runs --only redis here


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def fleet(tmp_path, capsys):
    """A master and two workers of one cluster under tmp_path, their broker a real redis-server."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    roots = {name: tmp_path / name for name in ("master", "w1", "w2")}
    common = ["--airflow-version", "3.3.2", "--init-system", "systemd", "--airflow-node-bin",
              "/usr/local/bin/airflow-node"]  # fmt: skip
    code, _, err = cli(capsys, "init", "--role", "master", "--root", roots["master"], "--master-host", "127.0.0.1",
                       "--broker-url", server.url(), "--db-url", DB, "--node-name", "master",
                       "--expect-workers", "w1,w2", *common)  # fmt: skip
    assert code == 0, err
    cluster_file = roots["master"] / "etc/airflow-node/cluster.toml"
    for name in ("w1", "w2"):
        code, _, err = cli(capsys, "init", "--role", "worker", "--root", roots[name], "--config", cluster_file,
                           "--node-name", name, *common)  # fmt: skip
        assert code == 0, err
    yield server, roots
    server.stop()


def report(capsys, root: Path, name: str = "all") -> None:
    """What a node does on every health run: probe, then publish its record."""
    code, out, err = cli(capsys, "health", "--root", root, "--only", "redis", "--json")
    assert code == 0, out + err


def cluster_view(capsys, root: Path) -> tuple[int, dict]:
    code, out, _ = cli(capsys, "cluster", "--root", root, "--json")
    return code, json.loads(out)


def findings(view: dict, node: str) -> list[str]:
    return next(n for n in view["nodes"] if n["node"] == node)["findings"]


def broker(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, password=REDIS_PASSWORD)


def stored(client: redis.Redis, name: str) -> dict:
    """The record stored under a node's key, its signature dropped."""
    record = json.loads(client.get(f"airflow-node:airflow:node:{name}"))
    record.pop("sig", None)
    return record


def store_signed(client: redis.Redis, roots: dict[str, Path], name: str, record: dict) -> None:
    """Store a record under a node's key, signed with the cluster's key: what only a node can do."""
    key = record_key(read_cluster(roots["master"] / "etc/airflow-node/cluster.toml"))
    client.set(f"airflow-node:airflow:node:{name}", seal(record, key), keepttl=True)


def test_three_nodes_report_and_are_consistent(fleet, capsys):
    server, roots = fleet
    for root in roots.values():
        report(capsys, root)
    code, view = cluster_view(capsys, roots["w2"])  # any node sees the whole cluster
    assert code == 0, view
    assert [n["node"] for n in view["nodes"]] == ["master", "w1", "w2"] and view["verdict"].startswith("OK")
    code, table, _ = cli(capsys, "cluster", "--root", roots["w1"])
    assert code == 0 and table.splitlines()[0].split()[:3] == ["NODE", "ROLE", "ADDRESS"]
    client = redis.Redis(port=server.port, password=REDIS_PASSWORD)
    keys = sorted(k.decode() for k in client.keys("airflow-node:*"))
    assert keys == ["airflow-node:airflow:node:master", "airflow-node:airflow:node:w1", "airflow-node:airflow:node:w2"]
    assert 0 < client.ttl(keys[0]) <= 3 * 5 * 60  # three sync periods: a dead node disappears
    records = b"".join(client.get(k) for k in keys).decode()
    secrets = read_cluster(roots["master"] / "etc/airflow-node/cluster.toml").secret_values()
    assert not [s for s in secrets if s in records + table], "a secret in a record or the table"
    assert len(json.dumps(json.loads(client.get(keys[0])))) < 1024  # a small record


def test_drift_is_flagged_by_name(fleet, capsys):
    server, roots = fleet
    cfg = roots["w1"] / "opt/airflow/airflow.cfg"
    cfg.write_text(cfg.read_text() + "# edited on w1 only\n")
    node_toml = roots["w2"] / "etc/airflow-node/node.toml"
    node_toml.write_text(node_toml.read_text().replace('airflow_version = "3.3.2"', 'airflow_version = "3.3.1"'))
    for root in roots.values():
        report(capsys, root)
    code, view = cluster_view(capsys, roots["master"])
    assert code == 1 and view["verdict"].startswith("WARNING")
    assert findings(view, "w1") == ["cfg differs from the master's"]
    assert findings(view, "w2") == ["airflow differs from the master's"]
    assert findings(view, "master") == []
    code, table, _ = cli(capsys, "cluster", "--root", roots["master"])
    assert "!" in table and "w1: cfg differs from the master's" in table


def test_a_different_secret_and_an_old_dag_revision_are_flagged(fleet, capsys):
    server, roots = fleet
    cluster_file = roots["w2"] / "etc/airflow-node/cluster.toml"
    config = read_cluster(cluster_file)
    rotated = config.secrets.__class__(**{**config.secrets.__dict__, "jwt_secret": "another-jwt-secret-0123456789"})
    cluster_file.write_text(dump_cluster(config.__class__(**{**config.__dict__, "secrets": rotated})))
    for name, revision in (("master", "new-revision"), ("w1", "old-revision"), ("w2", "new-revision")):
        state = roots[name] / "var/lib/airflow-node/sync-state.json"
        state.write_text(json.dumps({"dag_revision": revision}))
        report(capsys, roots[name])
    code, view = cluster_view(capsys, roots["w1"])
    assert code == 1
    assert "dags differs from the master's" in findings(view, "w1")
    assert set(findings(view, "w2")) == {"secrets differs from the master's", "cluster_file differs from the master's"}
    assert "another-jwt-secret" not in json.dumps(view)
    code, out, _ = cli(capsys, "health", "--root", roots["w1"], "--only", "consistency", "--json")
    consistency = {r["target"]: r for r in json.loads(out)["results"]}
    assert "differs from the master's: dags" in consistency["the master's live record"]["detail"]


def test_a_node_that_stops_reporting_turns_stale_then_missing(fleet, capsys):
    server, roots = fleet
    for root in roots.values():
        report(capsys, root)
    client = broker(server)
    # two sync periods (5 min) and more ago
    store_signed(client, roots, "w2", {**stored(client, "w2"), "published": time.time() - 11 * 60})
    code, view = cluster_view(capsys, roots["master"])
    assert code == 1 and findings(view, "w2")[0].startswith("stale: last report")
    client.delete("airflow-node:airflow:node:w2")  # what the expiry does three periods after its last report
    code, view = cluster_view(capsys, roots["master"])
    assert code == 2 and view["missing"] == ["w2"] and "missing w2" in view["verdict"]


def test_the_broker_down_is_a_clean_critical_and_health_still_runs(fleet, capsys):
    server, roots = fleet
    server.stop()
    code, out, err = cli(capsys, "cluster", "--root", roots["w1"])
    assert code == 2 and "the broker cannot be read" in out and "Traceback" not in err
    code, out, err = cli(capsys, "health", "--root", roots["w1"], "--json", "--timeout", "0.5")
    statuses = {r["probe"]: r["status"] for r in json.loads(out)["results"]}
    assert statuses["redis"] == "CRITICAL" and "packages" in statuses and "Traceback" not in err


def test_a_sentinel_broker_list_is_understood_by_the_probe_and_the_fleet(tmp_path, capsys):
    """sentinel://h1:p1;sentinel://h2:p2 with a master name, as Celery takes it: a real Sentinel here."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {server.port} 1\n"
                    f"sentinel auth-pass mymaster {REDIS_PASSWORD}\n")  # fmt: skip
    sentinel = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis.Redis(port=sentinel_port).ping(), 10, "redis sentinel")
        quoted = quote(REDIS_PASSWORD, safe="")
        url = f"sentinel://:{quoted}@127.0.0.1:{sentinel_port}/0;sentinel://:{quoted}@127.0.0.1:{free_port()}/0"
        root = tmp_path / "master"
        code, _, err = cli(capsys, "init", "--role", "master", "--root", root, "--master-host", "127.0.0.1",
                           "--broker-url", url, "--sentinel-master", "mymaster", "--db-url", DB, "--node-name", "m",
                           "--airflow-version", "3.3.2",
                           "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
        assert code == 0, err
        assert "master_name = mymaster" in (root / "opt/airflow/airflow.cfg").read_text()
        code, out, err = cli(capsys, "health", "--root", root, "--only", "redis", "--json")
        assert code == 0, out + err
        assert REDIS_PASSWORD not in out and quoted not in out
        code, view = cluster_view(capsys, root)
        assert [n["node"] for n in view["nodes"]] == ["m"]
        code, _, err = cli(capsys, "init", "--role", "master", "--root", tmp_path / "x", "--master-host", "m",
                           "--broker-url", url, "--db-url", DB, "--airflow-version", "3.3.2")  # fmt: skip
        assert code == 2 and "--sentinel-master" in err
    finally:
        stop_pid(sentinel)
        server.stop()


def test_records_anyone_could_write_neither_crash_nor_mislead(fleet, capsys):
    """Every node's airflow user (and its tasks) can write to the broker: a record is data, checked."""
    server, roots = fleet
    for root in roots.values():
        report(capsys, root)
    client = redis.Redis(port=server.port, password=REDIS_PASSWORD)
    forged = {"junk": "not json", "nested": "[" * 100000, "typed": json.dumps({"node": "t", "published": "x"}),
              "lines": json.dumps({"node": "w9\nOK: all fine", "role": "worker"})}  # fmt: skip
    for name, value in forged.items():
        client.set(f"airflow-node:airflow:node:{name}", value)
    code, view = cluster_view(capsys, roots["master"])
    assert code == 0 and [n["node"] for n in view["nodes"]] == ["master", "w1", "w2"]  # refused, not printed
    assert len(view["refused"]) == 4 and not [r for r in view["refused"] if "\n" in r]
    code, table, _ = cli(capsys, "cluster", "--root", roots["master"])
    assert code == 0 and "refused record 'lines': not signed\n" in table
    client.set("airflow-node:airflow:node:impostor", json.dumps({"node": "impostor", "role": "master"}))
    code, view = cluster_view(capsys, roots["w1"])
    assert code == 0 and "'impostor': not signed" in json.dumps(view["refused"])  # a forger's master counts not
    store_signed(client, roots, "impostor", {"node": "impostor", "role": "master", "published": time.time()})
    code, view = cluster_view(capsys, roots["w1"])
    assert code == 2 and "2 records claim it" in view["verdict"]  # two masters: neither is the reference


def test_the_workers_an_upgrade_expects_to_answer_are_the_named_and_the_fresh(fleet, capsys, tmp_path):
    server, roots = fleet
    cluster_file = roots["master"] / "etc/airflow-node/cluster.toml"
    code, _, err = cli(capsys, "init", "--role", "worker", "--root", tmp_path / "w3", "--config", cluster_file,
                       "--node-name", "w3", "--airflow-version", "3.3.2", "--init-system", "systemd",
                       "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert code == 0, err
    report(capsys, tmp_path / "w3")  # not named by --expect-workers: known by its record
    master = load_context(Target.at(roots["master"]))
    assert known_workers(master) == {"celery@w1", "celery@w2", "celery@w3"}
    client = broker(server)
    store_signed(client, roots, "w3", {**stored(client, "w3"), "published": time.time() - 11 * 60})
    assert known_workers(master) == {"celery@w1", "celery@w2"}  # stale: gone for two sync periods
    server.stop()
    assert known_workers(master) == {"celery@w1", "celery@w2"}  # the broker down: the named ones still


def test_a_record_with_a_huge_or_odd_number_is_refused_without_a_traceback(fleet, capsys):
    """A 400-digit integer once crashed `cluster` and the upgrade's drain: numbers are bounded and finite."""
    server, roots = fleet
    for root in roots.values():
        report(capsys, root)
    client = broker(server)
    for name, number in (("big", "1" * 400), ("small", "-" + "9" * 400), ("nan", "NaN"), ("inf", "1e400")):
        client.set(
            f"airflow-node:airflow:node:{name}", f'{{"node": "{name}", "role": "worker", "published": {number}}}'
        )
    for name, number in (("sbig", 10**400), ("sneg", -(10**400)), ("sfar", 1e300)):  # signed: bounds, not keys
        store_signed(client, roots, name, {"node": name, "role": "worker", "published": number})
    code, view = cluster_view(capsys, roots["master"])
    assert code == 0 and [n["node"] for n in view["nodes"]] == ["master", "w1", "w2"]
    assert len(view["refused"]) == 7
    assert known_workers(load_context(Target.at(roots["master"]))) == {"celery@w1", "celery@w2"}  # the drain's


def test_a_failing_nodes_long_error_and_daemons_are_clipped_by_the_writer_not_refused(fleet, capsys):
    """The writer clips to the schema the reader checks: a long honest error keeps the master in view."""
    server, roots = fleet
    for root in roots.values():
        report(capsys, root)
    master = load_context(Target.at(roots["master"]))
    error = "rsync: " + "x" * 308  # 315 characters, as a failing sync's error was
    assert publish_record(master, Target.at(roots["master"]), {"sync_error": error, "daemons": "d" * 382}) == ""
    code, view = cluster_view(capsys, roots["w1"])
    assert code == 1 and findings(view, "master") == [f"last sync failed: {error[:80]}"], view
    huge = "line one\nline two \u202e" + "y" * 5000
    publish_record(master, Target.at(roots["master"]), {"sync_error": huge, "daemons": "z" * 5000})
    code, view = cluster_view(capsys, roots["w1"])
    record = next(n for n in view["nodes"] if n["node"] == "master")
    assert code == 1 and len(record["sync_error"]) == TEXT_FIELDS["sync_error"] and record["sync_error"].isprintable()
    assert len(record["daemons"]) == TEXT_FIELDS["daemons"]


def test_reading_a_flooded_broker_is_bounded_in_keys_bytes_and_time(fleet, capsys):
    """200,000 keys under the fleet's prefix once took 7.9 s and 355 MB with --timeout 2."""
    server, roots = fleet
    for root in roots.values():
        report(capsys, root)
    client = broker(server)
    client.set("airflow-node:airflow:node:huge", b"{" + b" " * (32 << 20) + b"}")  # one 32 MB value
    tracemalloc.start()
    try:
        code, view = cluster_view(capsys, roots["master"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0 and view["refused"] == [f"'huge': larger than {MAX_RECORD_BYTES} bytes"]
    assert peak < 8 << 20, f"{peak} bytes to read four records"
    pipe = client.pipeline(transaction=False)
    for start in range(0, 200_000, 10_000):
        pipe.mset({f"airflow-node:airflow:node:flood{i}": '{"node": "x"}' for i in range(start, start + 10_000)})
    pipe.execute()
    started = time.monotonic()
    code, out, err = cli(capsys, "cluster", "--root", roots["master"], "--timeout", "2")
    assert time.monotonic() - started < 3, "the timeout was not respected"
    assert code == 2 and "CRITICAL: the broker cannot be read" in out and "Traceback" not in err
    master = load_context(Target.at(roots["master"]))
    tracemalloc.start()
    try:
        with pytest.raises(TooManyRecords, match=f"more than {MAX_RECORDS} keys"):
            read_fleet(master, timeout=60)  # the count bound, whatever the machine's load
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes to refuse a flood"
    assert known_workers(master) == {"celery@w1", "celery@w2"}  # the upgrade's drain: the named ones


def test_a_forged_master_record_cannot_turn_drift_into_ok(fleet, capsys):
    server, roots = fleet
    for name in ("w1", "w2"):  # both workers on another Airflow version than the master: drift
        node_toml = roots[name] / "etc/airflow-node/node.toml"
        node_toml.write_text(node_toml.read_text().replace('airflow_version = "3.3.2"', 'airflow_version = "3.3.1"'))
    for root in roots.values():
        report(capsys, root)
    code, view = cluster_view(capsys, roots["w1"])
    assert code == 1 and findings(view, "w1") == ["airflow differs from the master's"]
    client = broker(server)  # what anyone with the broker URL can write: a master just like the workers
    forged = {**json.loads(client.get("airflow-node:airflow:node:w1")), "node": "master", "role": "master"}
    client.set("airflow-node:airflow:node:master", json.dumps(forged))
    code, view = cluster_view(capsys, roots["w1"])
    assert code == 2 and view["missing"] == ["the master"]  # no reference, never OK
    assert view["refused"] == ["'master': not signed with this cluster's key"]


def test_copied_forged_and_future_records_do_not_count(fleet, capsys):
    """A record must be signed, name the node of its key, and not be published in the future; one that
    fails counts toward no expected worker."""
    server, roots = fleet
    cluster_file = roots["master"] / "etc/airflow-node/cluster.toml"
    config = read_cluster(cluster_file)
    cluster_file.write_text(dump_cluster(dataclasses.replace(config, expected_workers="2")))
    for root in roots.values():
        report(capsys, root)
    client = broker(server)
    client.delete("airflow-node:airflow:node:w2")  # w2 is gone
    client.set("airflow-node:airflow:node:w1-copy", client.get("airflow-node:airflow:node:w1"))  # a replay
    client.set("airflow-node:airflow:node:w7", json.dumps({"node": "w7", "role": "worker", "published": time.time()}))
    code, view = cluster_view(capsys, roots["master"])
    assert code == 2 and view["missing"] == ["1 of 2 expected worker(s)"], view
    assert [n["node"] for n in view["nodes"]] == ["master", "w1"]
    assert set(view["refused"]) == {"'w1-copy': it names another node ('w1')", "'w7': not signed"}
    client.delete("airflow-node:airflow:node:w1-copy", "airflow-node:airflow:node:w7")
    report(capsys, roots["w2"])
    store_signed(client, roots, "w2", {**stored(client, "w2"), "published": time.time() + 86400})  # never stale
    code, view = cluster_view(capsys, roots["master"])
    assert code == 2 and view["refused"] == ["'w2': published in the future"]


def test_a_node_builds_its_record_from_its_own_state_not_from_the_broker(fleet, capsys):
    server, roots = fleet
    report(capsys, roots["w1"])
    client = broker(server)
    planted = {**stored(client, "w1"), "sync_error": "planted", "dags": "planted", "worker_online": False}
    store_signed(client, roots, "w1", planted)  # even signed: the broker is not this node's memory
    report(capsys, roots["w1"])
    record = stored(client, "w1")
    assert "planted" not in json.dumps(record) and "worker_online" not in record
    own = json.loads((roots["w1"] / "var/lib/airflow-node/fleet-record.json").read_text())
    assert own["node"] == "w1" and own["role"] == "worker"
