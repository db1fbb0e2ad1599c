"""End-to-end proof of several masters: the cluster survives the loss of the master that serves it.

data     10.231.7.5    Redis and PostgreSQL on a host of their own (their HA is theirs), and the client
                       the test reaches the cluster address from
master1  10.231.7.1    Debian 12 under systemd (nspawn): the first master
master2  10.231.7.2    Debian 12 under systemd (nspawn): joined with `join-token --role master`
worker1  10.231.7.11   a worker (own namespaces, supervisord set up by init), joined through master1
cluster  10.231.7.100  the floating address keepalived moves between the masters (`--floating-address`)

The masters' images hold keepalived as the package manager leaves it (the test hosts have no network).
The cluster starts on Airflow 3.2.2 (the oldest line several masters run on) and `airflow-node upgrade
--to 3.3.2` on master1 moves it: master2 stops its Airflow while master1 migrates the DB, then moves by
itself; the worker follows with its sync (every host builds offline, from the wheelhouse init recorded).
On 3.3.2, a DAG run is in progress when the master holding the cluster address is cut off (its network
link down: its processes go on, cut off, as on a failed switch port). Then: the address answers from the
other master, new runs are scheduled and succeed, the running task's success is recorded, the worker
syncs through the other master, and `airflow-node cluster` shows the master missing (exit 1). A
cluster-file change made meanwhile reaches the cut master once it is back, with nothing done by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from urllib.parse import quote

import pytest
from hosts import (
    SUBNET,
    VENVS,
    AirflowApi,
    Container,
    Network,
    Postgres,
    Redis,
    Steps,
    Worker,
    airflow_node,
    airflow_venv,
    cached_rootfs,
    cached_wheelhouse,
    fresh_workdir,
    install_tool,
    sh,
    tool_venv,
    tool_wheels,
    wait_for,
)

pytestmark = pytest.mark.e2e
AIRFLOW_VERSION = "3.3.2"  # the failover's; the cluster starts on START_VERSION and is upgraded to it
START_VERSION = "3.2.2"
MASTER2_VENV = "/opt/airflow-venv"
DATA, WORKER1, FLOATING = f"{SUBNET}.5", f"{SUBNET}.11", f"{SUBNET}.100"
MASTERS = {"master1": f"{SUBNET}.1", "master2": f"{SUBNET}.2"}
REDIS_PASSWORD, DB_PASSWORD = "redis-ha-" + os.urandom(6).hex(), "pg-ha-" + os.urandom(6).hex()
DAGS = """
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

with DAG("ha_quick", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=False):
    BashOperator(task_id="quick", bash_command="echo ran-on-$(hostname)")

with DAG("ha_long", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, is_paused_upon_creation=False):
    BashOperator(task_id="long", bash_command="sleep 40; echo finished-through-the-failover")
"""


@pytest.fixture(scope="module")
def hosts():
    if os.environ.get("E2E_AIRFLOW_VERSION", AIRFLOW_VERSION) != AIRFLOW_VERSION:
        pytest.skip("several masters are proven on Airflow 3.3.2 (tox -e e2e): 2.x refuses a second master")
    workdir = fresh_workdir(("systemd-nspawn", "debootstrap", "uv", "redis-server"), "afe2e-ha-")
    closers = []
    try:
        tool = tool_venv(workdir)
        wheels = tool_wheels(workdir, {"3.11": tool / "bin" / "python"})
        venv = airflow_venv(tool, START_VERSION)  # on this machine's Debian python: every host runs it
        # the hosts have no network: each builds the new Airflow from this (init --wheelhouse records it)
        wheelhouse = cached_wheelhouse(tool, AIRFLOW_VERSION, "3.11")
        start_wheelhouse = cached_wheelhouse(tool, START_VERSION, "3.11")  # master2's own venv, installed offline
        network = Network()
        closers.append(network.close)
        data_ns = network.add_host("data", DATA)
        redis = Redis(data_ns, DATA, REDIS_PASSWORD, workdir / "redis")
        closers.append(redis.stop)
        postgres = Postgres(data_ns, DATA, DB_PASSWORD, workdir / "postgres")
        closers.append(postgres.close)
        masters = {}
        for name, address in MASTERS.items():
            namespace = network.add_host(name, address)
            # a VM's root may add addresses (keepalived does); nspawn keeps that capability only when asked
            masters[name] = Container(cached_rootfs("bookworm-masters"), namespace, [workdir, VENVS],
                                      workdir / f"{name}.log", name, capabilities=("CAP_NET_ADMIN",))  # fmt: skip
            closers.append(masters[name].close)
        worker1 = Worker("worker1", network.add_host("worker1", WORKER1), workdir / "worker1")
        closers.append(worker1.close)
        for host in (*masters.values(), worker1):
            install_tool(host, wheels)
        api = AirflowApi(data_ns, FLOATING, tool / "bin" / "python")  # a user's client, on no master
        yield {"masters": masters, "worker1": worker1, "venv": venv, "wheelhouse": wheelhouse, "api": api,
               "start_wheelhouse": start_wheelhouse, "network": network}  # fmt: skip
    finally:
        for close in reversed(closers):
            close()
        shutil.rmtree(workdir, ignore_errors=True)


def holder(masters: dict) -> str | None:
    """The master whose interfaces carry the cluster address now. None when none does, or when two do:
    for the instant after two masters that were cut apart see each other again, until their adverts
    settle it (a wait_for on holder fails when that lasts)."""
    found = [name for name, host in masters.items() if f" {FLOATING}/24 " in host.run("ip", "-o", "addr").stdout]
    return found[0] if len(found) == 1 else None


def test_the_cluster_survives_the_loss_of_the_master_serving_it(hosts):
    masters, worker1, api, venv = hosts["masters"], hosts["worker1"], hosts["api"], hosts["venv"]
    wheelhouse = hosts["wheelhouse"]
    master1, master2 = masters["master1"], masters["master2"]
    step = Steps()
    printed: list[str] = []

    def node(host, *args, **kwargs):
        result = airflow_node(host, *args, **kwargs)
        printed.append(result.stdout + result.stderr)
        return result

    try:
        with step("master1: init (Redis and PostgreSQL on the data host), a DAG, sync, start"):
            broker = f"redis://:{quote(REDIS_PASSWORD)}@{DATA}:6379/0"
            db = f"postgresql://airflow:{quote(DB_PASSWORD)}@{DATA}:5432/airflow"
            node(
                master1,
                "init",
                "--role",
                "master",
                "--master-host",
                MASTERS["master1"],
                "--venv",
                venv,
                "--wheelhouse",
                wheelhouse,
                "--node-name",
                "master1",
                env={"AIRFLOW_NODE_BROKER_URL": broker, "AIRFLOW_NODE_DB_URL": db},
            )
            master1.run("sh", "-c", f"cat > /srv/airflow/dags/ha.py <<'EOF'\n{DAGS}EOF\n"
                        "chown airflow:airflow /srv/airflow/dags/ha.py")  # fmt: skip
            node(master1, "sync")
            node(master1, "start")

        with step("bad input: a worker token for a master, a second master on a cluster it cannot run on"):
            worker_token = token_of(node(master1, "join-token").stdout, "worker")
            refused = airflow_node(master2, "init", "--role", "master", "--venv", venv, check=False,
                                   env={"AIRFLOW_NODE_JOIN_TOKEN": worker_token})  # fmt: skip
            assert refused.returncode == 2 and "--join: this token joins a worker, not a master" in refused.stderr
            assert master2.run("test", "-e", "/etc/airflow-node", check=False).returncode != 0  # nothing written
            refused = airflow_node(master1, "init", "--role", "master", "--floating-address", f"{FLOATING}/24",
                                   check=False)  # fmt: skip
            assert refused.returncode == 2 and "join a second one first" in refused.stderr, refused.stderr

        with step("master2: joins with a master token, and starts"):
            master_token = token_of(node(master1, "join-token", "--role", "master").stdout, "master")
            refused = airflow_node(worker1, "init", "--role", "worker", "--venv", venv, check=False,
                                   env={"AIRFLOW_NODE_JOIN_TOKEN": master_token})  # fmt: skip
            assert refused.returncode == 2 and "this token joins a master, not a worker" in refused.stderr
            # master2's Airflow is a venv of its own (the others share this machine's): its upgrade is a build
            node(master2, "install-airflow", "--version", START_VERSION, "--venv", MASTER2_VENV, "--wheelhouse",
                 hosts["start_wheelhouse"], timeout=1800)  # fmt: skip
            print(node(master2, "init", "--role", "master", "--venv", MASTER2_VENV, "--wheelhouse", wheelhouse,
                       "--node-name", "master2", env={"AIRFLOW_NODE_JOIN_TOKEN": master_token}).stdout)  # fmt: skip
            node(master2, "start")
            # master1's follower takes master2 in: both masters, in both files
            wait_for(lambda: '"master2" = {' in master1.run("cat", "/etc/airflow-node/cluster.toml").stdout, 60,
                     "master1 to list master2 among the members")  # fmt: skip

        with step("the floating address, set on master1, reaches master2; keepalived holds it on one"):
            taken = airflow_node(master2, "init", "--role", "master", "--floating-address", f"{MASTERS['master1']}/24",
                                 check=False)  # fmt: skip
            assert taken.returncode == 2 and "is in use" in taken.stderr, taken.stderr  # a host answers there
            node(master1, "init", "--role", "master", "--floating-address", f"{FLOATING}/24")
            wait_for(
                lambda: (
                    f'floating_address = "{FLOATING}/24"' in master2.run("cat", "/etc/airflow-node/cluster.toml").stdout
                ),
                60,
                "master2 to take the floating address",
            )
            wait_for(lambda: holder(masters), 120, "a master to hold the cluster address")
            api.login_simple_auth_manager(master1, "/opt/airflow/simple_auth_manager_passwords.json")

        with step("worker1: joins through master1, syncs; a DAG run through the cluster address"):
            token = token_of(node(master1, "join-token").stdout, "worker")
            node(
                worker1,
                "init",
                "--role",
                "worker",
                "-c",
                "2",
                "--venv",
                venv,
                "--wheelhouse",
                wheelhouse,
                "--node-name",
                "worker1",
                env={"AIRFLOW_NODE_JOIN_TOKEN": token},
            )
            node(worker1, "sync")
            run_id = api.run_dag("ha_quick", timeout=300)
            assert api.results("ha_quick", run_id) == {"quick": "ran-on-worker1"}
            for name, host in (*masters.items(), ("worker1", worker1)):
                result = wait_for(lambda host=host: (h := airflow_node(host, "health", check=False)).returncode == 0
                                  and h, 300, f"health on {name}", interval=3)  # fmt: skip
                printed.append(result.stdout)
            view = node(worker1, "cluster", check=False)
            assert view.returncode == 0, view.stdout

        with step(f"upgrade --to {AIRFLOW_VERSION} on master1: master2 stops, then moves by itself; worker1 syncs"):
            # a build kept from an earlier run would make the builds no-ops
            master1.run("sh", "-c", f"rm -rf {venv}.releases/airflow-{AIRFLOW_VERSION}-*")
            started = time.monotonic()
            upgraded = node(master1, "upgrade", "--to", AIRFLOW_VERSION, timeout=2400)
            took = time.monotonic() - started
            print(upgraded.stdout)
            assert "the other masters stopped their Airflow" in upgraded.stdout, upgraded.stdout
            assert f"the other masters are on Airflow {AIRFLOW_VERSION}" in upgraded.stdout, upgraded.stdout
            # the follower says what it did once its round is over, just after its record said so
            journal = ("journalctl", "--no-pager", "-u", "airflow-dag-follower")
            follower = wait_for(lambda: f"the master moved to Airflow {AIRFLOW_VERSION}" in (j := master2.run(*journal)
                                .stdout) and j, 60, "master2's follower to say it moved")  # fmt: skip
            assert f"upgrades the cluster to Airflow {AIRFLOW_VERSION}" in follower, follower
            assert f"built Airflow {AIRFLOW_VERSION} in" in follower, follower  # its own venv, from its wheelhouse
            assert f"{MASTER2_VENV}.releases/airflow-{AIRFLOW_VERSION}-" in master2.run("readlink", MASTER2_VENV).stdout
            assert f'airflow_version = "{AIRFLOW_VERSION}"' in master2.run("cat", "/etc/airflow-node/node.toml").stdout
            print(f"upgrade with two masters: {took:.0f} s, the other master on {AIRFLOW_VERSION} when it returned")
            node(worker1, "sync")  # what its cron line does within its interval
            wait_for(lambda: holder(masters), 120, "a master to hold the cluster address")
            api.login_simple_auth_manager(master1, "/opt/airflow/simple_auth_manager_passwords.json")
            run_id = api.run_dag("ha_quick", timeout=300)
            assert api.results("ha_quick", run_id) == {"quick": "ran-on-worker1"}
            for name, host in (*masters.items(), ("worker1", worker1)):
                result = wait_for(lambda host=host: (h := airflow_node(host, "health", check=False)).returncode == 0
                                  and h, 300, f"health on {name}", interval=3)  # fmt: skip
                assert f"Airflow {AIRFLOW_VERSION}, same set as the master" in result.stdout, result.stdout
            view = fleet_view(worker1, 0, "", 120, "the fleet view to be consistent on the new Airflow")
            assert view.stdout.count(AIRFLOW_VERSION) >= 3, view.stdout

        cut = holder(masters)
        assert cut, "one master holds the cluster address"
        other = next(name for name in masters if name != cut)
        with step(f"{cut} (holding the cluster address) is cut off while a task runs"):
            long_run = api.trigger_dag("ha_long")
            wait_for(lambda: [t["state"] for t in api.task_instances("ha_long", long_run)] == ["running"], 120,
                     "the long task to run")  # fmt: skip
            cut_at = time.monotonic()
            sh(["ip", "-n", f"afe2e-{cut}", "link", "set", f"eth-{cut}", "down"])

        with step(f"the cluster address answers from {other}; new runs are scheduled and succeed"):
            wait_for(lambda: answers(FLOATING), 30, "the cluster address to answer", interval=0.2)
            moved = time.monotonic() - cut_at
            assert holder({other: masters[other]}) == other
            new_run = api.trigger_dag("ha_quick")
            wait_for(lambda: (tis := api.task_instances("ha_quick", new_run)) and tis[0]["state"] not in
                     (None, "scheduled"), 120, "the new run's task queued")  # fmt: skip
            scheduled = time.monotonic() - cut_at
            api.wait_run("ha_quick", new_run, 180)
            done = time.monotonic() - cut_at
            api.wait_run("ha_long", long_run, 180)  # the task that ran through the failover
            assert api.results("ha_long", long_run) == {"long": "finished-through-the-failover"}
            print(f"failover: cluster address answering {moved:.1f} s after the cut, the first new run scheduled "
                  f"{scheduled:.1f} s, its task done {done:.1f} s")  # fmt: skip
            assert moved < 10 and scheduled < 60, (moved, scheduled)

        with step(f"worker1 syncs through {other}; `airflow-node cluster` shows {cut} missing (exit 1)"):

            def sync_through_other():  # tried again as its cron line would: a try has stalled once in 6 runs
                result = airflow_node(worker1, "sync", "-v", check=False)
                if result.returncode != 0:
                    print(f"worker1's sync failed: {result.stderr.strip()}\n{sshd_journal(masters[other])}")
                return result.returncode == 0 and result

            synced = wait_for(sync_through_other, 180, f"worker1 to sync through {other}", interval=5)
            printed.append(synced.stdout + synced.stderr)
            assert f"the master {MASTERS[other]} offers" in synced.stdout, synced.stdout
            # a master silent for 60 s is missing (the other's own failed DAG sync, from the first master's
            # source, is a warning of its own meanwhile)
            missing = f"missing master {cut}"
            view = fleet_view(worker1, 1, missing, 120, f"the fleet view to miss {cut}")
            print(view.stdout)

        with step(f"a cluster-file change on {other} while {cut} is away; {cut} comes back and takes it"):
            node(masters[other], "init", "--role", "master", "--visibility-timeout", "7300")
            sh(["ip", "-n", f"afe2e-{cut}", "link", "set", f"eth-{cut}", "up"])
            back = time.monotonic()
            wait_for(lambda: "visibility_timeout = 7300" in masters[cut].run("cat", "/etc/airflow-node/cluster.toml")
                     .stdout, 120, f"{cut} to take the change")  # fmt: skip
            print(f"{cut} caught up {time.monotonic() - back:.1f} s after its link came back")
            # a master restarts its API server for a peer's change only once another answers: one master
            # serves the address all along (nopreempt keeps it where it is, unless the one back has the higher
            # address: VRRP's tie-break of two masters that saw each other late)
            wait_for(lambda: holder(masters), 60, "a master to hold the cluster address")
            for host in (masters[other], worker1):  # what their cron lines do within their interval
                node(host, "sync")
            view = fleet_view(worker1, 0, "", 180, f"the fleet view to count {cut} again")
            assert "visibility_timeout = 7300" in worker1.run("cat", "/opt/airflow/airflow.cfg").stdout
            run_id = api.run_dag("ha_quick", timeout=300)

        with step("no secret in anything airflow-node printed"):
            cluster = master1.run("cat", "/etc/airflow-node/cluster.toml").stdout
            secrets = [REDIS_PASSWORD, DB_PASSWORD, *re.findall(r'^\w+(?:_key|_secret|_password) = "([^"]+)"$',
                                                                 cluster, re.M)]  # fmt: skip
            assert len(secrets) >= 7, cluster
            assert not [s for s in secrets if any(s in text for text in printed)]
    except BaseException:
        print(f"\n!!! FAILED at step: {step.current}\n{diagnose(masters, worker1)}", flush=True)
        raise
    finally:
        print(step.report())


def answers(address: str) -> bool:
    """Whether the API server at the address answers, seen from the data host (a 1 s connect)."""
    probe = f"import urllib.request; urllib.request.urlopen('http://{address}:8080/api/v2/version', timeout=1)"
    return sh(["ip", "netns", "exec", "afe2e-data", "python3", "-c", probe], check=False).returncode == 0


def token_of(output: str, role: str) -> str:
    return re.search(rf"AIRFLOW_NODE_JOIN_TOKEN=(\S+) airflow-node init --role {role}", output).group(1)


def fleet_view(host, code: int, words: str, timeout: float, what: str):
    """Wait until `airflow-node cluster` on host exits `code` saying `words`; return its result, or fail
    showing the last view."""
    last = None

    def shown():
        nonlocal last
        last = airflow_node(host, "cluster", check=False)
        return last.returncode == code and words in last.stdout and last

    try:
        return wait_for(shown, timeout, what, interval=5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last view (exit {last.returncode}):\n{last.stdout}{last.stderr}") from None


def sshd_journal(host) -> str:
    """What sshd and logind said lately (a sync's connection that stalls stalls there)."""
    return host.run("journalctl", "--no-pager", "-n", "40", "-u", "ssh", "-u", "systemd-logind", check=False).stdout


def diagnose(masters: dict, worker1) -> str:
    parts = []
    for name, host in masters.items():
        for unit in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-dag-follower",
                     "keepalived"):  # fmt: skip
            journal = host.run("journalctl", "--no-pager", "-n", "30", "-u", unit, check=False)
            parts.append(f"--- {name} {unit}\n{journal.stdout}")
        parts.append(f"--- {name} sshd and logind\n{sshd_journal(host)}")
        health = airflow_node(host, "health", check=False, timeout=120)
        parts.append(f"--- health on {name} (exit {health.returncode})\n{health.stdout}{health.stderr}")
    for log in sorted((worker1.workdir / "var/log/airflow").glob("*.log")):
        parts.append(f"--- worker1 {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    return "\n".join(parts)
