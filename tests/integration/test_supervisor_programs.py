"""The generated supervisor config, loaded by a real supervisord with a stand-in airflow."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_nodes import execute
from airflow_nodes.apply import apply
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.defaults import SUPERVISORD_CONF
from airflow_nodes.init import InitRequest, plan_init
from airflow_nodes.target import Target

from conftest import make_cluster, wait_for

pytestmark = pytest.mark.integration
STAND_IN = Path(__file__).parent.parent / "fixtures" / "stand-in-airflow"


class Supervisor:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "etc/supervisor/supervisord.conf"
        self.conf.write_text(
            f"[unix_http_server]\nfile={root}/supervisor.sock\n\n"
            f"[supervisord]\npidfile={root}/supervisord.pid\nlogfile={root}/supervisord.log\nnodaemon=true\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{root}/supervisor.sock\n\n"
            "[include]\nfiles = conf.d/*.conf\n"
        )
        supervisord = Path(sys.executable).parent / "supervisord"
        self.process = subprocess.Popen([shutil.which("supervisord") or str(supervisord), "-c", str(self.conf)])

    def ctl(self, *args: str) -> str:
        result = subprocess.run(["supervisorctl", "-c", str(self.conf), *args], capture_output=True, text=True)
        return result.stdout

    def states(self) -> dict[str, tuple[str, str]]:
        """program -> (state, pid or exit info)"""
        result = {}
        for line in self.ctl("status").splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                result[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
        return result

    def pid(self, program: str) -> int | None:
        state, info = self.states().get(program, ("", ""))
        if state == "RUNNING" and info.startswith("pid "):
            return int(info.split()[1].rstrip(","))
        return None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


@pytest.fixture
def node(tmp_path, run_cli):
    """A node rendered with the stand-in airflow, airflow_home in tmp, run as the current user."""

    def render(role: str, version: str = "3.3.2", airflow_node_bin: Path | None = None) -> Supervisor:
        root = tmp_path / "root"
        home = tmp_path / "home"
        markers = tmp_path / "markers"
        for directory in (home, markers, Path("/var/log/airflow-node")):
            directory.mkdir(parents=True, exist_ok=True)
        cluster = make_cluster(version.rsplit(".", 1)[0], airflow_home=str(home), airflow_user="root")
        cluster_file = tmp_path / "cluster.toml"
        cluster_file.write_text(dump_cluster(cluster))
        args = ["init", "--role", role, "--root", root, "--airflow-version", version, "--init-system",
                "supervisor", "--airflow-bin", STAND_IN, "--node-name", "n1", "--supervisord-conf", SUPERVISORD_CONF,
                "--airflow-node-bin", airflow_node_bin or Path(sys.executable).parent / "airflow-node"]  # fmt: skip
        if role == "worker":
            args += ["--config", cluster_file, "-c", "2", "--stop-timeout", "30"]
        else:
            (root / "etc/airflow-node").mkdir(parents=True)
            shutil.copy(cluster_file, root / "etc/airflow-node/cluster.toml")
        result = run_cli(*args)
        assert result.code == 0, result.err
        os.environ["STAND_IN_MARKERS"] = str(markers)  # inherited by supervisord and its programs
        supervisor = Supervisor(root)
        nodes.append(supervisor)
        return supervisor

    nodes: list[Supervisor] = []
    yield render
    for supervisor in nodes:
        supervisor.stop()
    os.environ.pop("STAND_IN_MARKERS", None)


def test_every_master_program_runs_and_the_migration_exits(node):
    supervisor = node("master")
    expected = {f"airflow-{name}" for name in ("api-server", "scheduler", "dag-processor", "triggerer", "flower")}

    def all_running():
        states = supervisor.states()
        running = {name for name, (state, _) in states.items() if state == "RUNNING"}
        return expected <= running and states.get("airflow-db-migrate", ("",))[0] == "EXITED"

    wait_for(all_running, 40, "every master program RUNNING and db-migrate EXITED")


def test_killed_worker_is_restarted_and_stop_lets_the_running_task_finish(node, tmp_path):
    supervisor = node("worker")
    program = "airflow-worker"  # supervisorctl shows a group whose one program has its name as "name"
    first = wait_for(lambda: supervisor.pid(program), 30, "the worker RUNNING")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (pid := supervisor.pid(program)) and pid != first and pid, 30, "a restarted worker")
    assert second != first

    supervisor.ctl("stop", "airflow-worker:*")  # SIGTERM to the worker's main process only
    assert (tmp_path / "markers/task-finished").read_text() == "ok\n"
    assert supervisor.states()[program][0] == "STOPPED"


def converge_for_real(supervisor: Supervisor, request: InitRequest) -> list[tuple[str, ...]]:
    """Re-run init on the node as on a real host: supervisorctl runs against this test's supervisord
    (the node's supervisord.conf lives under the test root); systemctl, with no systemd here, is recorded."""
    recorded = []

    def runner(argv):
        recorded.append(tuple(argv))
        if Path(argv[0]).name == "supervisorctl":
            execute.run([str(supervisor.conf) if arg == SUPERVISORD_CONF else arg for arg in argv])

    apply(plan_init(request, Target(supervisor.root, real_system=True, privileged=False, runner=runner)).preview)
    return recorded


def test_a_program_the_new_plan_drops_is_gone_from_supervisor_after_apply(node):
    supervisor = node("master", "2.11.2")
    wait_for(lambda: supervisor.pid("airflow-webserver"), 40, "the 2.x webserver RUNNING")

    converge_for_real(supervisor, InitRequest(role="master", airflow_version="3.3.2"))

    def upgraded():
        states = supervisor.states()
        running = {name for name, (state, _) in states.items() if state == "RUNNING"}
        wanted = {"airflow-api-server", "airflow-dag-processor"}
        return "airflow-webserver" not in states and wanted <= running and states

    states = wait_for(upgraded, 40, "api-server and dag-processor RUNNING, no webserver program")
    assert not [name for name in states if "webserver" in name]


def test_a_worker_moved_to_systemd_leaves_no_supervisor_program_behind(node):
    supervisor = node("worker")
    wait_for(lambda: supervisor.pid("airflow-worker"), 30, "the worker RUNNING under supervisor")

    recorded = converge_for_real(supervisor, InitRequest(role="worker", airflow_version="3.3.2", init_system="systemd"))

    assert supervisor.states() == {}  # the programs were stopped and removed before the conf file went
    assert not (supervisor.root / "etc/supervisor/conf.d/airflow-node.conf").exists()
    enable = ("systemctl", "enable", "airflow-worker.target", "airflow-worker.service", "airflow-dag-follower.service")
    assert enable in recorded


def test_a_change_to_one_program_restarts_that_program_only(node, tmp_path):
    # the follower is airflow-node's own daemon: a stand-in here too, beside the real supervisorctl
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "airflow-node").symlink_to(STAND_IN)
    (tools / "supervisorctl").symlink_to(shutil.which("supervisorctl") or Path(sys.executable).parent / "supervisorctl")
    supervisor = node("worker", airflow_node_bin=tools / "airflow-node")
    same = InitRequest(role="worker", airflow_version="3.3.2", config_file=tmp_path / "cluster.toml")
    converge_for_real(supervisor, same)  # as on a real host: its advertised address joins the environment
    programs = {"airflow-worker", "airflow-dag-follower"}
    first = wait_for(lambda: (pids := running_pids(supervisor)).keys() >= programs and pids, 30, "both RUNNING")

    assert not [argv for argv in converge_for_real(supervisor, same) if "update" in argv]  # nothing changed
    assert running_pids(supervisor) == first  # nothing changed: nothing restarted

    converge_for_real(supervisor, dataclasses.replace(same, concurrency=3))
    second = wait_for(lambda: (pids := running_pids(supervisor)).get("airflow-worker", first["airflow-worker"])
                      != first["airflow-worker"] and pids, 30, "the worker restarted with -c 3")  # fmt: skip
    assert second["airflow-dag-follower"] == first["airflow-dag-follower"]  # its program did not change

    # airflow.cfg changes (the cluster's visibility timeout): the worker reads it, the follower reads it anew
    cluster = (tmp_path / "cluster.toml").read_text()
    (tmp_path / "cluster.toml").write_text(cluster.replace("visibility_timeout = 86400", "visibility_timeout = 7200"))
    assert (tmp_path / "cluster.toml").read_text() != cluster
    converge_for_real(supervisor, same)
    third = wait_for(lambda: (pids := running_pids(supervisor)).get("airflow-worker", second["airflow-worker"])
                     != second["airflow-worker"] and pids, 30, "the worker restarted on the new config")  # fmt: skip
    assert third["airflow-dag-follower"] == first["airflow-dag-follower"]


def running_pids(supervisor: Supervisor) -> dict[str, int]:
    return {name: int(info.split()[1].rstrip(",")) for name, (state, info) in supervisor.states().items()
            if state == "RUNNING" and info.startswith("pid ")}  # fmt: skip
