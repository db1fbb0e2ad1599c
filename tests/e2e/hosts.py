"""Hosts for the end-to-end test, all on this machine: network namespaces joined by a bridge, hosts
booted under a real systemd (systemd-nspawn containers of Debian 12 and 13), workers as processes with
their own network, mount and UTS namespaces (own /etc, /opt, /var/lib, /var/log, /run and host name),
and servers.

Everything is started by PID or namespace and removed by close(), also when the test fails.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from airflow_nodes.install import find_lock

import conftest

# polling here spawns processes (nsenter, API calls): half a second between looks is plenty
wait_for = functools.partial(conftest.wait_for, interval=0.5)

PREFIX = "afe2e"
SUBNET = "10.231.7"
CACHE = Path(os.environ.get("AIRFLOW_NODES_TEST_CACHE", Path.home() / ".cache" / "airflow-nodes-tests"))
# what each container needs: systemd, cron, python3 with venv (the README's install path), ssh, rsync
ROOTFS_PACKAGES = {
    "bookworm": "systemd,systemd-sysv,dbus,python3,python3-venv,cron,rsync,procps,libpam-systemd,openssh-server,"
    "openssh-client,iproute2,passwd,postgresql-client",  # pg_dump for `airflow-node upgrade`
    "trixie": "systemd,systemd-sysv,dbus,python3,python3-venv,cron,rsync,procps,libpam-systemd,openssh-client,"
    "iproute2,passwd",
    # a fresh host as its package manager leaves it with Redis and PostgreSQL (the one-host cluster's
    # `init --with-redis --with-postgres` finds them installed: the containers have no network)
    "bookworm-servers": "systemd,systemd-sysv,dbus,python3,python3-venv,cron,rsync,procps,libpam-systemd,"
    "openssh-server,openssh-client,iproute2,passwd,hostname,redis-server,postgresql",
    # several masters: keepalived as the package manager leaves it (init sets it up)
    "bookworm-masters": "systemd,systemd-sysv,dbus,python3,python3-venv,cron,rsync,procps,libpam-systemd,"
    "openssh-server,openssh-client,iproute2,passwd,keepalived,postgresql-client",  # pg_dump: the upgrade
}
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def fresh_workdir(tools: Sequence[str], prefix: str) -> Path:
    """Fail the test (naming the script that installs it) when a tool it needs is missing; return a fresh
    work directory the hosts' accounts can enter."""
    import pytest

    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `bash scripts/run-tests` (it installs what e2e needs)")
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    return workdir


def sh(argv: Sequence[object], *, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run a command and return its result (text). Raise with its output if it fails and check is set."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


class Network:
    """A bridge in a namespace of its own; every host namespace has a veth pair into it."""

    def __init__(self) -> None:
        self.switch = f"{PREFIX}-sw"
        self.namespaces: list[str] = []
        self._add_namespace(self.switch)
        sh(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.switch, "link", "set", "br0", "up"])

    def _add_namespace(self, name: str) -> None:
        sh(["ip", "netns", "del", name], check=False)  # left over from a killed run
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    def add_host(self, name: str, address: str) -> str:
        namespace = f"{PREFIX}-{name}"
        self._add_namespace(namespace)
        port, nic = f"p-{name}"[:15], f"eth-{name}"[:15]
        sh(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", nic, "netns", namespace])
        sh(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
        sh(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", nic])
        sh(["ip", "-n", namespace, "link", "set", nic, "up"])
        return namespace

    def close(self) -> None:
        for namespace in reversed(self.namespaces):
            for pid in sh(["ip", "netns", "pids", namespace], check=False).stdout.split():
                _kill(int(pid))
            sh(["ip", "netns", "del", namespace], check=False)


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (never a hard-coded host)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.exists():
            for line in path.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or (words[:1] == ["deb"] and len(words) > 2):
                    return words[1] if words[0] == "URIs:" else words[1]
    raise AssertionError("no Debian mirror in /etc/apt: cannot debootstrap the containers' root file systems")


def cached_rootfs(kind: str) -> Path:
    """A Debian root file system for a container (ROOTFS_PACKAGES: the suite, maybe -what it adds), built
    once (70-100 s) and kept; its name carries a hash of the package list, so a changed list builds a new one."""
    packages, suite = ROOTFS_PACKAGES[kind], kind.partition("-")[0]
    name = f"rootfs-{kind}-{hashlib.sha256(packages.encode()).hexdigest()[:8]}"
    rootfs, done = CACHE / name, CACHE / f"{name}.complete"
    if done.exists():
        return rootfs
    shutil.rmtree(rootfs, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    sh(["debootstrap", "--variant=minbase", f"--include={packages}", suite, rootfs, debian_mirror()], timeout=900)
    done.touch()
    return rootfs


class Container:
    """A host under a real systemd: a booted systemd-nspawn container in the host's network namespace."""

    def __init__(self, rootfs: Path, namespace: str, binds: Sequence[Path], log: Path, hostname: str,
                 capabilities: Sequence[str] = ()):  # fmt: skip
        self.name = hostname
        self.log = open(log, "wb")  # noqa: SIM115 - closed in close()
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--console=passive",
                f"--network-namespace-path=/run/netns/{namespace}", "--volatile=overlay", "-D", str(rootfs),
                f"--hostname={hostname}", f"--machine={PREFIX}-{hostname}",
                *(f"--bind={path}" for path in binds), *(f"--capability={c}" for c in capabilities), "-b"]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        wait_for(self._booted, 60, f"the {hostname} container to boot")

    def init_pid(self) -> int | None:
        for child in sh(["pgrep", "-P", self.process.pid], check=False).stdout.split():
            try:
                comm = Path(f"/proc/{child}/comm").read_text().strip()
            except FileNotFoundError:  # a child of nspawn's that ended since pgrep listed it (while it boots)
                continue
            if comm == "systemd":
                return int(child)
        return None

    def _booted(self) -> bool:
        assert self.process.poll() is None, "systemd-nspawn exited; see the container log"
        pid = self.init_pid()
        if pid is None:
            return False
        state = sh(["nsenter", "-t", pid, "-a", "systemctl", "is-system-running"], check=False).stdout.strip()
        return state in ("running", "degraded")

    def run(self, *argv: object, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        pid = self.init_pid()
        assert pid, f"the {self.name} container is not running"
        return sh(["nsenter", "-t", pid, "-a", *argv], check=check, timeout=timeout, **kwargs)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a clean halt of the container
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


class Worker:
    """A worker host: processes in their own network, mount and UTS namespaces, with private
    /etc (a copy of this machine's), /opt, /usr/local/bin, /var/lib, /var/log and /run, and their own
    host name."""

    PRIVATE = ("etc", "opt", "usr/local/bin", "var/lib", "var/log")

    def __init__(self, name: str, namespace: str, workdir: Path):
        self.name, self.workdir = name, workdir
        for directory in self.PRIVATE:
            (workdir / directory).mkdir(parents=True, exist_ok=True)
        sh(["cp", "-a", "/etc/.", workdir / "etc"])
        mounts = "\n".join(f"mount --bind {workdir / d} /{d}" for d in self.PRIVATE)
        script = f"""set -e
mount --make-rprivate /
hostname {name}
{mounts}
mount -t tmpfs -o mode=0755 tmpfs /run
touch {workdir}/ready
exec sleep infinity
"""
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "unshare", "--mount", "--uts", "--fork", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
        )
        wait_for(lambda: (workdir / "ready").exists() and self.anchor_pid(), 20, f"worker {name} namespaces")

    def anchor_pid(self) -> int | None:
        """The `sleep` that holds the namespaces open (the child unshare forked; `ip netns exec` execs)."""
        for child in sh(["pgrep", "-P", self.process.pid], check=False).stdout.split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "sleep":
                    return int(child)
        return None

    def run(self, *argv: object, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        pid = self.anchor_pid()
        assert pid, f"worker {self.name} is not running"
        return sh(["nsenter", "-t", pid, "-m", "-u", "-n", "--", *argv], check=check, timeout=timeout, **kwargs)

    def popen(self, *argv: object, **kwargs) -> subprocess.Popen:
        pid = self.anchor_pid()
        return subprocess.Popen(["nsenter", "-t", str(pid), "-m", "-u", "-n", "--", *map(str, argv)], **kwargs)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class Redis:
    """redis-server with a password (read from a 0600 config file, never from argv) on the master host."""

    def __init__(self, namespace: str, address: str, password: str, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "redis.conf"
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write(f"bind {address} 127.0.0.1\nport 6379\nrequirepass {password}\nsave \"\"\n"
                       f"appendonly no\ndir {workdir}\nprotected-mode no\n")  # fmt: skip
        self.namespace, self.address = namespace, address
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, "redis-server", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._listening, 15, "redis-server")

    def _listening(self) -> bool:
        probe = f"import socket; socket.create_connection(('{self.address}', 6379), 1)"
        return sh(["ip", "netns", "exec", self.namespace, "python3", "-c", probe], check=False).returncode == 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


class Postgres:
    """A private PostgreSQL 15 cluster on the master host, password (scram) auth on its address."""

    def __init__(self, namespace: str, address: str, password: str, workdir: Path):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(workdir, "postgres", "postgres")
        data = workdir / "data"
        as_postgres = dict(user="postgres", group="postgres", extra_groups=[])
        sh([PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
            "--no-sync", "-E", "UTF8"], **as_postgres)  # fmt: skip
        # a scram hash cannot be computed here without the server, so the password goes in over stdin
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "runuser", "-u", "postgres", "--", PG_BIN / "postgres", "-D", data,
             "-k", workdir, "-c", f"listen_addresses={address},127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: sh([PG_BIN / "pg_isready", "-h", workdir, "-q"], check=False).returncode == 0, 30, "postgres")
        with open(data / "pg_hba.conf", "a") as hba:  # the other hosts of the test network
            hba.write(f"host all all {address.rsplit('.', 1)[0]}.0/24 scram-sha-256\n")
        sh([PG_BIN / "pg_ctl", "reload", "-D", data, "-s"], **as_postgres)
        quoted = password.replace("'", "''")
        sql = f"CREATE ROLE airflow LOGIN PASSWORD '{quoted}';\nCREATE DATABASE airflow OWNER airflow;\n"
        sh([PG_BIN.parent / "bin" / "psql", "-h", workdir, "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q"],
           input=sql, **as_postgres)  # fmt: skip

    def sql(self, text: str) -> str:
        """Run SQL as the superuser over the local socket (what a DBA would do by hand); return what it printed."""
        return sh([PG_BIN / "psql", "-h", self.dir, "-U", "postgres", "-d", "airflow", "-v", "ON_ERROR_STOP=1", "-q"],
                  input=text, user="postgres", group="postgres", extra_groups=[]).stdout  # fmt: skip

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


# -- the tool, and Airflow's wheels, for hosts without network -----------------------------------------

TOOL = "/opt/airflow-node"  # the README's venv for the tool on a PEP 668 host
HOST_ENV = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # not our PIP_*


def airflow_node(host, *args: object, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run airflow-node on a host as a user would: found on PATH, with none of our environment."""
    return host.run("airflow-node", *args, env={**HOST_ENV, **(env or {})}, check=check, timeout=timeout)


DEBIAN_PYTHON = "/usr/bin/python3.11"  # the same interpreter exists inside the Debian 12 containers
REPO = Path(__file__).resolve().parents[2]
# Airflow venvs and wheels kept between runs; outside /root, which the airflow user cannot enter.
VENVS = Path(os.environ.get("AIRFLOW_NODES_E2E_VENVS", "/var/cache/airflow-nodes-e2e"))


def tool_venv(workdir: Path) -> Path:
    """airflow-nodes for this machine's Debian python: it builds the Airflow venvs and wheelhouses the
    hosts install from (they have no network)."""
    venv = workdir / "tool"
    sh([DEBIAN_PYTHON, "-m", "venv", venv])
    # --no-cache: uv would reuse a wheel built from an older state of this work tree
    sh(["uv", "pip", "install", "-q", "--no-cache", "--python", venv / "bin" / "python", REPO], timeout=600)
    return venv


def tool_wheels(workdir: Path, pythons: dict[str, Path | str]) -> Path:
    """Wheels of airflow-nodes and what it needs, for each Python line the hosts run (line -> interpreter):
    what `pip install airflow-nodes` would fetch from PyPI, for hosts without network."""
    wheels = workdir / "wheels"
    # each with the hosts' own Python: Debian 12's 3.11.2 needs a package pyenv's 3.11.7 does not
    for python in sorted(pythons):
        sh([pythons[python], "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", wheels, REPO],
           timeout=600)  # fmt: skip
    return wheels


def install_tool(host, wheels: Path) -> None:
    """The README's install on a PEP 668 host (the system python refuses pip): a venv in /opt, a link
    on PATH; offline here, so pip reads the wheels instead of PyPI."""
    host.run("python3", "-m", "venv", TOOL, env=HOST_ENV)
    host.run(f"{TOOL}/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--find-links",
             wheels, "airflow-nodes", timeout=600, env=HOST_ENV)  # fmt: skip
    host.run("ln", "-sfn", f"{TOOL}/bin/airflow-node", "/usr/local/bin/airflow-node", env=HOST_ENV)


def airflow_venv(tool: Path, version: str) -> Path:
    """The pinned Airflow for this machine's Debian python, kept between runs: the hosts that share this
    machine's /usr (the workers in namespaces) run it."""
    venv = VENVS / f"airflow-{version}" / "venv"
    result = sh([tool / "bin" / "airflow-node", "install-airflow", "--version", version, "--venv", venv,
                 "--python", DEBIAN_PYTHON, "--force"], timeout=1800)  # fmt: skip
    print(result.stdout.splitlines()[-1])
    return venv


def cached_wheelhouse(tool: Path, version: str, python: str) -> Path:
    """`airflow-node wheelhouse` here (with network) for hosts without: a lock's wheels, kept between runs."""
    lock = find_lock(version, python)
    wheelhouse = VENVS / f"wheels-{version}-py{python}-{lock.package_hash[:8]}"
    if not (wheelhouse / ".complete").exists():  # 155 downloads
        sh([tool / "bin" / "airflow-node", "wheelhouse", wheelhouse, "--version", version,
            "--python", conftest.interpreter(python)], timeout=1800)  # fmt: skip
        (wheelhouse / ".complete").touch()
    return wheelhouse


# -- Airflow's REST API, called from inside the master's network namespace -----------------------------

API_CLIENT = r"""
import json, sys, urllib.request
request = json.load(sys.stdin)
req = urllib.request.Request(request["url"], method=request["method"],
                             data=json.dumps(request["body"]).encode() if request["body"] is not None else None)
req.add_header("Content-Type", "application/json")
req.add_header("Accept", "application/json")
if request["authorization"]:
    req.add_header("Authorization", request["authorization"])
try:
    with urllib.request.urlopen(req, timeout=20) as response:
        print(json.dumps({"status": response.status, "body": response.read().decode()}))
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code, "body": error.read().decode()}))
except OSError as error:
    print(json.dumps({"status": 0, "body": str(error)}))
"""


GET_RETRY = 15.0  # seconds: longer than the cluster address takes to move (about 4 s measured)


class AirflowApi:
    """A master's REST API as a user reaches it: through its web port, from inside its network namespace."""

    def __init__(self, namespace: str, address: str, python: Path, airflow3: bool = True, port: int = 8080):
        self.api_namespace, self.api_base, self.api_python = namespace, f"http://{address}:{port}", python
        self.airflow3 = airflow3  # the upgrade scenario moves it, and api_root with it
        self.api_root = "/api/v2" if airflow3 else "/api/v1"
        self.authorization: str | None = None

    def api(self, method: str, path: str, body: object = None, token: bool = True) -> tuple[int, object]:
        """Call the API; return (status, the JSON body, or its text), status 0 when nobody answered. A GET
        nobody answers is tried again for up to GET_RETRY seconds, as a user's client would: with several
        masters, the cluster address may be moving (a POST is not: it may have been carried out)."""
        request = {"url": f"{self.api_base}{path}", "method": method, "body": body,
                   "authorization": self.authorization if token else None}  # fmt: skip
        deadline = time.monotonic() + (GET_RETRY if method == "GET" else 0)
        while True:
            result = sh(["ip", "netns", "exec", self.api_namespace, self.api_python, "-c", API_CLIENT],
                        input=json.dumps(request))  # fmt: skip
            answer = json.loads(result.stdout)
            if answer["status"] != 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        try:
            return answer["status"], json.loads(answer["body"])
        except ValueError:
            return answer["status"], answer["body"]

    def login_simple_auth_manager(
        self, master, passwords: str = "/opt/airflow/simple_auth_manager_passwords.json.generated"
    ) -> None:
        """Airflow 3: the api-server writes the admin's password at start (several masters: init writes it,
        from the cluster file); trade it for a token."""
        wait_for(lambda: master.run("test", "-s", passwords, check=False).returncode == 0, 120,
                 "the api-server's generated admin password")  # fmt: skip
        password = json.loads(master.run("cat", passwords).stdout)["admin"]

        def token() -> str | None:
            status, body = self.api("POST", "/auth/token", {"username": "admin", "password": password}, token=False)
            assert status in (0, 200, 201), body  # 0: not listening yet
            return body["access_token"] if status else None

        self.authorization = "Bearer " + wait_for(token, 120, "the api-server to issue a token", interval=1)

    def run_dag(self, dag_id: str, timeout: float = 240, while_running=None) -> str:
        """Trigger a DAG, wait for the run to finish, return its run_id. Assert it succeeded."""
        run_id = self.trigger_dag(dag_id)
        if while_running:
            while_running(run_id)
        self.wait_run(dag_id, run_id, timeout)
        return run_id

    def trigger_dag(self, dag_id: str) -> str:
        wait_for(lambda: self.api("GET", f"{self.api_root}/dags/{dag_id}")[0] == 200, 180, f"DAG {dag_id} parsed")
        status, body = self.api(
            "POST", f"{self.api_root}/dags/{dag_id}/dagRuns", {"logical_date": None} if self.airflow3 else {}
        )
        assert status == 200, body
        return body["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The run's state; "" while the API answers with an error (a master restarting, say)."""
        status, body = self.api("GET", f"{self.api_root}/dags/{dag_id}/dagRuns/{quote(run_id)}")
        return body["state"] if status == 200 else ""

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 240) -> None:
        """Wait for a run to finish; assert it succeeded."""
        finished = lambda: (state := self.run_state(dag_id, run_id)) in ("success", "failed") and state  # noqa: E731
        state = wait_for(finished, timeout, f"{dag_id} run {run_id} to finish", interval=1)
        assert state == "success", self.task_states(dag_id, run_id)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """The run's task instances; none while the API answers with an error."""
        status, body = self.api("GET", f"{self.api_root}/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")
        return body["task_instances"] if status == 200 else []

    def results(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Each task's return value (a BashOperator's last line), read through the API."""
        values = {}
        for task in self.task_instances(dag_id, run_id):
            path = f"{self.api_root}/dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task['task_id']}"
            status, body = self.api("GET", f"{path}/xcomEntries/return_value")
            assert status == 200, body
            values[task["task_id"]] = str(body["value"]).strip('"')
        return values

    def task_states(self, dag_id: str, run_id: str) -> list[tuple]:
        return [(t["task_id"], t["state"], t.get("hostname")) for t in self.task_instances(dag_id, run_id)]


class Steps:
    """Names the step being run, and records durations, so a failure says where it happened."""

    def __init__(self) -> None:
        self.current = "setup"
        self.timings: list[tuple[str, float]] = []
        self.started = time.monotonic()

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.current, start = name, time.monotonic()
        print(f"\n=== {name}", flush=True)
        yield
        self.timings.append((name, time.monotonic() - start))
        print(f"    done in {time.monotonic() - start:.1f}s", flush=True)

    def report(self) -> str:
        lines = [f"{seconds:7.1f}s  {name}" for name, seconds in self.timings]
        return "\n".join([*lines, f"total {time.monotonic() - self.started:.1f}s"])
