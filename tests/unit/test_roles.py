"""The table of roles: what each runs and probes, read by every role decision."""

from __future__ import annotations

import pytest

from airflow_nodes.errors import UserError
from airflow_nodes.health.runner import PROBE_NAMES
from airflow_nodes.init import InitRequest, plan_init
from airflow_nodes.initsystems import all_init_systems
from airflow_nodes.node import INIT_SYSTEMS
from airflow_nodes.roles import MASTER, ROLES, WORKER, role_named
from airflow_nodes.target import Target
from airflow_nodes.versions import AIRFLOW_2, AIRFLOW_3


def test_every_probe_of_a_role_exists_and_every_probe_has_a_role():
    named = {name for role in ROLES.values() for name in role.probes}
    assert named <= set(PROBE_NAMES)
    assert set(PROBE_NAMES) <= named


@pytest.mark.parametrize("line", [AIRFLOW_2, AIRFLOW_3])
def test_daemons_by_role_and_line(line):
    worker = line.worker_daemon(4, (), "celery@w1")
    master = [d.name for d in MASTER.daemons(line, worker)]
    assert master[:1] == ["db-migrate"] and "worker" not in master and "dag-follower" not in master
    assert "dag-processor" in master  # standalone on 2.x too (versions.py says why)
    assert [d.name for d in WORKER.daemons(line, worker)] == ["worker", "dag-follower"]


def test_an_unknown_role_is_refused_naming_the_option():
    with pytest.raises(UserError, match=r"^--role: unknown role 'scheduler' \(expected master, worker, all-in-one\)$"):
        role_named("scheduler")


@pytest.mark.parametrize(
    ("role", "option", "message"),
    [
        ("master", {"concurrency": 4}, "--concurrency: for a worker, not a master"),
        ("master", {"from_master": "m1"}, "--from-master: for a worker, not a master"),
        ("all-in-one", {"join": "afn1-x"}, r"--join \(or \$AIRFLOW_NODE_JOIN_TOKEN\): for a master, not a all-in-one"),
        ("worker", {"broker_url": "redis://h:6379/0"}, "--broker-url: set on the master only; a worker takes"),
    ],
)
def test_an_option_of_another_role_is_refused_and_nothing_is_written(tmp_path, role, option, message):
    request = InitRequest(role=role, airflow_version="3.3.2", **option)
    with pytest.raises(UserError, match=f"^{message}"):
        plan_init(request, Target.at(str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_the_init_systems_the_cli_offers_are_the_ones_there_are():
    assert {system.name for system in all_init_systems()} == set(INIT_SYSTEMS)
