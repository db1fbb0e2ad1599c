"""Shared helpers of the sync integration tests: a rendered node, DAG trees with a revision id, sshd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from airflow_nodes.cluster import dump_cluster
from airflow_nodes.sync import SyncRequest, sync
from airflow_nodes.syncing.checks import Guards
from airflow_nodes.target import Target

from conftest import make_cluster, wait_for

STAND_IN = Path(__file__).parent.parent / "fixtures" / "stand-in-airflow"
SSHD = "/usr/sbin/sshd"
NO_HOST_CHECK = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR")


# supervisorctl and supervisord come from airflow-node's own environment, as on a real node
TOOL_BIN = Path(sys.executable).parent


def render_node(
    tmp_path: Path, run_cli, dags_source: str, role: str = "worker", init_system: str = "supervisor", **cluster
) -> Path:
    """Render a node under tmp_path/root with `airflow-node init`; return the root."""
    root = tmp_path / "root"
    values = dict(airflow_user="root", dags_source=dags_source)
    values.update(cluster)
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(make_cluster("3.3", **values)))
    args = ["init", "--role", role, "--root", root, "--airflow-version", "3.3.2", "--init-system", init_system,
            "--airflow-bin", STAND_IN, "--node-name", "n1", "--airflow-node-bin", TOOL_BIN / "airflow-node",
            "--supervisord-conf", f"{root}/etc/supervisor/supervisord.conf"]  # fmt: skip
    if role == "worker":
        args += ["--config", cluster_file]
    else:
        (root / "etc/airflow-node").mkdir(parents=True)
        shutil.copy(cluster_file, root / "etc/airflow-node/cluster.toml")
        args += ["--master-host", "10.20.0.1"]
    result = run_cli(*args)
    assert result.code == 0, result.err
    return root


def dags_folder(root: Path) -> Path:
    return root / "opt/airflow/dags"


def write_revision(source: Path, revision: int, files: int = 20, dirs: int = 3) -> None:
    """Make source hold exactly revision `revision`: REVISION plus files whose content names it."""
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    (source / "REVISION").write_text(f"{revision}\n")
    for index in range(files):
        directory = source / f"team{index % dirs}"
        directory.mkdir(exist_ok=True)
        (directory / f"dag_{index}.py").write_text(f"REVISION = {revision}\nDAG_ID = 'dag_{index}'\n")
    # rsync's quick check compares size and mtime (seconds): give every revision its own mtime
    stamp = 1_700_000_000 + revision * 10
    for path in source.rglob("*"):
        os.utime(path, (stamp, stamp))


def read_published_tree(root: Path) -> tuple[int, int]:
    """Resolve the DAG folder once (as a pinned reader does), check the whole tree is one revision.

    Return (revision, number of .py files).
    """
    real = Path(os.path.realpath(dags_folder(root)))
    revision = int((real / "REVISION").read_text())
    count = 0
    for path in real.rglob("*.py"):
        assert path.read_text().startswith(f"REVISION = {revision}\n"), f"{path} is not revision {revision}"
        count += 1
    return revision, count


def published_revision(root: Path) -> int:
    return read_published_tree(root)[0]


def sync_now(root: Path, **options) -> object:
    guards = Guards(**{k: options.pop(k) for k in ("max_delete_ratio", "validate", "force") if k in options})
    options.setdefault("dags_only", True)
    return sync(SyncRequest(target=Target.at(root), guards=guards, **options))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sshd:
    """A real sshd on a loopback port, with its own host key and one authorized client key (root)."""

    def __init__(self, directory: Path, extra_config: str = ""):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.host_key = directory / "host_key"
        self.client_key = directory / "client_key"
        self.other_key = directory / "unauthorized_key"
        for key in (self.host_key, self.client_key, self.other_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = directory / "authorized_keys"
        shutil.copy(f"{self.client_key}.pub", authorized)
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {directory}/sshd.pid\n"
            f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nKbdInteractiveAuthentication no\n" + extra_config
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.log = open(directory / "sshd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=self.log)
        wait_for(self._accepts, 10, f"sshd on port {self.port}")

    def _accepts(self) -> bool:
        assert self.process.poll() is None, (self.directory / "sshd.log").read_text()
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def source(self, path: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)
        self.log.close()
