"""Real servers for the health integration tests and benchmark, on free ports in temp dirs, stopped by PID.

Plain classes, so benchmarks/ can use them too; each test module wraps them in its own fixtures.
(Not a conftest.py: a second `conftest` module would shadow tests/conftest.py for `from conftest import`.)
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from conftest import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Passwords with the characters that break URLs and config formats; URL-quoted wherever they go in a URL.
REDIS_PASSWORD = "r3d%is@p:ss"
DB_PASSWORD = "db%pw@x:y/z"
FLOWER_PASSWORD = "flower-pass-0123456789_="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_pid(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process we started, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def broker_url(port: int, password: str | None = None, db: int = 0, host: str = "127.0.0.1") -> str:
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


class RedisServer:
    """A private redis-server on a free port, optionally with requirepass."""

    def __init__(self, workdir: Path, password: str | None = None):
        self.port = free_port()
        self.password = password
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        argv += ["--save", "", "--appendonly", "no", "--databases", "16", "--daemonize", "no"]
        if password:
            argv += ["--requirepass", password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port), 10, f"redis-server on port {self.port}")

    def url(self, password: str | None = None, db: int = 0) -> str:
        return broker_url(self.port, self.password if password is None else password, db)

    def stop(self) -> None:
        stop_pid(self.process)


class PostgresServer:
    """A private PostgreSQL 15 cluster (initdb as the postgres OS user), scram-sha-256 on 127.0.0.1."""

    def __init__(self, user: str = "airflow", password: str = DB_PASSWORD, database: str = "airflow"):
        self.dir = Path(tempfile.mkdtemp(prefix="health-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.user, self.password, self.database = user, password, database
        pwfile = self.dir / "pw"
        pwfile.write_text("postgres-superuser\n")
        shutil.chown(pwfile, "postgres", "postgres")
        as_postgres = dict(user="postgres", group="postgres", extra_groups=[], check=True, capture_output=True)
        subprocess.run(
            [PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile, "--no-sync",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"],
            **as_postgres,
        )  # fmt: skip
        self.process: subprocess.Popen | None = None
        try:
            self.start()
            self.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password.replace(chr(39), chr(39) * 2)}'")
            self.psql(f"CREATE DATABASE {database} OWNER {user}")  # not in the same transaction
        except BaseException:
            self.remove()
            raise

    def start(self) -> None:
        self.process = subprocess.Popen(
            [PG_BIN / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=16MB"],
            user="postgres", group="postgres", extra_groups=[],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: self._ready(), 30, f"postgres on port {self.port}")

    def _ready(self) -> bool:
        result = subprocess.run([PG_BIN / "pg_isready", "-h", str(self.dir), "-p", str(self.port), "-q"], check=False)
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [PG_BIN.parent / "bin" / "psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", database,
             "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            user="postgres", group="postgres", extra_groups=[], check=True, capture_output=True, text=True,
        )  # fmt: skip
        return result.stdout

    def url(self, password: str | None = None, database: str | None = None) -> str:
        password = self.password if password is None else password
        return f"postgresql://{self.user}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database or self.database}"

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process, timeout=30)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


CELERY_APP = """\
import os
from celery import Celery

app = Celery("healthtest", broker=os.environ["HEALTHTEST_BROKER"])
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True
"""


class CeleryProcesses:
    """A tiny Celery app in a temp dir, with flower (basic auth from FLOWER_BASIC_AUTH) and workers."""

    def __init__(self, workdir: Path, broker: str, user: str = "admin", password: str = FLOWER_PASSWORD):
        self.workdir = workdir
        (workdir / "healthtest_app.py").write_text(CELERY_APP)
        self.env = {
            **os.environ,
            "HEALTHTEST_BROKER": broker,
            "PYTHONPATH": str(workdir),
            "C_FORCE_ROOT": "1",
        }
        self.port = free_port()
        self.user, self.password = user, password
        self.workers: dict[str, subprocess.Popen] = {}
        env = {**self.env, "FLOWER_BASIC_AUTH": f"{user}:{password}"}  # never in argv (ps shows argv)
        self.flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "healthtest_app", "flower", f"--port={self.port}",
             "--address=127.0.0.1"],
            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "flower.log").open("w"),
        )  # fmt: skip
        wait_for(lambda: self._get("/healthcheck") == (200, b"OK"), 30, "flower /healthcheck")

    def _get(self, path: str, auth: bool = False) -> tuple[int, bytes] | None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            import base64

            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, response.read()
        except OSError:
            return None

    def worker_states(self) -> dict[str, bool]:
        answer = self._get("/api/workers?status=true", auth=True)
        return json.loads(answer[1]) if answer and answer[0] == 200 else {}

    def start_worker(self, name: str) -> None:
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "healthtest_app", "worker", "-n", name, "--pool=solo",
             "--without-mingle", "-c", "1", "--loglevel=WARNING"],
            cwd=self.workdir, env=self.env, stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"worker-{name}.log").open("w"),
        )  # fmt: skip
        wait_for(lambda: self.worker_states().get(name), 60, f"flower to see {name} online")

    def stop(self) -> None:
        for process in self.workers.values():
            stop_pid(process, timeout=20)
        stop_pid(self.flower)


class StubHttpServer:
    """A real HTTP server on a free loopback port answering fixed (status, JSON body) per path."""

    def __init__(self, routes: dict[str, tuple[int, object]]):
        self.routes = dict(routes)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                status, body = owner.routes.get(self.path.split("?")[0], (404, {"detail": "Not Found"}))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """Accepts TCP connections and never answers: connected, but the protocol exchange hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def stop(self) -> None:
        self.sock.close()


class Blackhole:
    """A network namespace where BLACKHOLE_IP exists on the link but never answers (SYNs vanish)."""

    ADDRESS = "10.231.9.1"
    BLACKHOLE_IP = "10.231.9.2"

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and shutil.which("ip") is not None

    def __init__(self):
        self.name = f"ahb-{uuid.uuid4().hex[:8]}"
        self._ip("netns", "add", self.name)
        try:
            for argv in (
                ["link", "set", "lo", "up"],
                ["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"],
                ["link", "set", "bh0", "up"],
                ["link", "set", "bh1", "up"],
                ["addr", "add", f"{self.ADDRESS}/24", "dev", "bh0"],
                ["neigh", "add", self.BLACKHOLE_IP, "lladdr", "02:00:00:00:00:99", "dev", "bh0", "nud", "permanent"],
            ):
                self._ip("-n", self.name, *argv)
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def run(self, argv: list[str], timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


def render_node(
    root: Path,
    role: str,
    *,
    broker: str,
    db: str,
    version: str = "3.3.2",
    master_host: str = "127.0.0.1",
    node_name: str = "n1",
    flower_password: str | None = None,
    **cluster_overrides: object,
) -> Path:
    """Render a node with `airflow-node init` under root, then set cluster values (ports) directly.

    Return root. Workers get the master's cluster file through --config, as in real life.
    """
    from airflow_nodes.cli import main
    from airflow_nodes.cluster import dump_cluster, read_cluster

    cluster_path = root / "etc/airflow-node/cluster.toml"
    common = ["--root", str(root), "--airflow-version", version, "--node-name", node_name,
              "--init-system", "supervisor", "--airflow-node-bin", "/usr/local/bin/airflow-node",
              "--supervisord-conf", str(root / "no-supervisord/supervisord.conf")]  # fmt: skip
    master_root = root if role == "master" else root.parent / f"{root.name}-master"
    code = main(["init", "--role", "master", "--master-host", master_host, "--broker-url", broker, "--db-url", db,
                 *[a if a != str(root) else str(master_root) for a in common]])  # fmt: skip
    assert code == 0, "init --role master failed"
    master_cluster = master_root / "etc/airflow-node/cluster.toml"
    config = read_cluster(master_cluster)
    if flower_password:
        cluster_overrides["secrets"] = replace(config.secrets, flower_password=flower_password)
    master_cluster.write_text(dump_cluster(replace(config, **cluster_overrides)))
    if role == "worker":
        assert main(["init", "--role", "worker", "--config", str(master_cluster), *common]) == 0
        assert cluster_path.exists()
    return root


def health_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "airflow_nodes", "health", "--root", str(root), *args]


def running_postgres():
    """A private PostgreSQL cluster for a test module's tests:
    `postgres = pytest.fixture(scope="module")(running_postgres)`."""
    server = PostgresServer()
    yield server
    server.remove()
