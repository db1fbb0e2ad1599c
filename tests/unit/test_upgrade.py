"""`airflow-node upgrade`: the plan, and the input it refuses before anything changes."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from airflow_nodes.celerycontrol import by_queue, queues_of
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.config_sync import follow_master
from airflow_nodes.context import load_context
from airflow_nodes.control import control
from airflow_nodes.errors import UserError
from airflow_nodes.install import check_wheelhouse, find_lock
from airflow_nodes.target import Target
from airflow_nodes.upgrade import check_dags, plan_upgrade
from airflow_nodes.versions import parse_airflow_version

from conftest import interpreter, make_cluster, snapshot, worker_args


def init_master(run_cli, root: Path, venv: Path, init_system: str = "systemd") -> Path:
    result = run_cli("init", "--role", "master", "--root", root, "--venv", venv, "--master-host", "10.20.0.1",
                     "--broker-url", "redis://10.20.0.1:6379/0", "--db-url", "postgresql://a@10.20.0.1/airflow",
                     "--init-system", init_system, "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    return root


@pytest.fixture
def master_root(run_cli, tmp_path, make_venv):
    root = tmp_path / "master"  # the venv in the node's tree: under --root, that is where the node's Airflow is
    return init_master(run_cli, root, make_venv(root=root, **{"apache-airflow": "2.11.2"}))


def test_dry_run_shows_the_whole_plan_and_changes_nothing(run_cli, master_root):
    before = snapshot(master_root)
    result = run_cli("upgrade", "--root", master_root, "--to", "3.3.2", "--dry-run")
    assert result.code == 0, result.err
    for words in ("from Airflow 2.11.2 to 3.3.2", "pg_dump", "api-server added, webserver removed",
                  "airflow db migrate", "restore the DB from the backup", "AIR301",
                  "drain: stop the scheduler; wait up to 600 s", "every worker stops consuming"):  # fmt: skip
        assert words in result.out, result.out
    assert snapshot(master_root) == before


@pytest.mark.parametrize(
    "args,words",
    [
        (["--to", "3.3.1"], "--to: no lock file for Airflow 3.3.1"),
        (["--to", "2.11.2"], "--to: 2.11.2 is not newer than the installed 2.11.2"),
        (["--to", "2.10.5"], "--to: 2.10.5 is not newer"),
        (["--to", "3.3"], "--to: '3.3': give the full version"),
        (["--to", "4.0.0"], "--to"),
        (["--to", "3.3.2", "--backup-dir", "relative"], "--backup-dir"),
        (["--to", "3.3.2", "--backup-dir", "/proc/self/backups"], "--backup-dir: cannot create /proc/self/backups"),
        (["--to", "3.3.2", "--wheelhouse", "/nonexistent"], "--wheelhouse"),
        (["--to", "3.3.2", "--drain-timeout", "nan"], "--drain-timeout"),
        (["--to", "3.3.2", "--drain-timeout", "-1"], "--drain-timeout"),
        (["--to", "3.3.2", "--drain-timeout", "1e9"], "--drain-timeout"),
        (["--to", "3.3.2"], "runs on the real master only"),  # not under --root: a test tree is not a master
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_changed(run_cli, master_root, args, words):
    before = snapshot(master_root)
    result = run_cli("upgrade", "--root", master_root, *args)
    assert result.code == 2, (result.out, result.err)
    assert words in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert snapshot(master_root) == before


@pytest.mark.parametrize("kind", ["link", "another account's", "below another account's", "not only dumps"])
def test_a_backup_dir_root_does_not_own_alone_is_refused_before_anything_runs(run_cli, tmp_path, master_root, kind):
    if os.geteuid() != 0 and kind in ("another account's", "below another account's"):
        pytest.skip("ownership matters only to root")
    backups = tmp_path / "backups"
    if kind == "not only dumps":  # such as /etc: it would be made 0700
        backups.mkdir(mode=0o755)
        (backups / "airflow-db-2.11.2-20260101T000000Z.dump").write_text("")
        (backups / "passwd").write_text("")
        words = f"--backup-dir: {backups} holds 'passwd', not only DB dumps"
    elif kind == "link":
        (tmp_path / "elsewhere").mkdir()
        backups.symlink_to(tmp_path / "elsewhere")
        words = f"--backup-dir: {backups} is a symbolic link"
    elif kind == "another account's":
        backups.mkdir()
        os.chown(backups, 65534, 65534)
        words = f"--backup-dir: {backups} belongs to another account (uid 65534)"
    else:
        (tmp_path / "theirs").mkdir()
        os.chown(tmp_path / "theirs", 65534, 65534)
        backups = tmp_path / "theirs" / "backups"
        words = f"--backup-dir: {tmp_path / 'theirs'} is another account's"
    before = snapshot(tmp_path)
    result = run_cli("upgrade", "--root", master_root, "--to", "3.3.2", "--dry-run", "--backup-dir", backups)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert words in result.err, result.err
    assert snapshot(tmp_path) == before


def test_a_target_whose_lock_does_not_cover_the_masters_python_is_refused(run_cli, tmp_path, make_venv):
    python = interpreter("3.9")
    if python is None:
        pytest.skip("no Python 3.9 here (/usr/bin or pyenv) to build the master's venv with")
    root = tmp_path / "master"
    init_master(run_cli, root, make_venv(python, root=root, **{"apache-airflow": "2.11.2"}))
    before = snapshot(root)
    result = run_cli("upgrade", "--root", root, "--to", "3.3.2", "--dry-run")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "--to: the Airflow 3.3.2 lock covers Python 3.10, 3.11, 3.12, 3.13, not 3.9" in result.err, result.err
    assert snapshot(root) == before


def test_a_worker_refuses_and_follows_the_masters_new_version_line(run_cli, tmp_path):
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(make_cluster("2.11")))
    root = tmp_path / "worker"
    assert run_cli(*worker_args(root, cluster_file, "2.11.2", "systemd")).code == 0
    result = run_cli("upgrade", "--root", root, "--to", "3.3.2", "--dry-run")
    assert result.code == 2 and "this node is a worker" in result.err
    target = Target.at(root)
    ctx = load_context(target)
    assert follow_master(ctx, ctx.cluster, target) == (ctx.node, [])  # the same line: nothing to follow
    node, done = follow_master(ctx, dataclasses.replace(ctx.cluster, airflow_version="3.3"), target)
    assert node.airflow_version == "3.3.2" and done == ["the master moved to Airflow 3.3.2"]


def test_dags_that_airflow_3_cannot_run_block_and_deprecated_ones_are_listed(master_root):
    dags = master_root / "opt/airflow/dags"
    (dags / "old.py").write_text(
        "from datetime import datetime\nfrom airflow import DAG\n"
        "with DAG('old', schedule_interval='@daily', start_date=datetime(2024, 1, 1)):\n    pass\n"
    )
    plan = plan_upgrade(Target.at(master_root), "3.3.2", Path("/var/backups/airflow-node"))
    blocking, deprecated = check_dags(plan, Target.at(master_root))
    assert [line.split(" ", 1)[0] for line in blocking] == ["old.py:3:"] and "AIR301" in blocking[0]
    assert any("AIR311" in line for line in deprecated)  # `from airflow import DAG` still runs on 3.x


@pytest.mark.parametrize(
    "init_system,command",
    [("systemd", "systemctl stop airflow-scheduler.service"),
     ("supervisor", "supervisorctl -c /etc/airflow-node/supervisord.conf stop airflow-scheduler:airflow-scheduler")],
)  # fmt: skip
def test_the_drain_stops_the_scheduler_alone(run_cli, tmp_path, make_venv, init_system, command):
    root = tmp_path / init_system
    init_master(run_cli, root, make_venv(root=root, **{"apache-airflow": "2.11.2"}), init_system)
    listed = control("stop", Target.at(root), daemons=("scheduler",)).listed
    assert len(listed) == 1 and listed[0].endswith(command), listed


def test_a_systemd_stop_names_the_units_so_systemctl_waits_for_them(run_cli, master_root):
    # the target's own stop job is done at once, while its units are still deactivating
    [listed] = control("stop", Target.at(master_root)).listed
    assert listed.startswith("systemctl stop airflow-master.target airflow-db-migrate.service"), listed
    assert "airflow-scheduler.service" in listed and "airflow-flower.service" in listed, listed


def test_a_wheelhouse_is_recorded_and_must_be_roots_own(run_cli, tmp_path, master_root):
    result = run_cli("init", "--role", "master", "--root", master_root, "--wheelhouse", "/srv/wheels")
    assert result.code == 0, result.err
    assert 'wheelhouse = "/srv/wheels"' in (master_root / "etc/airflow-node/node.toml").read_text()
    before = snapshot(master_root)
    result = run_cli("init", "--role", "master", "--root", master_root, "--wheelhouse", "srv/wheels")
    assert result.code == 2 and "--wheelhouse: 'srv/wheels' must be a normalised absolute path" in result.err
    assert snapshot(master_root) == before
    if os.geteuid() != 0:
        pytest.skip("ownership matters only to root")
    above = tmp_path / "above"  # in /tmp: a sticky directory above is fine
    wheels = above / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "six-1.16.0-py2.py3-none-any.whl").write_bytes(b"PK")
    check_wheelhouse(wheels)  # root's own: accepted
    for hostile, undo in [(wheels / "evil-1.0.tar.gz", lambda p: p.unlink()),  # an sdist runs its build as root
                          (wheels / "six-1.16.0-py2.py3-none-any.whl", lambda p: os.chown(p, 0, 0))]:  # fmt: skip
        hostile.touch()
        os.chown(hostile, 65534, 65534)
        with pytest.raises(UserError, match=f"{hostile.name} is not root's own or others may write it"):
            check_wheelhouse(wheels)
        undo(hostile)
    above.chmod(0o777)  # another account could swap the wheelhouse for its own
    with pytest.raises(UserError, match=f"{above} is not root's own or others may write it"):
        check_wheelhouse(wheels)


def test_worker_replies_that_could_read_as_options_are_dropped():
    replies = {
        "celery@worker1": [{"name": "default", "exchange": {}}, {"name": "--broker=redis://evil"}, "q9", {"x": 1}],
        "--destination=all": [{"name": "q1"}],
        "celery@worker2": "not a list",
        "celery@worker3": [{"name": "q3"}],
    }
    assert queues_of(replies) == {"celery@worker1": ["default"], "celery@worker3": ["q3"]}
    assert queues_of(["not", "a", "dict"]) == {} and queues_of(None) == {}


@pytest.mark.parametrize(
    "worker_version,master_packages,follows_to",
    [
        ("3.3.1", "lock", "3.3.2"),  # a patch upgrade of a master on our lock: the worker follows
        ("3.3.2", "lock", None),  # already there
        ("3.3.1", "", None),  # a master with a set of its own: only its line counts, and it is the same
        ("2.11.2", "", "3.3.2"),  # another line: the newest lock of it
    ],
)
def test_a_worker_follows_the_masters_exact_version_when_the_master_runs_our_lock(
    run_cli, tmp_path, worker_version, master_packages, follows_to
):
    lock = find_lock("3.3.2", f"{sys.version_info[0]}.{sys.version_info[1]}")
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(make_cluster(parse_airflow_version(worker_version).series)))
    root = tmp_path / "worker"
    assert run_cli(*worker_args(root, cluster_file, worker_version, "systemd")).code == 0
    ctx = load_context(Target.at(root))
    packages = lock.package_hash if master_packages == "lock" else master_packages
    master = dataclasses.replace(ctx.cluster, airflow_version="3.3", airflow_packages=packages)
    node, done = follow_master(ctx, master, Target.at(root))
    assert (node.airflow_version if done else None) == follows_to, (node, done)


def test_one_celery_command_per_queue_names_every_worker_that_consumed_it():
    consumed = {"celery@w2": ["default", "q2"], "celery@w1": ["default", "q1"], "celery@w3": []}
    assert by_queue(consumed) == [("default", "celery@w1,celery@w2"), ("q1", "celery@w1"), ("q2", "celery@w2")]
