"""End-to-end proof of the README's two commands: a fresh Debian 12 host becomes a whole cluster.

solo    10.231.7.21  Debian 12 under systemd (nspawn), its image holding redis-server and postgresql as
                     the package manager leaves them (the test hosts have no network): the README's first
                     command (the tool, then Airflow, offline from wheels), then exactly its second, read
                     from README.md: `init --role all-in-one ... --with-redis --with-postgres --start`
joiner  10.231.7.22  a worker (own namespaces, supervisord set up by init) that joins solo with the command
                     solo printed; the enrolment alone admits it to solo's PostgreSQL (pg_hba)

Only product commands configure the hosts; the test drives Airflow through its REST API.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from hosts import (
    HOST_ENV,
    REPO,
    SUBNET,
    VENVS,
    AirflowApi,
    Container,
    Network,
    Steps,
    Worker,
    airflow_node,
    airflow_venv,
    cached_rootfs,
    cached_wheelhouse,
    fresh_workdir,
    install_tool,
    tool_venv,
    tool_wheels,
    wait_for,
)

pytestmark = pytest.mark.e2e
AIRFLOW_VERSION = "3.3.2"
SOLO, JOINER = f"{SUBNET}.21", f"{SUBNET}.22"
DAGS = """
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG("solo_local", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=False):
    BashOperator(task_id="here", bash_command="echo ran-on-$(hostname)")

with DAG("solo_remote", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=False):
    BashOperator(task_id="there", bash_command="echo ran-on-$(hostname)", queue="remote")

with DAG("solo_slow", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=False):
    BashOperator(task_id="slow", bash_command="sleep 20; echo finished-while-drained", queue="remote")
"""


def readme_command(prefix: str) -> str:
    """The README's command that starts with `prefix`: the test runs what the README says, word for word."""
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"README.md should hold exactly one line starting with {prefix!r}"
    return found[0]


@pytest.fixture(scope="module")
def hosts():
    if os.environ.get("E2E_AIRFLOW_VERSION", AIRFLOW_VERSION) != AIRFLOW_VERSION:
        pytest.skip("the one-host cluster is proven on Airflow 3.3.2 (tox -e e2e)")
    workdir = fresh_workdir(("systemd-nspawn", "debootstrap", "uv"), "afe2e-solo-")
    closers = []
    try:
        tool = tool_venv(workdir)
        wheels = tool_wheels(workdir, {"3.11": tool / "bin" / "python"})
        wheelhouse = cached_wheelhouse(tool, AIRFLOW_VERSION, "3.11")
        venv = airflow_venv(tool, AIRFLOW_VERSION)  # the joiner's, on this machine's /usr
        network = Network()
        closers.append(network.close)
        solo_ns = network.add_host("solo", SOLO)
        solo = Container(cached_rootfs("bookworm-servers"), solo_ns, [workdir, VENVS], workdir / "solo.log", "solo")
        closers.append(solo.close)
        joiner = Worker("joiner", network.add_host("joiner", JOINER), workdir / "joiner")
        closers.append(joiner.close)
        api = AirflowApi(solo_ns, SOLO, tool / "bin" / "python")
        yield {"solo": solo, "joiner": joiner, "wheels": wheels, "wheelhouse": wheelhouse, "venv": venv, "api": api}
    finally:
        for close in reversed(closers):
            close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_readme_two_commands_make_a_whole_cluster_on_one_host(hosts):
    solo, joiner, api = hosts["solo"], hosts["joiner"], hosts["api"]
    step = Steps()
    printed = []
    try:
        with step("solo: the README's first command (the tool, then Airflow; offline: from wheels)"):
            started = time.monotonic()
            install_tool(solo, hosts["wheels"])
            airflow_node(solo, "install-airflow", "--version", AIRFLOW_VERSION, "--wheelhouse", hosts["wheelhouse"],
                         timeout=1800)  # fmt: skip
            installed = time.monotonic() - started

        with step("solo: the README's second command, word for word"):
            command = readme_command("airflow-node init --role all-in-one")
            began = time.monotonic()
            init = solo.run("sh", "-c", command, env=HOST_ENV, timeout=900)
            printed.append(init.stdout + init.stderr)
            print(init.stdout)
            assert f"the UI: http://{SOLO}:8080 (user admin" in init.stdout
            token = re.search(r"AIRFLOW_NODE_JOIN_TOKEN=(\S+) airflow-node init --role worker", init.stdout).group(1)

        with step("solo: a DAG runs on its own worker (the first DAG run from the bare host)"):
            solo.run("sh", "-c", f"cat > /srv/airflow/dags/solo.py <<'EOF'\n{DAGS}EOF\n"
                     "chown airflow:airflow /srv/airflow/dags/solo.py")  # fmt: skip
            printed.append(airflow_node(solo, "sync").stdout)
            api.login_simple_auth_manager(solo)
            run_id = api.run_dag("solo_local")
            host_name = solo.run("hostname").stdout.strip()  # the image's; the README's command sets none
            assert api.results("solo_local", run_id) == {"here": f"ran-on-{host_name}"}
            first_run = time.monotonic() - began
            print(f"bare host to the first DAG run: install {installed:.0f} s, then the second command to a "
                  f"successful run {first_run:.0f} s")  # fmt: skip

        with step("solo: health exits 0 (its DAGs published), and knows the local Redis and PostgreSQL"):
            health = wait_for(lambda: (h := airflow_node(solo, "health", check=False)).returncode == 0 and h, 300,
                              "health on solo to exit 0")  # fmt: skip
            printed.append(health.stdout)
            assert health.stdout.count("local, managed by airflow-node") >= 3, health.stdout  # redis, db, units

        with step("solo: the same command again changes nothing"):
            again = solo.run("sh", "-c", command, env=HOST_ENV, timeout=900)
            printed.append(again.stdout)
            assert "Nothing to change: this node already matches." in again.stdout, again.stdout

        with step("solo: passwords never on a command line, never world-readable"):
            cluster = solo.run("cat", "/etc/airflow-node/cluster.toml").stdout
            passwords = re.findall(r'url = "(?:redis://:|postgresql://airflow:)([0-9a-f]{48})@', cluster)
            assert len(passwords) == 2, cluster
            readable = solo.run("sh", "-c", "find /etc /opt/airflow /var/lib/airflow-node /var/log -xdev -type f "
                                "-perm -o=r -print0 | xargs -0 grep -l -F -e " + " -e ".join(passwords) +
                                " || true").stdout  # fmt: skip
            assert not readable.strip(), f"a password in a world-readable file: {readable}"
            assert not any(p in text for p in passwords for text in printed)
            pg_log = solo.run("sh", "-c", "cat /var/log/postgresql/*.log").stdout
            assert not any(p in pg_log for p in passwords)

        with step("joiner: the command solo printed; its enrolment admits it to solo's PostgreSQL"):
            install_tool(joiner, hosts["wheels"])
            options = ("-c", "2", "--queues", "remote", "--venv", hosts["venv"], "--node-name", "joiner")
            result = airflow_node(joiner, "init", "--role", "worker", *options, env={"AIRFLOW_NODE_JOIN_TOKEN": token})
            printed.append(result.stdout)
            wait_for(lambda: "worker joiner, enrolled" in solo.run("cat", "/etc/airflow-node/pg_hba.conf").stdout,
                     60, "airflow-node admit to add joiner to pg_hba")  # fmt: skip
            assert (
                f"host airflow airflow {JOINER}/32 scram-sha-256"
                in solo.run("cat", "/etc/airflow-node/pg_hba.conf").stdout
            )
            airflow_node(joiner, "sync")
            health = wait_for(lambda: (h := airflow_node(joiner, "health", check=False)).returncode == 0 and h, 300,
                              "health on joiner to exit 0")  # fmt: skip
            printed.append(health.stdout)

        with step("a run lands on the joined worker"):
            run_id = api.run_dag("solo_remote")
            assert api.results("solo_remote", run_id) == {"there": "ran-on-joiner"}
            assert airflow_node(solo, "admit").stdout.strip() == "Nothing to change."  # admitted already

        with step("joiner: drained while a task runs there: it finishes, a new one waits, resume runs it"):
            slow = api.trigger_dag("solo_slow")
            wait_for(lambda: [t["state"] for t in api.task_instances("solo_slow", slow)] == ["running"], 120,
                     "the slow task to run on joiner")  # fmt: skip
            drained = airflow_node(joiner, "drain", "--timeout", "120")
            print(drained.stdout)
            assert "celery@joiner takes no new tasks (stopped consuming remote)" in drained.stdout
            assert drained.stdout.rstrip().endswith("drained")
            api.wait_run("solo_slow", slow, 60)  # it was not cut short
            assert api.results("solo_slow", slow) == {"slow": "finished-while-drained"}
            fleet = airflow_node(solo, "cluster", check=False)
            assert "drained: takes no new tasks" in fleet.stdout and fleet.returncode == 1, fleet.stdout
            waiting = api.trigger_dag("solo_remote")
            time.sleep(20)  # a consuming worker takes a task within a second or two
            assert [t["state"] for t in api.task_instances("solo_remote", waiting)] == ["queued"]
            assert "celery@joiner takes tasks again from remote" in airflow_node(joiner, "resume").stdout
            api.wait_run("solo_remote", waiting, 120)
            assert api.results("solo_remote", waiting) == {"there": "ran-on-joiner"}

        with step("solo: uninstall gives Redis and PostgreSQL their own settings back, and keeps the database"):
            result = airflow_node(solo, "uninstall")
            printed.append(result.stdout)
            assert "kept the database airflow in PostgreSQL 15/main" in result.stdout, result.stdout
            # the distribution's Redis again: loopback, no password
            assert solo.run("redis-cli", "-h", "127.0.0.1", "ping").stdout.strip() == "PONG"
            port = re.search(r"@[\d.]+:(\d+)/airflow", cluster).group(1)
            databases = solo.run("runuser", "-u", "postgres", "--", "psql", "-p", port, "-Atc",
                                 "SELECT datname FROM pg_database WHERE datname = 'airflow'").stdout  # fmt: skip
            assert databases.strip() == "airflow"
            assert not any(p in text for p in passwords for text in printed)
    except BaseException:
        print(f"\n!!! FAILED at step: {step.current}\n{diagnose(solo)}", flush=True)
        raise
    finally:
        print(step.report())


def diagnose(solo) -> str:
    parts = []
    for unit in ("redis-server", "postgresql@15-main", "airflow-db-migrate", "airflow-api-server", "airflow-scheduler",
                 "airflow-dag-processor", "airflow-worker", "airflow-node-admit"):  # fmt: skip
        journal = solo.run("journalctl", "--no-pager", "-n", "30", "-u", unit, check=False)
        parts.append(f"--- solo {unit}\n{journal.stdout}")
    health = airflow_node(solo, "health", check=False, timeout=120)
    parts.append(f"--- health on solo (exit {health.returncode})\n{health.stdout}{health.stderr}")
    return "\n".join(parts)
