"""End-to-end proof: a real four-host Airflow cluster built only with `airflow-node`.

master  10.231.7.1   Debian 12, systemd (nspawn container): api-server, scheduler, dag-processor, triggerer,
                     flower, plus the test's Redis (password) and PostgreSQL (scram) on the same host
worker1 10.231.7.11  supervisord (set up by init): airflow celery worker -c 2 -q q1,default
worker2 10.231.7.12  supervisord (set up by init): airflow celery worker -c 2 -q q2,default
worker3 10.231.7.13  Debian 13 and its python3.13 (Debian 12 on Airflow 2.11, which stops at 3.12), systemd
                     (nspawn container), the hardened worker unit: airflow celery worker -c 2 -q q3;
                     its own Airflow venv, installed offline from a wheelhouse

On Airflow 2.11 the scenario ends with `airflow-node upgrade --to 3.3.2` on the master (a failed
migration rolled back, a drain timeout, the upgrade while a task runs) and `sync` on the workers.

Every host gets the tool as the README says for a PEP 668 system: a venv in /opt/airflow-node and a
link in /usr/local/bin (from a directory of wheels: the hosts have no network). Only product commands
configure the hosts: `airflow-node install-airflow`, `init` (the master's prints the worker's join
command), `init --join` on the workers, `sync`, `restart`, `health`. Nothing is done by hand that a
user would not do: no hosts file (no host name resolves between the hosts), no SSH key copied, no
supervisord set up. The test drives Airflow through its REST API and checks the result.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from hosts import (
    PREFIX,
    SUBNET,
    TOOL,
    VENVS,
    AirflowApi,
    Container,
    Network,
    Postgres,
    Redis,
    Steps,
    Worker,
    airflow_venv,
    cached_rootfs,
    cached_wheelhouse,
    install_tool,
    sh,
    tool_venv,
    tool_wheels,
    wait_for,
)

from airflow_nodes.node import OWN_SUPERVISORD_CONF

from conftest import interpreter

pytestmark = pytest.mark.e2e
AIRFLOW_VERSION = os.environ.get("E2E_AIRFLOW_VERSION", "3.3.2")
AIRFLOW_3 = AIRFLOW_VERSION.startswith("3.")
MASTER = f"{SUBNET}.1"
# name: (address, queues); worker3 is the systemd container below, the others supervisord hosts
WORKERS = {"worker1": (f"{SUBNET}.11", "q1,default"), "worker2": (f"{SUBNET}.12", "q2,default"),
           "worker3": (f"{SUBNET}.13", "q3")}  # fmt: skip
SYSTEMD_WORKER = "worker3"
# Debian 13's python3.13 is past what Airflow 2.11 supports (3.10-3.12): there, Debian 12's python3.11
SYSTEMD_WORKER_SUITE, SYSTEMD_WORKER_PYTHON = ("trixie", "3.13") if AIRFLOW_3 else ("bookworm", "3.11")
DATA_DIR = "/srv/data"  # on worker3: the directory `init --writable-path` lets tasks write
WHEELS_DIR = "/srv/wheels"  # on worker3: `init --wheelhouse`, where a new Airflow's wheels are put
# Secrets with characters that need URL quoting and %-escaping in every format we write.
REDIS_PASSWORD = "redis-Pw%42!e2e"
DB_PASSWORD = "pg-P@ss%w0rd:e2e"

DAG_FILE = """
from datetime import datetime

{imports}

with DAG("e2e_spread", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
         is_paused_upon_creation=False):
    BashOperator(task_id="on_worker1", bash_command="echo ran-on-$(hostname)", queue="q1")
    BashOperator(task_id="on_worker2", bash_command="echo ran-on-$(hostname)", queue="q2")

with DAG("e2e_long", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
         is_paused_upon_creation=False):
    BashOperator(task_id="sleepy", bash_command="sleep 25; echo finished-through-a-restart", queue="q1")

# worker3's hardened unit: DATA_DIR was allowed with --writable-path; the README says what else holds
with DAG("e2e_sandbox", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
         is_paused_upon_creation=False):
    BashOperator(task_id="writes_data", queue="q3",
                 bash_command="echo written-by-$(id -un) > /srv/data/e2e-data.txt && cat /srv/data/e2e-data.txt")
    BashOperator(task_id="sandbox_as_documented", queue="q3", bash_command=(
        "test ! -e /home/e2e/notes.txt"  # ProtectHome=yes: /home is empty
        " && ! touch /etc/e2e-probe 2>/dev/null && ! touch /srv/e2e-probe 2>/dev/null"  # the rest is read-only
        " && echo private > /tmp/e2e-probe"  # PrivateTmp=yes: a /tmp of the daemon's own
        " && echo sandbox-as-documented"))
"""
NEW_DAG_FILE = """
from datetime import datetime

{imports}

with DAG("e2e_new", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=False):
    BashOperator(task_id="new_on_worker1", bash_command="echo new", queue="q1")
    BashOperator(task_id="new_on_worker3", bash_command="echo new", queue="q3")
"""
VERSIONED_DAG_FILE = """
from datetime import datetime

{imports}

with DAG("e2e_versions", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
         is_paused_upon_creation=False):
{tasks}
"""
QUEUES = ("q1", "q2", "q3")  # one task on each worker


def versioned_dag(version: int) -> str:
    """Version 1: a task on each worker; version 2: their code changed, and a task added on each worker."""
    tasks = [f'    BashOperator(task_id="changed_{q}", bash_command="echo v{version}", queue="{q}")' for q in QUEUES]
    if version > 1:
        tasks += [f'    BashOperator(task_id="added_{q}", bash_command="echo added-v{version}", queue="{q}")'
                  for q in QUEUES]  # fmt: skip
    return VERSIONED_DAG_FILE.format(imports=IMPORTS, tasks="\n".join(tasks))


def expected_results(version: int) -> dict[str, str]:
    results = {f"changed_{q}": f"v{version}" for q in QUEUES}
    if version > 1:
        results |= {f"added_{q}": f"added-v{version}" for q in QUEUES}
    return results


if AIRFLOW_3:
    IMPORTS = "from airflow.providers.standard.operators.bash import BashOperator\nfrom airflow.sdk import DAG"
    API = "/api/v2"
    MASTER_DAEMONS = ("api-server", "scheduler", "dag-processor", "triggerer", "celery flower")
else:
    IMPORTS = "from airflow import DAG\nfrom airflow.operators.bash import BashOperator"
    API = "/api/v1"
    MASTER_DAEMONS = ("webserver", "scheduler", "dag-processor", "triggerer", "celery flower")
DAGS, NEW_DAG = DAG_FILE.format(imports=IMPORTS), NEW_DAG_FILE.format(imports=IMPORTS)


class Cluster(AirflowApi):
    def __init__(self, workdir: Path):
        super().__init__(f"{PREFIX}-master", MASTER, Path("python"), AIRFLOW_3)  # the tool's python, once built
        self.workdir = workdir
        self.closers: list = []
        self.workers: dict[str, Worker] = {}
        self.printed: list[str] = []  # everything airflow-node printed, scanned for secrets at the end

    # -- building ---------------------------------------------------------------------------

    def systemd_worker_venv(self, host: Container) -> Path:
        """worker3's Airflow, a venv of its own for its own python: `airflow-node wheelhouse` here (with
        network), then `install-airflow --wheelhouse` on the host, the README's offline path."""
        venv = VENVS / f"airflow-{AIRFLOW_VERSION}-py{SYSTEMD_WORKER_PYTHON}" / "venv"
        wheelhouse = cached_wheelhouse(self.tool, AIRFLOW_VERSION, SYSTEMD_WORKER_PYTHON)
        python = f"/usr/bin/python{SYSTEMD_WORKER_PYTHON}"
        result = self.node(host, "install-airflow", "--version", AIRFLOW_VERSION, "--venv", venv, "--python", python,
                           "--wheelhouse", wheelhouse, "--force", timeout=1800)  # fmt: skip
        print(result.stdout.splitlines()[-1])
        return venv

    def start(self) -> None:
        self.tool = tool_venv(self.workdir)
        self.api_python = self.tool / "bin" / "python"
        pythons = {"3.11": self.api_python, "3.13": interpreter("3.13")}
        self.wheels = tool_wheels(self.workdir, {p: pythons[p] for p in {"3.11", SYSTEMD_WORKER_PYTHON}})
        self.venv = airflow_venv(self.tool, AIRFLOW_VERSION)
        self.network = Network()
        self.closers.append(self.network.close)
        master_ns = self.network.add_host("master", MASTER)
        self.redis = Redis(master_ns, MASTER, REDIS_PASSWORD, self.workdir / "redis")
        self.closers.append(self.redis.stop)
        self.postgres = Postgres(master_ns, MASTER, DB_PASSWORD, self.workdir / "postgres")
        self.closers.append(self.postgres.close)
        binds = [self.workdir, VENVS]
        self.master = Container(cached_rootfs("bookworm"), master_ns, binds, self.workdir / "master.log", "master")
        self.closers.append(self.master.close)
        for name, (address, _) in WORKERS.items():
            namespace = self.network.add_host(name, address)
            if name == SYSTEMD_WORKER:
                worker = Container(cached_rootfs(SYSTEMD_WORKER_SUITE), namespace, binds,
                                   self.workdir / f"{name}.log", name)  # fmt: skip
            else:
                worker = Worker(name, namespace, self.workdir / name)
            self.closers.append(worker.close)
            self.workers[name] = worker
        for host in [self.master, *self.workers.values()]:
            install_tool(host, self.wheels)
        self.venvs = {name: self.venv for name in WORKERS}
        self.venvs[SYSTEMD_WORKER] = self.systemd_worker_venv(self.workers[SYSTEMD_WORKER])

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as exc:  # keep tearing down the rest
                print(f"teardown: {exc}", file=sys.stderr)

    # -- product commands on the hosts ------------------------------------------------------------

    def node(self, host, *args: object, check: bool = True, timeout: float = 300, env: dict | None = None):
        """Run airflow-node on a host, found on PATH as the README installs it. `env` (passwords, the
        join token) reaches it through nsenter's inherited environment, never through a command line."""
        env = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})}
        result = host.run("airflow-node", *args, check=check, timeout=timeout, env=env)
        self.printed.append(result.stdout + result.stderr)
        return result

    def init_master(self) -> None:
        broker = f"redis://:{quote(REDIS_PASSWORD, safe='')}@{MASTER}:6379/0"
        db = f"postgresql://airflow:{quote(DB_PASSWORD, safe='')}@{MASTER}:5432/airflow"
        # the passwords go in as a user should pass them: through the environment, not argv
        secrets = {"AIRFLOW_NODE_BROKER_URL": broker, "AIRFLOW_NODE_DB_URL": db}
        init = self.node(self.master, "init", "--role", "master", "--master-host", MASTER, "--venv", self.venv,
                         "--node-name", "master", "--expect-workers", ",".join(WORKERS), env=secrets)  # fmt: skip
        print(init.stdout)
        # what a user copies from the master's output to each worker
        self.join_token = re.search(
            r"AIRFLOW_NODE_JOIN_TOKEN=(\S+) airflow-node init --role worker", init.stdout
        ).group(1)
        self.put_dag_file("e2e_dags.py", DAGS)
        print(self.node(self.master, "sync", "-v").stdout)
        print(self.node(self.master, "start").stdout)

    def put_dag_file(self, name: str, text: str) -> None:
        """What a DAG author does on the master: a file in /srv/airflow/dags."""
        self.master.run("sh", "-c", f"cat > /srv/airflow/dags/{name} <<'EOF'\n{text}EOF\n"
                        f"chown airflow:airflow /srv/airflow/dags/{name}")  # fmt: skip

    def init_worker(self, name: str) -> None:
        """The README's worker line: the join command the master printed, plus this worker's options.
        It enrolls, fetches the cluster file, renders the node and starts it (its own supervisord, or
        systemd's units on worker3, whose tasks may write DATA_DIR)."""
        worker = self.workers[name]
        queues = WORKERS[name][1]
        # worker3 installs offline: a new Airflow comes from the wheels its operator puts in WHEELS_DIR
        options = ["--writable-path", DATA_DIR, "--wheelhouse", WHEELS_DIR] if name == SYSTEMD_WORKER else []
        result = self.node(worker, "init", "--role", "worker", "-c", "2", "--queues", queues, "--venv",
                           self.venvs[name], "--node-name", name, *options,
                           env={"AIRFLOW_NODE_JOIN_TOKEN": self.join_token})  # fmt: skip
        print(result.stdout)
        print(self.node(worker, "sync", "-v").stdout)

    # -- looking at the cluster --------------------------------------------------------------------

    def health(self, host, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.node(host, "health", *args, check=False, timeout=timeout)

    def login(self) -> None:
        if self.airflow3:
            self.login_simple_auth_manager(self.master)
        else:
            self.login_fab()

    def login_fab(self) -> None:
        """Airflow 2: create an admin user as an operator would (`airflow users create`); use basic auth."""
        password = "e2e-admin-" + os.urandom(6).hex()  # the test's own user, not a cluster secret
        self.master.run("runuser", "-u", "airflow", "--", "env", "AIRFLOW_CONFIG=/opt/airflow/airflow.cfg",
                        "AIRFLOW_HOME=/opt/airflow", f"{self.venv}/bin/airflow", "users", "create", "--username",
                        "admin", "--password", password, "--role", "Admin", "--email", "admin@example.invalid",
                        "--firstname", "E2E", "--lastname", "Admin", timeout=180)  # fmt: skip
        self.authorization = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
        wait_for(
            lambda: self.api("GET", f"{self.api_root}/dags")[0] == 200, 180, "the webserver to answer with basic auth"
        )

    def daemon_logs(self) -> str:
        parts = []
        for unit in ("db-migrate", "webserver", "api-server", "scheduler", "dag-processor", "triggerer", "flower"):
            journal = self.master.run("journalctl", "--no-pager", "-n", "25", "-u", f"airflow-{unit}", check=False)
            parts.append(f"--- master airflow-{unit}\n{journal.stdout}")
        for name, worker in self.workers.items():
            if isinstance(worker, Container):
                journal = worker.run("journalctl", "--no-pager", "-n", "40", "-u", "airflow-worker", check=False)
                parts.append(f"--- {name} airflow-worker\n{journal.stdout}")
                continue
            for log in sorted((worker.workdir / "var/log/airflow").glob("*.log")):
                parts.append(f"--- {name} {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    def diagnose(self) -> str:
        lines = []
        for name, host in [("master", self.master), *self.workers.items()]:
            try:
                result = self.health(host)
                lines.append(f"--- health on {name} (exit {result.returncode})\n{result.stdout}{result.stderr}")
            except Exception as exc:
                lines.append(f"--- health on {name}: {exc}")
        with contextlib.suppress(Exception):
            lines.append(self.daemon_logs())
        with contextlib.suppress(Exception):
            lines.append(self.scheduler_stacks())
        with contextlib.suppress(Exception):  # a session waiting on a lock would hold a scheduler up
            lines.append("--- pg_stat_activity\n" + self.postgres.sql(
                "SELECT pid, application_name, state, wait_event_type, wait_event, xact_start, left(query, 120) "
                "FROM pg_stat_activity WHERE datname = 'airflow'"))  # fmt: skip
        return "\n".join(lines)

    def scheduler_stacks(self) -> str:
        """Where each scheduler process is (py-spy dump, by its PID on this machine): what a stalled
        scheduler waits on. The 2.11 scheduler has stalled right after start in about one run of ten."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        pids = sh(["pgrep", "-f", "airflow scheduler"], check=False).stdout.split()
        dumps = []
        for pid in pids:
            dump = sh([py_spy, "dump", "--pid", pid], check=False, timeout=60)
            dumps.append(f"--- py-spy dump of scheduler pid {pid}\n{dump.stdout}{dump.stderr}")
        return "\n".join(dumps)

    def cron_sync(self, host) -> subprocess.CompletedProcess:
        """Run the sync line of the host's cron file as cron would: its own command, with nothing from
        our environment but the PATH the file sets (so the tool must be found as init wrote it)."""
        cron = host.run("cat", "/etc/cron.d/airflow-node").stdout
        path = re.search(r"^PATH=(.*)$", cron, re.M).group(1)
        command = re.search(r"^\*/\d+ \* \* \* \* root (.*)$", cron, re.M).group(1)
        assert command.startswith(f"{TOOL}/bin/airflow-node sync"), command  # found through the README's link
        return host.run("env", "-i", f"PATH={path}", "/bin/sh", "-c", command, timeout=900)

    def secrets(self) -> list[str]:
        cluster = self.master.run("cat", "/etc/airflow-node/cluster.toml").stdout
        generated = re.findall(r'^(?:fernet_key|secret_key|jwt_secret|flower_password) = "([^"]+)"$', cluster, re.M)
        assert len(generated) == 4
        plain = [REDIS_PASSWORD, DB_PASSWORD, *generated]
        return sorted({form for s in plain for form in (s, quote(s, safe=""), quote(s, safe="").replace("%", "%%"))})

    def memory_by_daemon(self) -> dict[str, int]:
        """PSS in MiB of each Airflow daemon, its main process plus all its children, on every host."""
        rows = [line.split(None, 2) for line in sh(["ps", "-ww", "-eo", "pid,ppid,args"]).stdout.splitlines()[1:]]
        parents = {pid: ppid for pid, ppid, _ in rows}
        children: dict[str, list[str]] = {}
        for pid, ppid, _ in rows:
            children.setdefault(ppid, []).append(pid)
        daemons: dict[str, str] = {}  # pid -> daemon name
        for pid, _, args in rows:
            # processes rename themselves: "airflow api_server -- ...", "[celeryd: celery@NAME:MainProcess]"
            daemon = re.search(r"(?:/bin/airflow |^airflow )(api[-_]server|webserver|scheduler|dag-processor|"
                               r"triggerer|celery flower)", args)  # fmt: skip
            worker = re.search(r"(?:/bin/airflow celery worker .*-H |^\[celeryd: )celery@([\w.-]+)", args)
            if daemon:
                daemons[pid] = daemon.group(1).replace("_", "-")
            elif worker:
                daemons[pid] = f"celery worker ({worker.group(1)})"
        result: dict[str, int] = {}
        for pid, name in daemons.items():
            if parents.get(pid) in daemons:
                continue  # counted with the daemon it belongs to
            tree, total = [pid], 0
            while tree:
                current = tree.pop()
                tree += children.get(current, [])
                with contextlib.suppress(OSError, AttributeError):
                    rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
                    total += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
            result[name] = total // 1024
        return result


@pytest.fixture(scope="module")
def cluster():
    for tool in ("systemd-nspawn", "debootstrap", "redis-server", "uv", "ssh", "rsync"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `bash scripts/run-tests` (it installs what e2e needs)")
    if interpreter(SYSTEMD_WORKER_PYTHON) is None:  # builds the wheels worker3 installs from
        pytest.fail(f"no Python {SYSTEMD_WORKER_PYTHON} here (/usr/bin or pyenv) for worker3's wheels")
    workdir = Path(tempfile.mkdtemp(prefix="afe2e-"))
    os.chmod(workdir, 0o755)
    built = Cluster(workdir)
    try:
        built.start()
        yield built
    finally:
        if os.environ.get("E2E_KEEP"):  # debugging: leave the hosts running (clean up by hand)
            print(f"E2E_KEEP: left running; workdir {workdir}")
        else:
            built.close()
            shutil.rmtree(workdir, ignore_errors=True)


def test_cluster_built_only_with_airflow_node(cluster):
    step = Steps()
    try:
        run_scenario(cluster, step)
        if not AIRFLOW_3:
            run_upgrade_scenario(cluster, step)
    except BaseException:
        print(f"\n!!! FAILED at step: {step.current}\n{cluster.diagnose()}", flush=True)
        raise
    finally:
        print(step.report())


def run_scenario(cluster: Cluster, step: Steps) -> None:
    with step("master: init (prints the join command), sync, start under systemd"):
        cluster.init_master()
    for name in WORKERS:
        runs_under = "systemd" if name == SYSTEMD_WORKER else "own supervisord"
        with step(f"{name}: init --join TOKEN ({runs_under}, started), sync"):
            cluster.init_worker(name)
    with step("the web/api server answers and we are logged in"):
        cluster.login()

    with step("1. airflow-node health exits 0 on every host"):
        for name, host in [("master", cluster.master), *cluster.workers.items()]:
            result = wait_for(lambda host=host: (r := cluster.health(host)).returncode == 0 and r, 180,
                              f"health OK on {name}", interval=3)  # fmt: skip
            print(f"--- {name}\n{result.stdout}")

    with step("1b. `airflow-node cluster` on a worker: every node consistent; a drift injected is flagged"):
        worker1 = cluster.workers["worker1"]
        view = cluster.node(worker1, "cluster", check=False)
        print(view.stdout)
        nodes = 1 + len(WORKERS)
        assert view.returncode == 0 and f"OK: {nodes} node(s) consistent with the master" in view.stdout, view.stdout
        cfg = worker1.run("cat", "/opt/airflow/airflow.cfg").stdout
        worker1.run("sh", "-c", "echo '# edited by hand on worker1' >> /opt/airflow/airflow.cfg")
        cluster.health(worker1)  # every health run publishes the node's record
        drift = cluster.node(worker1, "cluster", check=False)
        print(drift.stdout)
        assert drift.returncode == 1 and "worker1: cfg differs from the master's" in drift.stdout, drift.stdout
        worker1.run("sh", "-c", f"cat > /opt/airflow/airflow.cfg <<'EOF'\n{cfg}EOF")
        cluster.health(worker1)
        assert cluster.node(worker1, "cluster", check=False).returncode == 0

    with step("2. a DAG placed on the master runs on both workers"):
        run_id = cluster.run_dag("e2e_spread")
        hosts = {t["task_id"]: t["hostname"] for t in cluster.task_instances("e2e_spread", run_id)}
        # the recorded hostname is each worker's advertised address: no name needs to resolve
        assert hosts == {"on_worker1": WORKERS["worker1"][0], "on_worker2": WORKERS["worker2"][0]}, hosts

    with step("3. a worker's task log is readable through the master's API, no host name resolvable"):
        assert cluster.master.run("getent", "hosts", "worker1", check=False).returncode != 0
        status, log = cluster.api(
            "GET", f"{API}/dags/e2e_spread/dagRuns/{quote(run_id)}/taskInstances/on_worker1/logs/1?full_content=true"
        )
        assert status == 200, log
        assert "ran-on-worker1" in json.dumps(log), log

    with step("3b. worker3 (Debian 13, systemd, hardened unit): a task writes the allowed data directory"):
        worker3 = cluster.workers[SYSTEMD_WORKER]
        # something private in a home directory, which the README says tasks cannot see
        worker3.run("sh", "-c", "mkdir -p /home/e2e && echo private > /home/e2e/notes.txt")
        run_id = cluster.run_dag("e2e_sandbox")
        hosts = {t["task_id"]: t["hostname"] for t in cluster.task_instances("e2e_sandbox", run_id)}
        assert set(hosts.values()) == {WORKERS[SYSTEMD_WORKER][0]}, hosts
        assert worker3.run("cat", f"{DATA_DIR}/e2e-data.txt").stdout == "written-by-airflow\n"
        assert worker3.run("stat", "-c", "%U", f"{DATA_DIR}/e2e-data.txt").stdout.strip() == "airflow"
        assert worker3.run("test", "-e", "/tmp/e2e-probe", check=False).returncode != 0  # the task's /tmp was its own
        status, log = cluster.api(
            "GET", f"{API}/dags/e2e_sandbox/dagRuns/{quote(run_id)}/taskInstances/sandbox_as_documented/logs/1"
            "?full_content=true",
        )  # fmt: skip
        assert status == 200 and "sandbox-as-documented" in json.dumps(log), log
        show = worker3.run("systemctl", "show", "-p", "ProtectSystem,ProtectHome,PrivateTmp,NRestarts,ActiveState",
                           "airflow-worker.service").stdout  # fmt: skip
        print(show)
        assert all(line in show.splitlines() for line in ("ProtectSystem=strict", "ProtectHome=yes",
                   "PrivateTmp=yes", "NRestarts=0", "ActiveState=active")), show  # fmt: skip
        print(worker3.run("python3", "--version").stdout, worker3.run("cat", "/etc/debian_version").stdout)

    with step("3c. `airflow-node stop` on worker3 returns once systemd has stopped the worker, not before"):
        cluster.node(worker3, "stop")
        assert worker3.run("systemctl", "is-active", "airflow-worker.service", check=False).stdout.strip() == "inactive"
        cluster.node(worker3, "start")

    with step("4a. kill -9 of a worker's Celery process: supervisor restarts it, a DAG run still succeeds"):
        worker1 = cluster.workers["worker1"]
        supervisorctl = (f"{TOOL}/bin/supervisorctl", "-c", OWN_SUPERVISORD_CONF)  # the one init set up
        old = int(worker1.run(*supervisorctl, "pid", "airflow-worker:airflow-worker").stdout)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: (p := worker1.run(*supervisorctl, "pid", "airflow-worker:airflow-worker",
                                           check=False).stdout.strip()).isdigit() and int(p) not in (0, old),
                 60, "a new worker process")  # fmt: skip
        cluster.run_dag("e2e_spread")

    with step("4b. kill -9 of the scheduler: systemd restarts it"):
        main_pid = int(cluster.master.run("systemctl", "show", "-P", "MainPID", "airflow-scheduler.service").stdout)
        cluster.master.run("kill", "-9", str(main_pid))
        wait_for(lambda: cluster.master.run("systemctl", "show", "-P", "NRestarts", "airflow-scheduler.service")
                 .stdout.strip() not in ("", "0"), 60, "systemd to restart the scheduler")  # fmt: skip
        wait_for(lambda: cluster.master.run("systemctl", "is-active", "airflow-scheduler.service", check=False)
                 .stdout.strip() == "active", 60, "the scheduler active again")  # fmt: skip

    with step("5. a running task finishes through `airflow-node restart` of its worker"):

        def restart_when_running(run_id: str) -> None:
            wait_for(lambda: cluster.task_states("e2e_long", run_id)[0][1] == "running", 120, "sleepy running")
            restarted = cluster.node(worker1, "restart", timeout=300)
            print(restarted.stdout)

        cluster.run_dag("e2e_long", while_running=restart_when_running)

    with step("6. Redis stopped: health on a worker reports the broker critical within its timeout"):
        cluster.redis.stop()
        started = time.monotonic()
        result = cluster.health(cluster.workers["worker2"], "--only", "redis", "--timeout", "2")
        elapsed = time.monotonic() - started
        print(result.stdout)
        assert result.returncode == 2 and "CRITICAL" in result.stdout
        assert elapsed < 2 + 1.5, elapsed  # the timeout, plus process start of nsenter and python
    with step("6b. Redis back: the cluster recovers and a DAG run succeeds"):
        cluster.redis.start()
        cluster.run_dag("e2e_spread", timeout=300)

    with step("7. no secret on any command line, no world-readable file holds one"):
        secrets = cluster.secrets()
        args = sh(["ps", "-ww", "-eo", "args"]).stdout  # -ww: never truncated
        assert "celery worker -c 2 -H celery@worker1" in args  # the check sees the daemons' full command lines
        assert not [s for s in secrets if s in args], "a secret is on a command line"
        scan = (
            "import os, sys, stat\n"
            "secrets = sys.stdin.read().split('\\n')\n"
            "for top in sys.argv[1:]:\n"
            "    for d, _, files in os.walk(top):\n"
            "        for f in files:\n"
            "            p = os.path.join(d, f)\n"
            "            try:\n"
            "                st = os.lstat(p)\n"
            "                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o004:\n"
            "                    data = open(p, 'rb').read().decode(errors='replace')\n"
            "                    if any(s and s in data for s in secrets): print(p)\n"
            "            except OSError: pass\n"
        )
        listing = "\n".join(secrets)
        python = f"{TOOL}/bin/python"
        leaks = cluster.master.run(python, "-c", scan, "/etc", "/opt/airflow", "/srv", "/var/lib/airflow-node",
                                   "/var/log/airflow-node", "/run", input=listing).stdout  # fmt: skip
        for worker in cluster.workers.values():
            leaks += worker.run(python, "-c", scan, "/etc/airflow-node", "/opt/airflow", "/var/lib/airflow-node",
                                "/var/log/airflow-node", "/run", input=listing).stdout  # fmt: skip
        assert leaks.strip() == "", f"world-readable files holding a secret:\n{leaks}"

    with step("7b. no secret in anything airflow-node printed: dry runs, errors, health"):
        cluster.node(cluster.master, "init", "--role", "master", "--dry-run", "--visibility-timeout", "7200")
        cluster.node(cluster.workers["worker1"], "init", "--role", "worker", "--dry-run", "-c", "3")
        unencoded = f"redis://:{REDIS_PASSWORD}#x@{MASTER}:6379/0"  # does not parse: the error must not echo it
        failed = cluster.node(cluster.master, "init", "--role", "master", "--dry-run", "--broker-url", unencoded,
                              check=False)  # fmt: skip
        assert failed.returncode == 2 and "--broker-url" in failed.stderr
        cluster.health(cluster.master, "--json")
        printed = "\n".join(cluster.printed)
        assert "(on disk)" in printed  # the dry runs' diffs are part of what is scanned
        assert not [s for s in secrets if s in printed], "a secret in airflow-node's output"

    with step("7c. the airflow account (what every task runs as) cannot read the sync key or change what root runs"):
        attempts = (
            "import glob, os, tomllib\n"
            "node = tomllib.load(open('/etc/airflow-node/node.toml', 'rb'))['node']\n"
            "venv = os.path.realpath(os.path.dirname(os.path.dirname(node['airflow_bin'])))\n"
            "site = glob.glob(venv + '/lib/python*/site-packages')[0]\n"
            "tries = {'read the sync key': lambda: open('/etc/airflow-node/ssh/id_ed25519', 'rb').read(),\n"
            "         'add a .pth file to the venv root runs': lambda: open(site + '/owned.pth', 'w'),\n"
            "         'replace the venv': lambda: os.rename(venv, venv + '.moved'),\n"
            "         'write where supervisord logs': lambda: open('/var/log/airflow-node/owned.log', 'w'),\n"
            "         'write the state root acts on': lambda: open('/var/lib/airflow-node/owned', 'w'),\n"
            "         'edit a published DAG':\n"
            "             lambda: open(glob.glob('/var/lib/airflow-node/dags/releases/*/*.py')[0], 'a'),\n"
            "         'list the releases tasks asked for':\n"
            "             lambda: os.listdir('/var/lib/airflow-node/release-requests')}\n"
            "for what, attempt in tries.items():\n"
            "    try:\n"
            "        attempt()\n"
            "        print('allowed:', what)\n"
            "    except OSError as exc:\n"
            "        print('refused:' if isinstance(exc, PermissionError) else 'absent:', what)\n"
        )
        for name, host in [("master", cluster.master), *cluster.workers.items()]:
            lines = host.run("runuser", "-u", "airflow", "--", "python3", "-c", attempts).stdout.splitlines()
            expected = {"absent: read the sync key"} if name == "master" else set()  # a worker's key only
            if name == "master" or not AIRFLOW_3:  # where tasks ask for DAG versions: Airflow 3 workers
                expected.add("absent: list the releases tasks asked for")
            assert {line for line in lines if not line.startswith("refused:")} == expected, (name, lines)
        key = cluster.workers["worker1"].run("stat", "-c", "%U %a", "/etc/airflow-node/ssh/id_ed25519").stdout.split()
        assert key == ["airflow-sync", "600"], key

    with step("8. a cluster change reaches a worker through its cron line (env -i, cron's PATH) that restarts it"):
        worker2 = cluster.workers["worker2"]
        supervisorctl = (f"{TOOL}/bin/supervisorctl", "-c", OWN_SUPERVISORD_CONF)  # the one init set up
        program = "airflow-worker:airflow-worker"
        before = int(worker2.run(*supervisorctl, "pid", program).stdout)
        cluster.node(cluster.master, "init", "--role", "master", "--visibility-timeout", "7200")
        cron = cluster.cron_sync(worker2)
        print(cron.stdout, cron.stderr)
        assert "visibility_timeout = 7200" in worker2.run("cat", "/opt/airflow/airflow.cfg").stdout
        wait_for(lambda: (p := worker2.run(*supervisorctl, "pid", program, check=False).stdout.strip()).isdigit()
                 and int(p) not in (0, before), 120, "the worker restarted by the cron-like sync")  # fmt: skip

    with step("9. a new DAG file runs on the workers after `airflow-node sync` on the master only"):
        cluster.put_dag_file("e2e_new.py", NEW_DAG)
        started = time.monotonic()
        cluster.node(cluster.master, "sync", "--quiet")
        published = time.monotonic() - started
        wait_for(lambda: cluster.api("GET", f"{API}/dags/e2e_new")[0] == 200, 120, "e2e_new visible", interval=1)
        visible = time.monotonic() - started
        cluster.run_dag("e2e_new", timeout=120)  # the workers' followers fetched it: nothing done on them
        ran = time.monotonic() - started
        print(f"new DAG, from the master's sync: published {published:.1f}s, visible in the API {visible:.1f}s, "
              f"run succeeded {ran:.1f}s")  # fmt: skip
        assert ran < 90, f"a new DAG took {ran:.0f}s from sync to a finished run"

    with step("9b. a changed DAG (a task changed, one added): new code on every worker, first try, master sync only"):
        cluster.put_dag_file("e2e_versions.py", versioned_dag(1))
        cluster.node(cluster.master, "sync", "--quiet")
        before = cluster.run_dag("e2e_versions", timeout=180)
        assert cluster.results("e2e_versions", before) == expected_results(1)
        cluster.put_dag_file("e2e_versions.py", versioned_dag(2))
        started = time.monotonic()
        print(cluster.node(cluster.master, "sync", "-v").stdout)
        synced = time.monotonic() - started

        def new_version_parsed() -> bool:
            status, body = cluster.api("GET", f"{API}/dags/e2e_versions/tasks")
            return status == 200 and "added_q1" in {t["task_id"] for t in body["tasks"]}

        wait_for(new_version_parsed, 120, "the changed e2e_versions parsed on the master", interval=1)
        visible = time.monotonic() - started
        runs = [cluster.trigger_dag("e2e_versions") for _ in range(2)]
        for run_id in runs:
            cluster.wait_run("e2e_versions", run_id, timeout=180)
        ended = time.monotonic() - started
        for run_id in runs:
            tries = {
                t["task_id"]: (t["state"], t["try_number"]) for t in cluster.task_instances("e2e_versions", run_id)
            }
            assert set(tries.values()) == {("success", 1)}, tries
            assert cluster.results("e2e_versions", run_id) == expected_results(2)
        print(f"changed DAG, from the master's sync: synced {synced:.1f}s, parsed {visible:.1f}s, "
              f"the last of {len(runs)} runs ended {ended:.1f}s")  # fmt: skip
        assert ended < 120, f"a changed DAG took {ended:.0f}s from the master's sync to finished runs"
        if AIRFLOW_3:
            versions = {r: cluster.api("GET", f"{API}/dags/e2e_versions/dagRuns/{quote(r)}")[1]["bundle_version"]
                        for r in (before, *runs)}  # fmt: skip
            assert versions[before] != versions[runs[0]] == versions[runs[1]], versions

    if AIRFLOW_3:
        with step(
            "9c. a run created before the change, cleared, runs its own version; a worker that lacks it fetches it"
        ):
            worker1 = cluster.workers["worker1"]
            # the operator prunes worker1's releases: the old version is gone there, kept on the master
            cluster.node(worker1, "sync", "--keep", "1", "--keep-days", "0")
            status, body = cluster.api("POST", f"{API}/dags/e2e_versions/clearTaskInstances",
                                       {"dry_run": False, "only_failed": False, "dag_run_id": before})  # fmt: skip
            assert status == 200, body
            cluster.wait_run("e2e_versions", before, timeout=240)
            assert cluster.results("e2e_versions", before) == expected_results(1)
            print(worker1.run("cat", "/var/log/airflow-node/airflow-dag-follower.log").stdout[-2000:])

    memory = cluster.memory_by_daemon()
    print("memory (PSS MiB) by daemon:", json.dumps(memory, indent=1))
    assert len(memory) == len(MASTER_DAEMONS) + len(WORKERS), memory


def run_upgrade_scenario(cluster: Cluster, step: Steps) -> None:
    """The 2.11 cluster moves to Airflow 3.3.2: `airflow-node upgrade` on the master, `sync` on the workers."""
    master, to = cluster.master, "3.3.2"
    wheelhouse = cached_wheelhouse(cluster.tool, to, "3.11")  # the hosts have no network: the README's offline path

    def state(host) -> str:
        return host.run("sh", "-c", f"sha256sum /etc/airflow-node/*.toml /opt/airflow/airflow.cfg "
                        f"/etc/systemd/system/airflow-* 2>&1; readlink {cluster.venv}").stdout  # fmt: skip

    with step("U1. upgrade: an unknown target, a downgrade, a worker: one line, exit 2, nothing changed"):
        before = state(master)
        for host, args, words in [(master, ["--to", "3.3.1"], "no lock file for Airflow 3.3.1"),
                                  (master, ["--to", "2.10.5"], "not newer than the installed 2.11.2"),
                                  (cluster.workers["worker1"], ["--to", to], "this node is a worker")]:  # fmt: skip
            result = cluster.node(host, "upgrade", *args, check=False)
            assert result.returncode == 2 and words in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        print(cluster.node(master, "upgrade", "--to", to, "--dry-run").stdout)
        assert state(master) == before

    runs_before = cluster.api("GET", f"{cluster.api_root}/dags/e2e_spread/dagRuns")[1]["total_entries"]
    with step("U2. a migration made to fail (a table in its way): rolled back to a working 2.11"):
        cluster.postgres.sql("SET ROLE airflow; CREATE TABLE dag_bundle (name varchar(250) PRIMARY KEY);")
        worker3 = cluster.workers[SYSTEMD_WORKER]
        cluster.node(worker3, "stop")  # down during the drain: the upgrade names it
        failed = cluster.node(master, "upgrade", "--to", to, "--wheelhouse", wheelhouse, check=False, timeout=2400)
        print(failed.stdout[-3000:], failed.stderr)
        cluster.node(worker3, "start")
        assert "celery@worker3 did not answer" in failed.stdout, failed.stdout
        assert failed.returncode == 1 and "rolled back to Airflow 2.11.2" in failed.stderr, failed.stderr
        assert 'relation "dag_bundle" already exists' in failed.stderr  # the cause, in the one line
        assert master.run("test", "-e", "/etc/systemd/system/airflow-webserver.service", check=False).returncode == 0
        assert 'airflow_version = "2.11"' in master.run("cat", "/etc/airflow-node/cluster.toml").stdout
        cluster.run_dag("e2e_spread")
        cluster.postgres.sql("SET ROLE airflow; DROP TABLE dag_bundle;")  # what the operator fixes

    def running(dag_id: str) -> str:
        run_id = cluster.trigger_dag(dag_id)
        wait_for(lambda: cluster.task_states(dag_id, run_id)[0][1] == "running", 120, f"{dag_id} running")
        return run_id

    with step("U2b. a task still running past --drain-timeout: the upgrade stops there, nothing changed"):
        before, long_run = state(master), running("e2e_long")
        failed = cluster.node(master, "upgrade", "--to", to, "--wheelhouse", wheelhouse, "--drain-timeout", "3",
                              check=False, timeout=2400)  # fmt: skip
        print(failed.stdout[-1500:], failed.stderr)
        assert failed.returncode == 1 and "still queued or running after 3 s (e2e_long.sleepy running" in failed.stderr
        assert "nothing was changed" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
        assert state(master) == before
        active = master.run("systemctl", "is-active", "airflow-scheduler.service", check=False).stdout.strip()
        assert active == "active", active
        cluster.wait_run("e2e_long", long_run)

    with step("U3. upgrade --to 3.3.2 while a task runs: it finishes first; migrated, healthy, the history kept"):
        long_run = running("e2e_long")
        started = time.monotonic()
        done = cluster.node(master, "upgrade", "--to", to, "--wheelhouse", wheelhouse, timeout=2400)
        print(done.stdout[-3000:])
        print(f"upgrade took {time.monotonic() - started:.1f}s")
        assert "waiting for 1 task(s) to finish: e2e_long.sleepy running" in done.stdout, done.stdout
        for name in WORKERS:
            assert f"celery@{name} stopped consuming" in done.stdout, done.stdout
        assert "did not answer" not in done.stdout, done.stdout
        cluster.airflow3, cluster.api_root, cluster.authorization = True, "/api/v2", None
        cluster.login()
        assert cluster.run_state("e2e_long", long_run) == "success"  # finished on 2.11, seen through 3.3
        runs = cluster.api("GET", "/api/v2/dags/e2e_spread/dagRuns")[1]
        assert runs["total_entries"] >= runs_before + 1, runs  # the 2.11 runs, and the one after the rollback
        units = master.run("sh", "-c", "ls /etc/systemd/system/").stdout
        assert "airflow-api-server.service" in units and "airflow-webserver.service" not in units, units

    with step("U3b. until the workers follow, a 3.3 run waits queued: no 2.11 worker takes (and fails) it"):
        waiting, deadline = cluster.trigger_dag("e2e_spread"), time.monotonic() + 20
        while time.monotonic() < deadline:  # a 2.11 worker that consumed would fail a 3.3 task within seconds
            states = cluster.task_states("e2e_spread", waiting)
            assert {s for _, s, _ in states} <= {None, "scheduled", "queued"}, states
            time.sleep(2)
        assert cluster.run_state("e2e_spread", waiting) == "running", states

    with step("U4. the workers follow with `airflow-node sync`: built aside, stopped, restarted on 3.3.2"):
        # worker3 installs offline: its operator puts the new Airflow's wheels in its wheelhouse first
        worker3_wheels = cached_wheelhouse(cluster.tool, to, SYSTEMD_WORKER_PYTHON)
        venv3 = cluster.venvs[SYSTEMD_WORKER]  # a build kept from an earlier run would make this one a no-op
        cluster.workers[SYSTEMD_WORKER].run("sh", "-c", f"rm -rf {venv3}.releases/airflow-{to}-*")
        cluster.workers[SYSTEMD_WORKER].run(
            "sh", "-c", f"mkdir -p {WHEELS_DIR} && cp -a {worker3_wheels}/. {WHEELS_DIR}/"
        )
        for worker in cluster.workers.values():
            print(cluster.node(worker, "sync", "-v", timeout=1800).stdout)
        release = cluster.workers[SYSTEMD_WORKER].run("readlink", venv3).stdout.strip()
        assert f"airflow-{to}-py{SYSTEMD_WORKER_PYTHON}-" in release and release != cluster.venv, release
        for name, host in [("master", master), *cluster.workers.items()]:
            wait_for(lambda host=host: cluster.health(host).returncode == 0, 180, f"health OK on {name}", interval=3)
        cluster.wait_run("e2e_spread", waiting)
        run_id = cluster.run_dag("e2e_spread")
        hosts = {t["task_id"]: t["hostname"] for t in cluster.task_instances("e2e_spread", run_id)}
        assert hosts == {"on_worker1": WORKERS["worker1"][0], "on_worker2": WORKERS["worker2"][0]}, hosts
        view = cluster.node(cluster.workers["worker1"], "cluster", check=False).stdout
        print(view)
        assert view.count(" 3.3.2 ") == 1 + len(WORKERS) and "OK:" in view, view
