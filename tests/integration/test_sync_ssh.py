"""Sync over a real sshd: DAGs by rsync over SSH, the cluster file by `ssh cat`, restarts under supervisord."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from sync_fixtures import (
    NO_HOST_CHECK,
    Sshd,
    free_port,
    published_revision,
    render_node,
    sync_now,
    wait_for,
    write_revision,
)

from airflow_nodes.cluster import dump_cluster
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import CLUSTER_FILE

from conftest import make_cluster

pytestmark = pytest.mark.integration
PROGRAM = "airflow-worker:airflow-worker"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def over_ssh(sshd: Sshd, root: Path, **options):
    return sync_now(root, ssh_key=str(sshd.client_key), ssh_extra=NO_HOST_CHECK, **options)


@pytest.fixture
def ssh_node(tmp_path, run_cli, sshd):
    source = tmp_path / "master-dags"
    write_revision(source, 1)
    return render_node(tmp_path, run_cli, sshd.source(source)), source


def test_dags_arrive_over_ssh_and_an_unchanged_source_makes_no_release(ssh_node, sshd):
    root, source = ssh_node
    assert over_ssh(sshd, root).status == "published" and published_revision(root) == 1
    assert over_ssh(sshd, root).status == "unchanged"
    write_revision(source, 2)
    assert over_ssh(sshd, root).status == "published" and published_revision(root) == 2


def test_unreachable_master_leaves_the_tree_and_says_why(ssh_node, sshd, run_cli, tmp_path, monkeypatch):
    root, source = ssh_node
    over_ssh(sshd, root)
    cluster = (root / CLUSTER_FILE.lstrip("/")).read_text()
    closed = f"ssh://root@127.0.0.1:{free_port()}{source}"
    (root / CLUSTER_FILE.lstrip("/")).write_text(cluster.replace(sshd.source(source), closed))
    monkeypatch.setenv("AIRFLOW_NODE_SSH_OPTS", " ".join(NO_HOST_CHECK))
    result = run_cli("sync", "--root", root, "--dags-only", "--ssh-key", sshd.client_key)
    assert result.code == 1 and "Connection refused" in result.err and "published DAGs are unchanged" in result.err
    assert published_revision(root) == 1


def test_a_key_the_master_does_not_accept_is_a_clear_failure(ssh_node, sshd):
    root, source = ssh_node
    over_ssh(sshd, root)
    write_revision(source, 2)
    with pytest.raises(OperationError, match="Permission denied"):
        sync_now(root, ssh_key=str(sshd.other_key), ssh_extra=NO_HOST_CHECK)
    assert published_revision(root) == 1


class Supervisor:
    """A real supervisord whose include is the conf.d file init rendered under the root."""

    def __init__(self, root: Path):
        self.conf = root / "etc/supervisor/supervisord.conf"
        include = root / str(self.conf.parent / "conf.d").lstrip("/")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"[unix_http_server]\nfile={root}/supervisor.sock\n\n"
            f"[supervisord]\npidfile={root}/supervisord.pid\nlogfile={root}/supervisord.log\nnodaemon=true\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{root}/supervisor.sock\n\n[include]\nfiles = {include}/*.conf\n"
        )
        self.process = subprocess.Popen([shutil.which("supervisord"), "-c", str(self.conf)])

    def pid(self, program: str) -> int | None:
        out = subprocess.run(["supervisorctl", "-c", str(self.conf), "status", program], capture_output=True, text=True)
        parts = out.stdout.split()
        return int(parts[3].rstrip(",")) if len(parts) > 3 and parts[1] == "RUNNING" else None

    def run_listed(self, commands: tuple[str, ...]) -> None:
        """Run the restarts sync listed (under --root apply lists them instead of running them)."""
        for command in commands:
            subprocess.run(command.split(), check=True, capture_output=True)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def test_a_changed_cluster_file_rerenders_and_restarts_only_what_changed(tmp_path, run_cli, sshd, monkeypatch):
    home = tmp_path / "home"
    markers = tmp_path / "markers"
    for directory in (home, markers, Path("/var/log/airflow-node")):
        directory.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "master-dags"
    write_revision(source, 1)
    root = render_node(tmp_path, run_cli, sshd.source(source), airflow_home=str(home))
    master_root = tmp_path / "master"
    master_cluster = master_root / CLUSTER_FILE.lstrip("/")
    master_cluster.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "cluster.toml", master_cluster)
    monkeypatch.setenv("STAND_IN_MARKERS", str(markers))  # inherited by supervisord and the stand-in worker
    supervisor = Supervisor(root)
    try:
        first = wait_for(lambda: supervisor.pid(PROGRAM), 30, "the worker RUNNING")

        def run_sync():
            return over_ssh(sshd, root, dags_only=False, master_root=str(master_root))

        assert run_sync().config.changed is False  # same file: no restart
        assert supervisor.pid(PROGRAM) == first

        cluster = dict(airflow_user="root", dags_source=sshd.source(source), airflow_home=str(home))
        master_cluster.write_text(dump_cluster(make_cluster("3.3", sync_interval_minutes=7, **cluster)))
        result = run_sync()  # only the cron entry changes: no daemon restarts
        assert result.config.changed and any(p.endswith("cron.d/airflow-node") for p in result.config.written)
        assert result.config.commands == ()

        master_cluster.write_text(dump_cluster(make_cluster("3.3", sync_interval_minutes=7, visibility_timeout=7200,
                                                            **cluster)))  # fmt: skip
        result = run_sync()
        assert any(p.endswith("airflow.cfg") for p in result.config.written)
        # supervisor's own per-program diff: the worker's definition holds the config's digest, so it changed
        assert result.config.commands and all(" update airflow-worker " in c for c in result.config.commands)
        supervisor.run_listed(result.config.commands)
        second = wait_for(lambda: (pid := supervisor.pid(PROGRAM)) and pid != first and pid, 30, "a restarted worker")
        assert (markers / "task-finished").read_text() == "ok\n"  # the running task finished first

        assert run_sync().config.changed is False
        assert supervisor.pid(PROGRAM) == second
        assert (root / CLUSTER_FILE.lstrip("/")).read_bytes() == master_cluster.read_bytes()

        # the master's airflow account serves this file: it may not choose the account or the home root
        # hands out on the worker, nor a system directory as a home
        kept = master_cluster.read_bytes()
        hostile = [(dict(cluster, airflow_home=str(tmp_path / "elsewhere")), "cluster.airflow_home"),
                   (dict(cluster, airflow_user="nobody"), "cluster.airflow_user"),
                   (dict(cluster, airflow_home="/root/.ssh"), "cluster.airflow_home")]  # fmt: skip
        for values, key in hostile:
            master_cluster.write_text(dump_cluster(make_cluster("3.3", sync_interval_minutes=7, **values)))
            with pytest.raises(UserError, match=key):
                run_sync()
            assert (root / CLUSTER_FILE.lstrip("/")).read_bytes() == kept
            assert supervisor.pid(PROGRAM) == second
    finally:
        supervisor.stop()


def test_a_sync_sshd_turned_away_tries_again_and_publishes(tmp_path, run_cli):
    """sshd drops unauthenticated connections past MaxStartups (10 at once by default, 1 here): a worker
    of a herd tries again after a random, growing delay instead of failing until its next period."""
    server = Sshd(tmp_path / "sshd", extra_config="MaxStartups 1\n")
    try:
        source = tmp_path / "master-dags"
        write_revision(source, 1)
        root = render_node(tmp_path, run_cli, server.source(source))
        held = socket.create_connection(("127.0.0.1", server.port))  # another worker, still authenticating
        assert held.recv(64).startswith(b"SSH-")  # sshd counts it now: the next connection is dropped
        threading.Timer(1.0, held.close).start()
        assert over_ssh(server, root).status == "published" and published_revision(root) == 1
        assert b"MaxStartups" in (tmp_path / "sshd" / "sshd.log").read_bytes()  # it was turned away first
    finally:
        server.stop()
