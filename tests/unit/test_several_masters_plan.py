"""What several masters change in a master's plan: keepalived for a floating address, the DAG processor
under the leader's lock, the follower, the shared admin password; and what init refuses about them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from airflow_nodes.cluster import Member, dump_cluster
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import UserError
from airflow_nodes.floating import KEEPALIVED_CONF, FloatingFacts, plan_floating
from airflow_nodes.init import InitRequest, plan_init
from airflow_nodes.node import NodeSettings
from airflow_nodes.nodeplan import build_node_plan
from airflow_nodes.sshkeys import public_key_line
from airflow_nodes.target import Target

from conftest import make_cluster

M1, M2 = "10.20.0.1", "10.20.0.2"


def master_member(name: str, address: str, seed: bytes) -> Member:
    return Member(name, "master", address, address, public_key_line(seed * 32), public_key_line(seed.upper() * 32))


TWO_MASTERS = dict(members=(master_member("m1", M1, b"a"), master_member("m2", M2, b"b")))
NODE = NodeSettings(
    role="master",
    airflow_version="3.3.2",
    init_system="systemd",
    airflow_bin="/opt/v/bin/airflow",
    airflow_node_bin="/opt/airflow-node/bin/airflow-node",
    node_name="m2",
    advertise_address=M2,
)
FACTS = FloatingFacts("eth0", "", keepalived_installed=False)


def planned(cluster, node=NODE, floating=None) -> dict:
    plan = build_node_plan(cluster, dump_cluster(cluster).encode(), node, floating=floating)
    return {f.path: f for f in plan.files}, plan


def test_one_master_has_no_follower_no_lock_and_no_shared_password():
    files, _ = planned(make_cluster())
    units = "".join(f.content.decode() for path, f in files.items() if path.endswith(".service"))
    assert "airflow-node lead" not in units and "dag-follower" not in units
    assert (
        "/opt/airflow/simple_auth_manager_passwords.json" not in files
        and "simple_auth_manager_passwords_file" not in units
    )


def test_several_masters_run_the_dag_processor_under_the_lock_a_follower_and_one_admin_password():
    cluster = make_cluster(**TWO_MASTERS)
    cluster = dataclasses.replace(cluster, secrets=dataclasses.replace(cluster.secrets, admin_password="a" * 24))
    files, _ = planned(cluster)
    processor = files["/etc/systemd/system/airflow-dag-processor.service"].content.decode()
    assert "/opt/airflow-node/bin/airflow-node lead dag-processor -- /opt/v/bin/airflow dag-processor" in processor
    assert "User=airflow" in processor  # the wrapper is no root process
    follower = files["/etc/systemd/system/airflow-dag-follower.service"].content.decode()
    assert "User=root" in follower and "ProtectSystem" not in follower  # it applies the node's plan, as init
    passwords = files[cluster.admin_passwords_file]
    assert json.loads(passwords.content) == {"admin": cluster.secrets.admin_password}
    assert (passwords.mode, passwords.owner, passwords.secret) == (0o600, "airflow", True)
    cfg = files["/opt/airflow/airflow.cfg"].content.decode()
    assert "simple_auth_manager_passwords_file = /opt/airflow/simple_auth_manager_passwords.json" in cfg


def test_keepalived_is_planned_with_the_other_masters_as_peers_and_installed_where_missing():
    cluster = make_cluster(**TWO_MASTERS, floating_address="10.20.0.100/24", api_address="10.20.0.100")
    files, triggers = plan_floating(NodeContext(cluster, NODE), FACTS)
    conf = files[0].content.decode()
    assert files[0].path == KEEPALIVED_CONF and f"unicast_src_ip {M2}" in conf and f"        {M1}\n" in conf
    assert "10.20.0.100/24 dev eth0" in conf
    commands = [" ".join(c.argv) for c in triggers[0].commands]
    assert any("apt-get install -y -qq keepalived" in c for c in commands)
    assert commands[-1] == "systemctl restart keepalived.service"
    installed = plan_floating(NodeContext(cluster, NODE), dataclasses.replace(FACTS, keepalived_installed=True))[1]
    assert not any("apt-get" in " ".join(c.argv) for c in installed[0].commands)


def test_a_master_without_peers_plans_no_keepalived():
    alone = make_cluster(members=(master_member("m2", M2, b"b"),), master_host=M2, floating_address="10.20.0.100/24",
                         api_address="10.20.0.100")  # fmt: skip
    assert plan_floating(NodeContext(alone, NODE), FACTS) == ([], [])


def test_the_cluster_address_is_where_every_node_reaches_the_api():
    cluster = make_cluster(**TWO_MASTERS, floating_address="10.20.0.100/24", api_address="10.20.0.100")
    cfg = planned(cluster)[0]["/opt/airflow/airflow.cfg"].content.decode()
    assert "base_url = http://10.20.0.100:8080" in cfg
    assert "execution_api_server_url = http://10.20.0.100:8080/execution/" in cfg


def first_master(tmp_path, **options):
    options = {"airflow_version": "3.3.2", **options}
    request = InitRequest(role="master", init_system="systemd", master_host=M1,
                          broker_url="redis://:pw@10.20.0.9:6379/0", db_url="postgresql://a:b@10.20.0.9/airflow",
                          **options)  # fmt: skip
    return plan_init(request, Target.at(str(tmp_path)))


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"floating_address": "10.20.0.100/24"}, "--floating-address: it moves between masters: set it once"),
    ],
)
def test_a_floating_address_on_a_first_init_is_refused_and_nothing_written(tmp_path, options, says):
    with pytest.raises(UserError, match=f"^{says}"):
        first_master(tmp_path, **options)
    assert list(tmp_path.iterdir()) == []


def test_a_floating_address_needs_a_second_master(tmp_path):
    from airflow_nodes.apply import apply

    apply(first_master(tmp_path).preview)
    with pytest.raises(UserError, match="^--floating-address: it moves between masters: join a second one first"):
        plan_init(InitRequest(role="master", airflow_version="3.3.2", floating_address="10.20.0.100/24"),
                  Target.at(str(tmp_path)))  # fmt: skip


def test_the_shared_passwords_file_is_replaced_whatever_the_account_wrote_in_it(tmp_path):
    """Airflow opens it for writing (the airflow account's): a change there is no edit to keep, and must
    not stop the next apply (a master's follower applies every change of the cluster file)."""
    from airflow_nodes.apply import apply, preview

    cluster = make_cluster(**TWO_MASTERS)
    cluster = dataclasses.replace(cluster, secrets=dataclasses.replace(cluster.secrets, admin_password="a" * 24))
    target = Target.at(str(tmp_path))
    node = dataclasses.replace(NODE, init_system="supervisor", supervisord_conf="/etc/supervisor/supervisord.conf")

    def converge() -> None:
        apply(preview(build_node_plan(cluster, dump_cluster(cluster).encode(), node), target))

    converge()
    passwords = target.path(cluster.admin_passwords_file)
    passwords.write_text('{"admin": "written-by-a-task"}\n')
    converge()  # no --force needed
    assert json.loads(passwords.read_text()) == {"admin": "a" * 24}
    (tmp_path / "etc/airflow-node/node.toml").write_text("# edited by hand\n")  # any other file: still protected
    with pytest.raises(UserError, match="changed since airflow-node wrote it"):
        converge()


def test_a_master_token_is_refused_on_airflow_before_3_2_and_nothing_changes(tmp_path):
    from airflow_nodes.apply import apply
    from airflow_nodes.join import master_join_token

    apply(first_master(tmp_path, airflow_version="2.11.2").preview)
    before = sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(UserError, match=r"^--role master: this cluster runs Airflow 2\.11; several schedulers need"):
        master_join_token(Target.at(str(tmp_path)), role="master")
    assert sorted((p, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before
