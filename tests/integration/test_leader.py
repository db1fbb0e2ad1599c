"""`airflow-node lead` against a real redis-server: wrappers run as the init system runs them (the real
CLI, as subprocesses), each with a child that writes its pid to a marker file; at most one child runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from servers import REDIS_PASSWORD, RedisServer, wait_for

from airflow_nodes.cluster import dump_cluster
from airflow_nodes.leader import current_leader
from airflow_nodes.redisclient import connect

from conftest import make_cluster

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TTL, POLL = 6, 1
SLACK = 3.0  # seconds of process start-up and scheduling on a loaded test host
CHILD = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(1000)"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-leader"), password=REDIS_PASSWORD)
    yield server
    server.stop()


def make_root(path: Path, broker_url: str) -> Path:
    cluster_file = path / "etc/airflow-node/cluster.toml"
    cluster_file.parent.mkdir(parents=True)
    cluster_file.write_text(dump_cluster(make_cluster(broker_url=broker_url)))
    return path


@pytest.fixture
def root(tmp_path, redis_server) -> Path:
    return make_root(tmp_path / "node", redis_server.url())


@pytest.fixture
def client(redis_server):
    client = connect(redis_server.url(), "", 2.0)
    yield client
    client.close()


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie no longer does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Wrapper:
    """One `airflow-node lead` process, its log, and the marker its child writes."""

    def __init__(self, workdir: Path, label: str, root: Path, name: str, *options: str):
        self.log = workdir / f"{label}.log"
        self.marker = workdir / f"{label}.pid"
        argv = [sys.executable, "-m", "airflow_nodes", "lead", name, "--ttl", str(TTL), "--poll", str(POLL),
                "--root", str(root), *options, "--", sys.executable, "-c", CHILD, str(self.marker)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    @property
    def output(self) -> str:
        return self.log.read_text()

    @property
    def child(self) -> int | None:
        """The pid of the child this wrapper started, once it wrote it."""
        text = self.marker.read_text() if self.marker.exists() else ""
        return int(text) if text else None

    def child_alive(self) -> bool:
        return self.child is not None and alive(self.child)

    def holder(self) -> str:
        return f"{socket.gethostname()} pid {self.pid}"

    def kill(self) -> None:
        for pid in (self.pid, self.child):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def wrappers(tmp_path, root):
    """Start wrappers of one lock; on teardown kill them and their children, and check no output of
    theirs held the broker password."""
    started: list[Wrapper] = []

    def start(name: str, *options: str) -> Wrapper:
        wrapper = Wrapper(tmp_path, f"w{len(started)}", root, name, *options)
        started.append(wrapper)
        return wrapper

    yield start
    for wrapper in started:
        wrapper.kill()
    for wrapper in started:
        output = wrapper.output
        assert REDIS_PASSWORD not in output and quote(REDIS_PASSWORD, safe="") not in output
        assert "Traceback" not in output, output


def leader_and_standby(first: Wrapper, second: Wrapper) -> tuple[Wrapper, Wrapper]:
    """Wait until one wrapper's child runs and the other wrapper said it stands by; return (leader, standby)."""
    wait_for(lambda: first.child_alive() or second.child_alive(), 10, "a child to start")
    leader, standby = (first, second) if first.child_alive() else (second, first)
    wait_for(lambda: "standing by" in standby.output, 10, "the other wrapper to stand by")
    return leader, standby


def test_two_wrappers_run_exactly_one_child_and_the_lock_names_its_leader(wrappers, client):
    first, second = wrappers("one-child"), wrappers("one-child")
    leader, standby = leader_and_standby(first, second)
    assert f"leading one-child (lock held by {leader.holder()})" in leader.output
    assert f"standing by: one-child is led by {leader.holder()}" in standby.output
    assert current_leader(client, "one-child") == leader.holder()
    assert standby.child is None and leader.child_alive()
    assert current_leader(client, "nobody-leads-this") is None


def test_frozen_leader_is_replaced_and_stops_its_child_when_it_wakes(wrappers, client):
    leader, standby = leader_and_standby(wrappers("frozen"), wrappers("frozen"))
    old_child = leader.child
    os.kill(leader.pid, signal.SIGSTOP)  # a host cut off: it renews no more
    frozen_at = time.monotonic()
    wait_for(standby.child_alive, TTL + POLL + SLACK, "the standby to take over")
    takeover = time.monotonic() - frozen_at
    print(f"takeover after SIGSTOP of the leader: {takeover:.1f} s (ttl {TTL}, poll {POLL})")
    assert current_leader(client, "frozen") == standby.holder()

    os.kill(leader.pid, signal.SIGCONT)
    woke_at = time.monotonic()
    wait_for(lambda: not alive(old_child), 5, "the old leader to stop its child")
    print(f"old child stopped {time.monotonic() - woke_at:.1f} s after SIGCONT")
    assert "lost the frozen lock: stopping it" in leader.output
    wait_for(
        lambda: f"standing by: frozen is led by {standby.holder()}" in leader.output, 5, "the old leader to stand by"
    )
    assert standby.child_alive() and leader.process.poll() is None


def test_killed_leader_takes_its_child_along_and_the_standby_takes_over(wrappers):
    leader, standby = leader_and_standby(wrappers("killed"), wrappers("killed"))
    old_child = leader.child
    os.kill(leader.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not alive(old_child), 5, "the child to die with its wrapper")
    wait_for(standby.child_alive, TTL + POLL + SLACK, "the standby to take over")
    print(f"takeover after SIGKILL of the leader: {time.monotonic() - killed_at:.1f} s (ttl {TTL}, poll {POLL})")


def test_terminated_leader_stops_its_child_and_releases_the_lock(wrappers, client):
    leader, standby = leader_and_standby(wrappers("terminated"), wrappers("terminated"))
    old_child = leader.child
    leader.process.send_signal(signal.SIGTERM)
    terminated_at = time.monotonic()
    assert leader.process.wait(10) == 0
    assert not alive(old_child)
    wait_for(standby.child_alive, POLL + SLACK, "the standby to take over at its next try")
    takeover = time.monotonic() - terminated_at
    print(f"takeover after SIGTERM of the leader: {takeover:.1f} s (ttl {TTL}, poll {POLL})")
    assert takeover < TTL - POLL
    assert current_leader(client, "terminated") == standby.holder()


def test_child_exit_releases_the_lock_and_passes_on_its_code(tmp_path, root, client):
    argv = [sys.executable, "-m", "airflow_nodes", "lead", "exits", "--ttl", str(TTL), "--poll", str(POLL),
            "--root", str(root), "--", sys.executable, "-c", "raise SystemExit(7)"]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode == 7, result.stdout + result.stderr
    assert result.stdout.startswith("leading exits (lock held by ")
    assert current_leader(client, "exits") is None


def test_broker_errors_are_one_line_without_the_password(tmp_path, redis_server):
    wrong = make_root(tmp_path / "wrong", redis_server.url(password="not-" + REDIS_PASSWORD))
    wrapper = Wrapper(tmp_path, "wrong", wrong, "wrong-password")
    try:
        wait_for(lambda: "broker error" in wrapper.output, 10, "the wrapper to say the broker refused it")
        time.sleep(3 * POLL)  # three more tries: the same error is not said again (rate-limited)
        wrapper.process.send_signal(signal.SIGTERM)
        assert wrapper.process.wait(10) == 0
    finally:
        wrapper.kill()
    output = wrapper.output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("broker error (wrong-password lock): AuthenticationError"), output
    assert "not-" not in output and REDIS_PASSWORD not in output and quote(REDIS_PASSWORD, safe="") not in output
    assert wrapper.child is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["Bad_Name"], "airflow-node: NAME: 'Bad_Name' is not a lock name"),
        (["x" * 33], "is not a lock name"),
        (["ok", "--ttl", "4"], "airflow-node: --ttl: 4 is not within 5..300 seconds"),
        (["ok", "--ttl", "nan"], "airflow-node: --ttl: nan is not within"),
        (["ok", "--poll", "0.5"], "airflow-node: --poll: 0.5 is not within 1..60 seconds"),
        (["ok", "--ttl", "10", "--poll", "5"], "airflow-node: --poll: 5 must be less than half of --ttl (10)"),
        (["ok"], "airflow-node: ARGV: give the command to run after --"),
    ],
)
def test_bad_input_exits_2_with_one_line(root, args, message):
    extra = ["--", "true"] if args != ["ok"] else []
    argv = [sys.executable, "-m", "airflow_nodes", "lead", *args, "--root", str(root), *extra]
    result = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr


def test_leader_cut_off_from_the_broker_stops_its_child_before_the_lock_expires(tmp_path):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD)
    wrapper = Wrapper(tmp_path, "cut-off", make_root(tmp_path / "node", server.url()), "cut-off")
    try:
        wait_for(wrapper.child_alive, 10, "the wrapper to lead")
        old_child = wrapper.child
        server.process.send_signal(signal.SIGSTOP)  # the broker answers no more (the lock still expires)
        frozen_at = time.monotonic()
        wait_for(lambda: not alive(old_child), TTL - POLL + SLACK, "the wrapper to stop its child")
        stopped_after = time.monotonic() - frozen_at
        print(f"child stopped {stopped_after:.1f} s after the broker froze (ttl {TTL}, poll {POLL})")
        assert stopped_after < TTL - POLL + 0.5  # before the last renewal's lock can expire, whenever that was
        assert "lost the cut-off lock: stopping it" in wrapper.output
        assert "broker error (cut-off lock): TimeoutError" in wrapper.output

        server.process.send_signal(signal.SIGCONT)
        wait_for(
            lambda: wrapper.child not in (None, old_child) and wrapper.child_alive(), 10, "the wrapper to lead again"
        )
        assert "broker answers again (cut-off lock)" in wrapper.output
    finally:
        server.process.send_signal(signal.SIGCONT)
        wrapper.kill()
        server.stop()
    assert REDIS_PASSWORD not in wrapper.output and "Traceback" not in wrapper.output
