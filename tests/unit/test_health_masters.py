"""Health on one of several masters checks its own daemons, at its own address: a real local HTTP server
answers on 127.0.0.1 only, and the addresses of the other master and of the cluster (127.0.0.2, 127.0.0.3,
loopback where nothing listens on that port) refuse."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_health_web import AIRFLOW_3_HEALTHY, web  # noqa: F401 - web is a fixture of these tests too

from airflow_nodes.cluster import MASTER, Member
from airflow_nodes.context import NodeContext
from airflow_nodes.health import flower, leader, scheduler, webserver
from airflow_nodes.health.model import ProbeInput, Status
from airflow_nodes.health.runner import select_probes
from airflow_nodes.node import NodeSettings
from airflow_nodes.sshkeys import public_key_line
from airflow_nodes.target import Target

from conftest import make_cluster

FIRST, OWN, NOBODY = "127.0.0.2", "127.0.0.1", "127.0.0.3"


def master_member(name: str, address: str) -> Member:
    key, host_key = (public_key_line(name.encode().ljust(32, c)) for c in (b"k", b"h"))
    return Member(name, MASTER, address, address, key, host_key)


def probe_input(port: int, own: str = OWN, role: str = "master", api_address: str = "") -> ProbeInput:
    """The second master (or a worker) of a cluster whose first master is FIRST; every port is the stub's."""
    cluster = make_cluster(master_host=FIRST, api_address=api_address, web_port=port, flower_port=port,
                           scheduler_health_port=port,
                           members=(master_member("m1", FIRST), master_member("m2", OWN)))  # fmt: skip
    node = NodeSettings(role=role, airflow_version="3.3.2", init_system="supervisor", airflow_bin="/opt/bin/airflow",
                        airflow_node_bin="/usr/local/bin/airflow-node", node_name="m2",
                        advertise_address=own)  # fmt: skip
    ctx = NodeContext(cluster, node)
    return ProbeInput(ctx=ctx, target=Target.at(Path("/nonexistent")), timeout=2.0, deadline=time.monotonic() + 2.0)


@pytest.fixture
def served(web):  # noqa: F811 - the fixture imported above
    web.routes["/health"] = (200, {"status": "healthy"})  # the scheduler's health server
    web.routes["/healthcheck"] = (200, b"OK")
    web.routes["/api/workers?status=true"] = (200, {"celery@w1": True})
    web.routes["/api/v2/monitor/health"] = (200, AIRFLOW_3_HEALTHY)
    return web.server_address[1]


def test_a_second_master_asks_its_own_scheduler_and_flower(served):
    given = probe_input(served)
    (result,) = scheduler.check(given)
    assert (result.status, result.target) == (Status.OK, f"http://{OWN}:{served}/health")
    results = flower.check(given)
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert all(r.target.startswith(f"http://{OWN}:{served}/") for r in results)


def test_its_own_scheduler_down_is_found_while_the_first_masters_address_is_not_asked(served):
    (result,) = scheduler.check(probe_input(served, own=NOBODY))
    assert result.status == Status.CRITICAL and result.target == f"http://{NOBODY}:{served}/health"


def test_a_worker_still_asks_the_first_masters_flower(served):
    given = probe_input(served, role="worker")
    assert flower.flower_url(given.ctx) == f"http://{FIRST}:{served}"


def test_the_web_probe_checks_the_cluster_address_and_this_hosts_own_server(served):
    # the cluster address answers; this host's server does not
    results = webserver.check(probe_input(served, own=NOBODY, api_address=OWN))
    *cluster, own = results
    assert {r.status for r in cluster} == {Status.OK} and len(cluster) == 4
    assert all(r.target.startswith(f"http://{OWN}:{served}/api/v2/monitor/health ") for r in cluster)
    assert own.status == Status.CRITICAL and own.target == f"http://{NOBODY}:{served}/api/v2/monitor/health"
    assert own.detail.startswith("this host's server: ")
    # this host's server answers; the cluster address does not
    *cluster, own = webserver.check(probe_input(served, api_address=NOBODY))
    assert [r.status for r in cluster] == [Status.CRITICAL] and cluster[0].target.startswith(f"http://{NOBODY}:")
    assert (own.status, own.detail) == (Status.OK, "this host's server answers its health JSON")


def test_a_master_that_is_the_cluster_address_asks_once(served):
    results = webserver.check(probe_input(served, api_address=OWN))  # a floating address this master holds
    assert [r.status for r in results] == [Status.OK] * 4
    assert {r.target.split(" ")[0] for r in results} == {f"http://{OWN}:{served}/api/v2/monitor/health"}


def test_the_leader_probe_runs_on_several_masters_only(served):
    several = probe_input(served)
    assert leader.locked_daemons(several) == ["dag-processor"]
    assert "leader" in [p.name for p in select_probes(several, None)[0]]
    one = ProbeInput(ctx=NodeContext(make_cluster(), several.ctx.node), target=several.target, timeout=1.0,
                     deadline=several.deadline)  # fmt: skip
    chosen, skipped = select_probes(one, None)
    assert "leader" not in [p.name for p in chosen] and "leader" in skipped
