"""`airflow-node health` against real redis-servers: every way a broker can fail, told apart."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from servers import REDIS_PASSWORD, Blackhole, RedisServer, SilentServer, broker_url, free_port, render_node

from airflow_nodes.cli import main

pytestmark = pytest.mark.integration
DB = "postgresql://airflow:pw@127.0.0.1:1/airflow"  # never probed here: --only redis


@pytest.fixture(scope="module")
def redis_plain(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-plain"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_auth(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=REDIS_PASSWORD)
    yield server
    server.stop()


def probe_redis(tmp_path, capsys, url: str, *extra: str) -> tuple[int, dict, str]:
    root = render_node(tmp_path / "node", "master", broker=url, db=DB)
    capsys.readouterr()  # init's own report
    code = main(["health", "--root", str(root), "--only", "redis", "--json", *extra])
    captured = capsys.readouterr()
    (result,) = json.loads(captured.out)["results"]
    return code, result, captured.out + captured.err


def test_redis_without_password_answers_ping(tmp_path, capsys, redis_plain):
    code, result, _ = probe_redis(tmp_path, capsys, redis_plain.url())
    assert (code, result["status"]) == (0, "OK")
    assert "PING ok" in result["detail"]


def test_redis_with_password_answers_ping_and_hides_it(tmp_path, capsys, redis_auth):
    code, result, output = probe_redis(tmp_path, capsys, redis_auth.url())
    assert (code, result["status"]) == (0, "OK"), result
    assert result["target"] == f"redis://:***@127.0.0.1:{redis_auth.port}/0"
    assert REDIS_PASSWORD not in output and "r3d%25is" not in output


def test_wrong_redis_password_is_an_authentication_failure(tmp_path, capsys, redis_auth):
    code, result, output = probe_redis(tmp_path, capsys, redis_auth.url(password="not-it%@:"))
    assert (code, result["status"]) == (2, "CRITICAL")
    assert "authentication failed" in result["detail"]
    assert "not-it" not in output


def test_missing_redis_password_is_an_authentication_failure(tmp_path, capsys, redis_auth):
    code, result, _ = probe_redis(tmp_path, capsys, broker_url(redis_auth.port))
    assert code == 2 and "authentication failed" in result["detail"]


def test_database_index_beyond_databases_is_named(tmp_path, capsys, redis_plain):
    code, result, _ = probe_redis(tmp_path, capsys, redis_plain.url(db=99))
    assert code == 2
    assert "wrong database index 99" in result["detail"]


def test_stopped_redis_is_refused(tmp_path, capsys):
    server = RedisServer(tmp_path)
    url = server.url()
    server.stop()
    code, result, _ = probe_redis(tmp_path, capsys, url)
    assert code == 2 and "connection refused" in result["detail"]


def test_port_never_listened_is_refused(tmp_path, capsys):
    code, result, _ = probe_redis(tmp_path, capsys, broker_url(free_port()))
    assert code == 2 and "connection refused" in result["detail"]


def test_server_that_never_answers_times_out_within_the_timeout(tmp_path, capsys):
    silent = SilentServer()
    try:
        started = time.monotonic()
        code, result, _ = probe_redis(tmp_path, capsys, broker_url(silent.port), "--timeout", "0.5")
        elapsed = time.monotonic() - started
    finally:
        silent.stop()
    assert code == 2 and "timed out" in result["detail"]
    assert elapsed < 0.5 + 0.5


@pytest.fixture
def blackhole():
    if not Blackhole.available():
        pytest.skip("needs root and iproute2 to build a network namespace")
    namespace = Blackhole()
    yield namespace
    namespace.remove()


def test_blackholed_broker_finishes_within_timeout_plus_half_a_second(tmp_path, blackhole):
    root = render_node(tmp_path / "node", "master", broker=broker_url(6379, host=blackhole.BLACKHOLE_IP), db=DB)
    timeout = 1.0
    started = time.monotonic()
    completed = blackhole.run(
        [sys.executable, "-m", "airflow_nodes", "health", "--root", str(root), "--json", "--timeout", str(timeout),
         "--only", "redis,db"],
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert completed.returncode == 2, completed.stderr
    results = {r["probe"]: r for r in json.loads(completed.stdout)["results"]}
    assert "timed out" in results["redis"]["detail"]
    assert results["db"]["status"] == "CRITICAL"  # 127.0.0.1:1 inside the namespace: refused
    assert elapsed < timeout + 0.5, f"took {elapsed:.2f}s"


def test_blackhole_really_drops_packets(blackhole):
    """Guards the test above: a plain TCP connect to the blackholed address must hang, not be refused."""
    code = (
        "import socket\ntry:\n socket.create_connection(('%s', 6379), timeout=0.3)\n"
        "except TimeoutError:\n print('hang')"
    )
    completed = blackhole.run([sys.executable, "-c", code % blackhole.BLACKHOLE_IP])
    assert completed.stdout.strip() == "hang", completed.stderr
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(blackhole.name) == 1
