"""Root runs, builds in and hands out only what no other account can change.

Each test plays the airflow account: the tree it could change belongs to a real second account
(nobody), as AIRFLOW_HOME belongs to airflow on a node, and root must refuse to act through it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from airflow_nodes.cluster import check_account_and_home, check_served_cluster, dump_cluster
from airflow_nodes.context import NodeContext
from airflow_nodes.detect import DEFAULT_VENV, interpreter_of, untrusted_in_venv
from airflow_nodes.errors import UserError
from airflow_nodes.health import migrations
from airflow_nodes.health.model import ProbeInput, Status
from airflow_nodes.init import InitRequest, with_moved_venv
from airflow_nodes.node import LOG_DIR, NodeSettings
from airflow_nodes.nodeplan import build_node_plan
from airflow_nodes.syncing.releases import DagLayout, prepare_work_dirs
from airflow_nodes.target import Target
from airflow_nodes.trust import first_untrusted

from conftest import make_cluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plays a second account: needs root")

NOBODY = pwd.getpwnam("nobody")


def give_to_nobody(*paths: Path) -> None:
    for path in paths:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)


@pytest.fixture
def venv(tmp_path) -> Path:
    """A real venv root made, in a directory only root can change (tmp_path: root's, 0700)."""
    path = tmp_path / "opt" / "airflow-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    return path


def test_a_venv_root_made_in_its_own_directory_is_trusted(venv):
    assert untrusted_in_venv(venv / "bin" / "python") is None
    assert first_untrusted(venv / "bin" / "python") is None


def test_a_venv_inside_a_directory_the_account_owns_is_refused(tmp_path):
    home = tmp_path / "airflow-home"  # AIRFLOW_HOME, the account's
    home.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", home / "venv"], check=True)
    give_to_nobody(home)
    python = home / "venv" / "bin" / "python"
    assert untrusted_in_venv(python) == home  # the account could swap the venv for one of its own
    with pytest.raises(UserError, match="will not run it as root"):
        interpreter_of(home / "venv" / "bin" / "airflow")


@pytest.mark.parametrize("part", ["pyvenv.cfg", "site-packages", "pth"])
def test_a_venv_part_the_account_may_change_is_refused(venv, part):
    site = next(venv.glob("lib/python*/site-packages"))
    changed = {"pyvenv.cfg": venv / "pyvenv.cfg", "site-packages": site, "pth": site / "evil.pth"}[part]
    if part == "pth":
        changed.write_text("import os; os.system('touch /tmp/owned')\n")
    give_to_nobody(changed)
    assert untrusted_in_venv(venv / "bin" / "python") == changed


def test_a_link_the_account_planted_on_the_way_is_not_followed(tmp_path, venv):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    give_to_nobody(theirs)
    (theirs / "venv").symlink_to(venv)  # a link in the account's directory to root's venv
    assert first_untrusted(theirs / "venv" / "bin" / "python") == theirs
    root_link = tmp_path / "link"
    root_link.symlink_to(theirs / "venv")  # root's link that leads through the account's directory
    assert first_untrusted(root_link / "bin" / "python") == theirs


def test_install_airflow_refuses_a_venv_where_the_account_can_write(run_cli, tmp_path):
    home = tmp_path / "opt-airflow"
    home.mkdir()
    give_to_nobody(home)
    result = run_cli("install-airflow", "--version", "3.3.2", "--venv", home / "venv")
    assert result.code == 2 and "--venv" in result.err and len(result.err.strip().splitlines()) == 1
    assert list(home.iterdir()) == []


@pytest.fixture
def open_dir():
    """A directory of root's that other accounts may enter (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="airflow-node-test-") as path:
        os.chmod(path, 0o755)
        yield Path(path)


def test_deep_health_runs_airflow_as_the_airflow_account_never_as_root(open_dir):
    stage = open_dir / "stage"  # the account may write here; root's own tree holds the stand-in
    stage.mkdir()
    give_to_nobody(stage)
    airflow = open_dir / "airflow"
    airflow.write_text(f"#!/bin/sh\nid -u > {stage}/uid\n")
    airflow.chmod(0o755)
    cluster = make_cluster("3.3", airflow_user="nobody", airflow_home=str(stage))
    node = NodeSettings("master", "3.3.2", "systemd", str(airflow), "/usr/local/bin/airflow-node", "m1")
    system = Target(Path("/"), real_system=True, privileged=True)
    probe_input = ProbeInput(NodeContext(cluster, node), system, timeout=30, deadline=time.monotonic() + 30)
    [result] = migrations.check(probe_input)
    assert result.status == Status.OK, result
    assert (stage / "uid").read_text().strip() == str(NOBODY.pw_uid)


def test_supervisord_writes_logs_only_in_a_directory_of_roots():
    cluster = make_cluster("3.3")
    node = NodeSettings("master", "3.3.2", "supervisor", "/opt/airflow-venv/bin/airflow", "/usr/bin/airflow-node", "m1")
    plan = build_node_plan(cluster, b"", node)
    [log_dir] = [d for d in plan.dirs if d.path == LOG_DIR]
    assert (log_dir.owner, log_dir.group) == ("root", "root")
    account_dirs = [d.path for d in plan.dirs if d.owner == cluster.airflow_user]
    conf = "\n".join(f.content.decode() for f in plan.files if f.path.endswith(".conf"))
    logs = [line.split("=", 1)[1] for line in conf.splitlines() if line.startswith(("logfile=", "stdout_logfile="))]
    assert logs and all(os.path.dirname(log) == LOG_DIR for log in logs)
    assert not any(log.startswith(d + "/") for log in logs for d in account_dirs)


def test_a_served_cluster_file_never_changes_the_account_or_the_home():
    ours = make_cluster("3.3", airflow_home="/opt/airflow")
    check_served_cluster(make_cluster("3.3", airflow_home="/opt/airflow", web_port=8081), ours, "served")
    key_url = "postgresql://a@10.20.0.1/airflow?sslmode=require&sslkey=/opt/airflow/dags/evil.key"
    hostile = (
        dict(airflow_user="postgres"),
        dict(airflow_home="/opt/other"),
        dict(db_url=key_url),
        dict(dags_source="/tmp/x"),
    )  # a path a task could turn into a link to the sync key
    for changed in hostile:
        with pytest.raises(UserError, match="a sync never (changes|points)"):
            check_served_cluster(make_cluster("3.3", **{"airflow_home": "/opt/airflow", **changed}), ours, "served")


def test_root_never_hands_a_served_account_a_directory_that_is_not_its_own(tmp_path):
    with pytest.raises(UserError, match="never run as root"):
        check_account_and_home(make_cluster("3.3", airflow_user="root"), tmp_path / "new", "served")
    # an account of this host that airflow-node did not make for this home: a service's, say
    with pytest.raises(UserError, match="did not make"):
        check_account_and_home(make_cluster("3.3", airflow_user="nobody", airflow_home="/opt/x"), tmp_path, "served")
    full = tmp_path / "dpkg"  # a directory of root's, with content: it would be handed to the account
    full.mkdir()
    (full / "status").write_text("root's\n")
    cluster = make_cluster("3.3", airflow_user="airflow-node-absent", airflow_home=str(full))
    with pytest.raises(UserError, match="cluster.airflow_home"):
        check_account_and_home(cluster, full, "served")
    empty = tmp_path / "empty"
    empty.mkdir()
    check_account_and_home(make_cluster("3.3", airflow_user="airflow-node-absent", airflow_home=str(empty)), empty, "s")
    check_account_and_home(make_cluster("3.3", airflow_user="airflow-node-absent"), tmp_path / "missing", "s")


def test_a_mirror_the_airflow_account_owned_is_fetched_anew_by_the_sync_account(tmp_path):
    layout = DagLayout(tmp_path, tmp_path / "opt/airflow/dags")
    layout.mirror.mkdir(parents=True)
    (layout.mirror / "planted").symlink_to("/etc/shadow")  # what the airflow account left in its old mirror
    sync_account = (NOBODY.pw_uid, NOBODY.pw_gid)  # stands in for airflow-sync
    prepare_work_dirs(layout, sync_account)
    info = layout.mirror.lstat()
    assert list(layout.mirror.iterdir()) == [] and (info.st_uid, info.st_gid) == sync_account
    assert info.st_mode & 0o777 == 0o700  # no one else enters what the sync account fetched
    assert Path("/etc/shadow").exists()  # the link was removed, not followed


def test_init_moves_a_venv_the_airflow_account_can_change_to_roots_own(run_cli, tmp_path):
    home = tmp_path / "opt/airflow"  # the old default: the venv in AIRFLOW_HOME
    home.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", home / "venv"], check=True)
    give_to_nobody(home)
    root = tmp_path / "node"
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(dump_cluster(make_cluster("3.3")))
    result = run_cli(
        "init",
        "--role",
        "worker",
        "--root",
        root,
        "--config",
        cluster,
        "--airflow-version",
        "3.3.2",
        "--airflow-bin",
        home / "venv/bin/airflow",
        "--node-name",
        "w1",
        "--init-system",
        "supervisor",
    )
    assert result.code == 0, result.err
    # as root on the node itself (privileged), a re-run of init asks for the same lock in root's own venv
    node = Target(root, real_system=False, privileged=True)
    moved = with_moved_venv(InitRequest(role="worker"), node)
    assert (moved.install_airflow, moved.venv) == ("3.3.2", DEFAULT_VENV)
    home.chmod(0o755)
    os.chown(home, 0, 0)  # root's again: nothing to move
    for part in (home / "venv", *(home / "venv").rglob("*")):
        os.chown(part, 0, 0, follow_symlinks=False)
    assert with_moved_venv(InitRequest(role="worker"), node).install_airflow is None


def test_a_secret_file_the_account_could_swap_is_not_read(run_cli, tmp_path):
    """--db-url-file in a directory another account owns: it could make the name a link to any file root
    can read, whose first line would then land in the cluster file its group reads."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "db-url").write_text("postgresql://airflow:pa55word@10.0.0.1:5432/airflow\n")
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    root = tmp_path / "node"
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--master-host",
                     "10.0.0.1", "--broker-url", "redis://:pw@10.0.0.1:6379/0",
                     "--db-url-file", theirs / "db-url")  # fmt: skip
    assert result.code == 2, result.err
    assert result.err.startswith(f"airflow-node: --db-url-file: {theirs} may be changed by another account"), result.err
    assert "pa55word" not in result.err and not root.exists()
