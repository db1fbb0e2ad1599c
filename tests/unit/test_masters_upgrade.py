"""An upgrade with several masters, as the other masters see it: the upgrading master's gate says so in its
`release` answer; their followers keep their Airflow stopped while it does, then follow it to its
Airflow as a worker does (or start theirs again, when it rolled back). The peer is played by a transfer
that answers as a master's gate would (tests/e2e/test_several_masters.py runs the real one); the node is
a rendered master under --root, where init-system commands are listed, not run."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading

import pytest
from test_several_masters_plan import master_member

from airflow_nodes.cluster import dump_cluster, read_cluster
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.execute import Completed
from airflow_nodes.install import find_lock
from airflow_nodes.join import upgrade_in_progress, upgrade_marker
from airflow_nodes.masters import converge_master
from airflow_nodes.node import CLUSTER_FILE, HELD_FILE, NODE_FILE, UPGRADE_MARKER
from airflow_nodes.sync import ReleaseAnswer, parse_release_answer
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.target import Target
from airflow_nodes.upgrade import STOP_MASTERS, check_database, plan_upgrade, upgrade_steps

from conftest import make_cluster

# loopback addresses: before a master restarts for another's change it waits for that one's API server,
# which a local HTTP server plays here (masters.wait_for_a_peer)
M1, M2 = "127.0.0.1", "127.0.0.2"
TWO_MASTERS = dict(members=(master_member("m1", M1, b"a"), master_member("m2", M2, b"b")))

REVISION = "ab" * 32
HASH = "cd" * 32


@pytest.mark.parametrize(
    "answer, expected",
    [
        (f"{REVISION}\n{HASH}\n", ReleaseAnswer(REVISION, HASH)),
        (f"\n{HASH}\n", ReleaseAnswer("", HASH)),  # nothing published yet
        (f"{REVISION}\n", ReleaseAnswer(REVISION, "")),  # a gate from before the cluster file's hash
        (f"{REVISION}\n{HASH}\nupgrading 3.3.2\n", ReleaseAnswer(REVISION, HASH, "3.3.2")),
    ],
)
def test_a_gates_release_answer_is_parsed(answer, expected):
    assert parse_release_answer(answer.encode(), "airflow@m2") == expected


@pytest.mark.parametrize(
    "answer",
    [
        f"{REVISION}\n{HASH}\nupgrading 3.3.2; reboot\n",
        f"{REVISION}\n{HASH}\nupgrading ../../x\n",
        f"{REVISION}\n{HASH}\nupgrading 3.3.2\nupgrading 3.3.3\n",
        f"{REVISION}\n{HASH}\nsomething else\n",
        f"{REVISION}\nnot-a-hash\n",
        "<html>\n",
    ],
)
def test_a_hostile_release_answer_is_one_error_naming_the_master(answer):
    with pytest.raises(OperationError, match="^airflow@m2: answered"):
        parse_release_answer(answer.encode(), "airflow@m2")


class PeerGate(TransferRunner):
    """The other master, m2, as its gate answers: `release` (the hash of its cluster file, and the version
    it is upgrading to, if any) and `cat` of its cluster file; silent when `up` is False, and only its
    `cat` when `cat` is False."""

    def __init__(self, cluster_text: str, upgrading: str = "", up: bool = True, cat: bool = True):
        super().__init__()
        object.__setattr__(self, "peer", {"text": cluster_text, "upgrading": upgrading, "up": up, "cat": cat})

    def ask(self, destination: str, port, *words: str) -> bytes:
        assert destination == f"airflow@{M2}" and words == ("release",)
        self._answers()
        text_hash = hashlib.sha256(self.peer["text"].encode()).hexdigest()
        upgrading = f"upgrading {self.peer['upgrading']}\n" if self.peer["upgrading"] else ""
        return f"{REVISION}\n{text_hash}\n{upgrading}".encode()

    def run(self, argv, what: str, ok_codes=(0,)) -> Completed:
        assert list(argv[-3:]) == [f"airflow@{M2}", "cat", CLUSTER_FILE]
        self._answers()
        if not self.peer["cat"]:
            raise OperationError(f"reading airflow@{M2}:{CLUSTER_FILE}: Connection reset by peer")
        return Completed(tuple(argv), 0, self.peer["text"].encode(), b"")

    def _answers(self) -> None:
        if not self.peer["up"]:
            raise OperationError(f"ssh: connect to host {M2} port 22: No route to host")


class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def peer_api():
    """m2's API server, answering its health route."""
    server = http.server.HTTPServer((M2, 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def master(tmp_path, run_cli, peer_api) -> Target:
    """m1, one of two masters, on Airflow 3.2.2, rendered under tmp_path/root."""
    root = tmp_path / "root"
    (root / "etc/airflow-node").mkdir(parents=True)
    lock = find_lock("3.2.2", "3.11")
    cluster = make_cluster("3.2", master_host=M1, airflow_packages=lock.package_hash, web_port=peer_api,
                           **TWO_MASTERS)  # fmt: skip
    (root / "etc/airflow-node/cluster.toml").write_text(dump_cluster(cluster))
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.2.2", "--init-system",
                     "systemd", "--node-name", "m1", "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    return Target.at(str(root))


def own_text(target: Target) -> str:
    return target.path(CLUSTER_FILE).read_text()


def upgraded_text(target: Target, version: str = "3.3.2") -> str:
    """m2's cluster file once its upgrade is done: the new Airflow's line and lock, the serial raised."""
    cluster = read_cluster(target.path(CLUSTER_FILE))
    lock = find_lock(version, "3.11")
    return dump_cluster(dataclasses.replace(cluster, airflow_version=version.rsplit(".", 1)[0],
                                            airflow_packages=lock.package_hash, serial=cluster.serial + 1))  # fmt: skip


def listed(notes) -> str:
    return "\n".join(notes)


def test_while_a_peer_upgrades_this_masters_airflow_stays_stopped_then_follows_it(master):
    before = own_text(master)
    upgrading = PeerGate(before, upgrading="3.3.2")

    held = converge_master(master, upgrading)
    said = listed(held.notes)
    assert f"{M2} upgrades the cluster to Airflow 3.3.2" in said
    stop = next(line for line in said.splitlines() if "systemctl stop" in line)
    assert "airflow-scheduler.service" in stop and "airflow-api-server.service" in stop
    assert "airflow-dag-follower" not in stop  # the follower goes on following
    assert master.path(HELD_FILE).read_text().strip() == M2
    assert not converge_master(master, upgrading).notes  # said once; stopped again each round, quietly

    for silent in (PeerGate(upgraded_text(master), up=False), PeerGate(upgraded_text(master), cat=False)):
        said = listed(converge_master(master, silent).notes)  # the second: its file could not be read
        assert f"stays stopped: {M2}, whose upgrade stopped it, does not answer" in said
        assert "systemctl stop" in said or "not run under --root" in said  # stopped again: a reboot starts it
        assert own_text(master) == before and master.path(HELD_FILE).exists()

    done = converge_master(master, PeerGate(upgraded_text(master)))
    said = listed(done.notes)
    assert "the master moved to Airflow 3.3.2" in said and "systemctl start" in said, said
    assert done.changed and read_cluster(master.path(CLUSTER_FILE)).airflow_version == "3.3"
    assert 'airflow_version = "3.3.2"' in master.path(NODE_FILE).read_text()
    assert not master.path(HELD_FILE).exists()


def test_after_an_upgrade_that_rolled_back_this_master_starts_its_airflow_again(master):
    before = own_text(master)
    converge_master(master, PeerGate(before, upgrading="3.3.2"))
    back = converge_master(master, PeerGate(before))
    assert "systemctl start" in listed(back.notes) and not back.changed
    assert 'airflow_version = "3.2.2"' in master.path(NODE_FILE).read_text()
    assert not master.path(HELD_FILE).exists()


def test_a_master_down_during_the_upgrade_follows_when_it_is_back(master):
    back = converge_master(master, PeerGate(upgraded_text(master)))
    assert "the master moved to Airflow 3.3.2" in listed(back.notes)
    assert 'airflow_version = "3.3.2"' in master.path(NODE_FILE).read_text()


def test_the_upgrade_stops_the_other_masters_before_the_drain_and_waits_for_them_last(master):
    plan = plan_upgrade(master, "3.3.2", master.root / "backups")
    names = [step.name for step in upgrade_steps(plan)]
    assert names.index(STOP_MASTERS) < names.index("drain") and names[-1] == "the other masters follow", names
    one = dataclasses.replace(plan, ctx=dataclasses.replace(plan.ctx, cluster=make_cluster("3.2")))
    assert not {STOP_MASTERS, "the other masters follow"} & {step.name for step in upgrade_steps(one)}


def test_the_upgrade_refuses_before_the_drain_where_pg_dump_is_missing(master, tmp_path, monkeypatch):
    plan = plan_upgrade(master, "3.3.2", master.root / "backups")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"^upgrade: pg_dump, pg_restore, psql not installed .*nothing was changed$"):
        check_database(plan)


def test_start_by_hand_goes_on_without_the_master_that_held_this_one(master, run_cli):
    converge_master(master, PeerGate(own_text(master), upgrading="3.3.2"))
    assert run_cli("start", "--root", master.root).code == 0
    assert not master.path(HELD_FILE).exists()
    quiet = converge_master(master, PeerGate(own_text(master), up=False))  # no longer held: no stop
    assert "stays stopped" not in listed(quiet.notes)


def test_while_its_own_upgrade_runs_a_master_is_not_held_by_another_masters(master):
    master.path(UPGRADE_MARKER).write_bytes(upgrade_marker("3.3.2"))
    assert upgrade_in_progress(master.root) == "3.3.2"
    result = converge_master(master, PeerGate(own_text(master), upgrading="3.3.2"))
    assert not master.path(HELD_FILE).exists() and "upgrades the cluster" not in listed(result.notes)


@pytest.mark.parametrize("text", ["3.3.2\n", "3.3.2 1 2 3\n", "3.3.2 x 1\n", "3.3.2 999999999 1\n", ""])
def test_a_mark_whose_upgrade_is_gone_holds_nobody(master, text):
    master.path(UPGRADE_MARKER).write_text(text)
    assert upgrade_in_progress(master.root) == ""
