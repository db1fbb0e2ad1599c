"""One reconcile path: a re-run of init (or a sync) removes what the new plan no longer has.

Each test renders a node under a temp root, changes an input (Airflow version, queues, init
system), converges again, and checks the tree and the manifest against the new plan exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_init_cli import MASTER_OPTIONS

from airflow_nodes.apply import apply
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.context import load_context
from airflow_nodes.control import control
from airflow_nodes.init import InitRequest, plan_init
from airflow_nodes.initsystems.supervisor import Supervisor
from airflow_nodes.target import Target

from conftest import make_cluster, worker_args

UNITS = "etc/systemd/system"


def master_at(run_cli, root: Path, version: str, *extra: str):
    options = [o if o != "3.3.2" else version for o in MASTER_OPTIONS]
    return run_cli("init", "--role", "master", "--root", root, *options, *extra)


def manifest(root: Path) -> dict:
    return json.loads((root / "var/lib/airflow-node/manifest.json").read_text())


def units(root: Path) -> set[str]:
    return {p.name for p in (root / UNITS).glob("airflow-*")}


def files_under(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "manifest.json" not in p.name}


def test_upgrading_a_master_from_2_11_to_3_3_removes_the_webserver_unit(run_cli, tmp_path):
    assert master_at(run_cli, tmp_path, "2.11.2").code == 0
    assert "airflow-webserver.service" in units(tmp_path)

    dry = master_at(run_cli, tmp_path, "3.3.2", "--dry-run")
    assert dry.code == 0, dry.err
    assert f"remove     {tmp_path}/{UNITS}/airflow-webserver.service" in dry.out
    assert "would run: systemctl disable --now airflow-webserver.service" in dry.out
    assert f"--- /{UNITS}/airflow-webserver.service (on disk)" in dry.out  # the removal as a diff
    assert "airflow-webserver.service" in units(tmp_path)  # a dry run changes nothing

    result = master_at(run_cli, tmp_path, "3.3.2")
    assert result.code == 0, result.err
    assert units(tmp_path) == {
        "airflow-db-migrate.service", "airflow-api-server.service", "airflow-scheduler.service",
        "airflow-dag-processor.service", "airflow-triggerer.service", "airflow-flower.service",
        "airflow-master.target",
    }  # fmt: skip
    assert f"/{UNITS}/airflow-webserver.service" not in manifest(tmp_path)["files"]
    assert set(manifest(tmp_path)["files"]) == files_under(tmp_path)
    target = (tmp_path / UNITS / "airflow-master.target").read_text()
    assert "webserver" not in target and "airflow-api-server.service" in target
    assert "  systemctl disable --now airflow-webserver.service" in result.out  # listed under --root


def test_an_edited_orphan_is_kept_and_reported_and_force_moves_it_aside(run_cli, tmp_path):
    assert master_at(run_cli, tmp_path, "2.11.2").code == 0
    webserver = tmp_path / UNITS / "airflow-webserver.service"
    webserver.write_text(webserver.read_text() + "# tuned by hand\n")

    result = master_at(run_cli, tmp_path, "3.3.2")
    assert result.code == 0, result.err
    assert webserver.read_text().endswith("# tuned by hand\n")  # the person's edit survives
    assert f"kept {webserver}: no longer planned, but edited since we wrote it" in result.out
    assert "disable --now airflow-webserver.service" not in result.out  # nothing acts on a kept file
    assert f"/{UNITS}/airflow-webserver.service" in manifest(tmp_path)["files"]  # still reported next time
    again = master_at(run_cli, tmp_path, "3.3.2")
    assert again.code == 0 and "keep (no longer planned, but edited" in again.out

    forced = master_at(run_cli, tmp_path, "3.3.2", "--force")
    assert forced.code == 0, forced.err
    assert not webserver.exists()
    backup = webserver.with_name(webserver.name + ".airflow-node-backup")
    assert backup.read_text().endswith("# tuned by hand\n")
    assert "systemctl disable --now airflow-webserver.service" in forced.out
    assert f"/{UNITS}/airflow-webserver.service" not in manifest(tmp_path)["files"]


def test_a_worker_whose_queues_change_keeps_everything_it_needs(run_cli, tmp_path, cluster_file):
    args = worker_args(tmp_path, cluster_file, init_system="systemd")
    assert run_cli(*args).code == 0
    before = files_under(tmp_path)
    queues = args.index("--queues") + 1
    args[queues] = "etl"
    result = run_cli(*args)
    assert result.code == 0, result.err
    assert files_under(tmp_path) == before  # nothing lost, nothing orphaned
    assert "-q etl" in (tmp_path / UNITS / "airflow-worker.service").read_text()
    assert "systemctl try-restart airflow-worker.service" in result.out
    assert "disable" not in result.out


def test_a_worker_moved_between_init_systems_keeps_only_what_it_needs(run_cli, tmp_path, cluster_file):
    root = tmp_path / "node"
    assert run_cli(*worker_args(root, cluster_file, init_system="systemd")).code == 0
    systemd_files = files_under(root)

    to_supervisor = run_cli(*worker_args(root, cluster_file, init_system="supervisor"))
    assert to_supervisor.code == 0, to_supervisor.err
    assert units(root) == set() and not (root / UNITS).exists()  # the directory we made is gone too
    # no supervisord was set up on this host: init sets up its own, started at boot by cron
    supervisor_files = {"/etc/airflow-node/conf.d/airflow-node.conf", "/etc/airflow-node/supervisord.conf"}
    assert files_under(root) == {f for f in systemd_files if not f.startswith(f"/{UNITS}")} | supervisor_files
    assert set(manifest(root)["files"]) == files_under(root)
    assert "systemctl disable --now airflow-worker.service" in to_supervisor.out
    assert "systemctl disable --now airflow-worker.target" in to_supervisor.out
    assert "update airflow-worker airflow-dag-follower" in to_supervisor.out
    assert "@reboot root /usr/local/bin/airflow-node start" in (root / "etc/cron.d/airflow-node").read_text()

    back = run_cli(*worker_args(root, cluster_file, init_system="systemd"))
    assert back.code == 0, back.err
    assert files_under(root) == systemd_files
    assert set(manifest(root)["files"]) == systemd_files
    assert not (root / "etc/airflow-node/conf.d").exists()
    # the programs (each its own group) are stopped and removed while supervisord can still be asked,
    # then our supervisord goes
    ctl = "/usr/local/bin/supervisorctl -c /etc/airflow-node/supervisord.conf"
    listed = [line.strip() for line in back.out.splitlines()]
    stop = f"{ctl} stop airflow-worker:* airflow-dag-follower:*"
    removes = [f"{ctl} remove airflow-worker", f"{ctl} remove airflow-dag-follower"]
    shutdown = f"{ctl} shutdown"
    assert listed.index(stop) < min(map(listed.index, removes))
    assert max(map(listed.index, removes)) < listed.index(shutdown)


def test_retiring_runs_disable_while_the_unit_exists_and_reload_after_it_is_gone(run_cli, tmp_path):
    """On the real system (a Target with a recording runner), the order of commands around removals."""
    assert master_at(run_cli, tmp_path, "2.11.2").code == 0
    webserver = tmp_path / UNITS / "airflow-webserver.service"
    seen: list[tuple[tuple[str, ...], bool]] = []

    def runner(argv):
        seen.append((tuple(argv), webserver.exists()))

    real = Target(tmp_path, real_system=True, privileged=False, runner=runner)
    request = InitRequest(role="master", airflow_version="3.3.2", init_system="systemd", node_name="master1",
                          airflow_node_bin="/usr/local/bin/airflow-node")  # fmt: skip
    outcome = plan_init(request, real)
    apply(outcome.preview)
    commands = [argv for argv, _ in seen if argv[0] == "systemctl"]
    disable = ("systemctl", "disable", "--now", "airflow-webserver.service")
    assert (disable, True) in seen  # run while the unit file still existed
    assert (("systemctl", "daemon-reload"), False) in seen  # run once it was gone
    assert commands.index(disable) < commands.index(("systemctl", "daemon-reload"))
    assert commands.count(("systemctl", "daemon-reload")) == 1
    assert ("systemctl", "try-restart", "airflow-api-server.service") in commands
    assert not webserver.exists()


def test_sync_converges_through_the_same_path_as_init(tmp_path):
    """A cluster file that moves a worker to another Airflow line is applied by reconcile_node too:
    the version guard is shared, and an unchanged cluster plans no change."""
    from airflow_nodes.cluster import dump_cluster
    from airflow_nodes.errors import UserError
    from airflow_nodes.nodeplan import reconcile_node

    cluster = make_cluster("3.3")
    request = InitRequest(role="worker", config_file=tmp_path / "c.toml", airflow_version="3.3.2",
                          init_system="supervisor", node_name="w1",
                          airflow_node_bin="/usr/local/bin/airflow-node")  # fmt: skip
    (tmp_path / "c.toml").write_text(dump_cluster(cluster))
    root = Target.at(tmp_path / "root")
    outcome = plan_init(request, root)
    apply(outcome.preview)
    again = reconcile_node(cluster, dump_cluster(cluster).encode(), outcome.node, root, previous=outcome.node)
    assert again.nothing_to_do
    other = make_cluster("2.11")
    try:
        reconcile_node(other, dump_cluster(other).encode(), outcome.node, root)
    except UserError as exc:
        assert "runs Airflow 3.3.2 but cluster 'airflow' runs 2.11" in str(exc)
    else:
        raise AssertionError("a worker on 3.3 accepted a 2.11 cluster")


def test_a_re_init_after_a_sync_leaves_the_published_dag_link_alone(run_cli, tmp_path):
    root = tmp_path / "m"
    (root / "srv/dags").mkdir(parents=True)
    (root / "srv/dags/a.py").write_text("x = 1\n")
    assert master_at(run_cli, root, "3.3.2", "--dags-source", "/srv/dags").code == 0
    assert run_cli("sync", "--root", root, "--dags-only").code == 0
    dags = root / "opt/airflow/dags"
    link = os.readlink(dags)
    result = master_at(run_cli, root, "3.3.2", "--visibility-timeout", "7200")
    assert result.code == 0, result.err
    assert os.readlink(dags) == link and (dags / "a.py").exists()


def test_files_written_by_the_previous_version_still_load(tmp_path):
    """Keys added later (advertise_address, sentinel_master, expected_workers) may be absent: defaults."""
    from airflow_nodes.cluster import dump_cluster, parse_cluster
    from airflow_nodes.node import parse_node

    old_cluster = "\n".join(
        line for line in dump_cluster(make_cluster()).splitlines()
        if not line.startswith(("sentinel_master", "expected_workers"))
    )  # fmt: skip
    assert parse_cluster(old_cluster, "old").expected_workers == ""
    node = (
        '[node]\nrole = "worker"\nname = "w1"\nairflow_version = "3.3.2"\ninit_system = "systemd"\n'
        'airflow_bin = "/opt/airflow/venv/bin/airflow"\nairflow_node_bin = "/usr/local/bin/airflow-node"\n'
        'supervisord_conf = "/etc/supervisor/supervisord.conf"\n[worker]\nconcurrency = 4\nqueues = ""\n'
        "stop_timeout = 600\n"
    )
    assert parse_node(node, "old").advertise_address == ""


def test_a_supervisor_node_of_the_previous_layout_is_driven_by_its_group_until_init_moves_it(run_cli, tmp_path):
    """airflow-node before 0.4 put every program in one group, airflow-<role>: a node upgraded to this
    version but not re-rendered yet still runs that layout, and is driven through it."""
    assert master_at(run_cli, tmp_path, "3.3.2", "--init-system", "supervisor").code == 0
    conf = tmp_path / "etc/airflow-node/conf.d/airflow-node.conf"
    programs = [line[len("[program:") : -1] for line in conf.read_text().splitlines() if line.startswith("[program:")]
    conf.write_text(conf.read_text() + f"\n[group:airflow-master]\nprograms={','.join(programs)}\n")

    listed = control("stop", Target.at(str(tmp_path)), daemons=("scheduler",)).listed
    assert listed and listed[0].endswith(" stop airflow-master:airflow-scheduler"), listed

    # the next init names the old group to supervisor's update, which removes it and adds one per program
    result = master_at(run_cli, tmp_path, "3.3.2", "--init-system", "supervisor", "--dry-run")
    assert f"update airflow-master {' '.join(programs)}" in result.out, result.out


def test_a_conf_file_that_is_not_ours_to_read_names_nothing_to_supervisor(run_cli, tmp_path):
    assert master_at(run_cli, tmp_path, "3.3.2", "--init-system", "supervisor").code == 0
    conf = tmp_path / "etc/airflow-node/conf.d/airflow-node.conf"
    conf.write_text(conf.read_text() + "\n[program:x all]\ncommand=/bin/true\n[program:all]\ncommand=/bin/true\n")
    result = master_at(run_cli, tmp_path, "3.3.2", "--init-system", "supervisor", "--dry-run", "--force")
    update = next(line for line in result.out.splitlines() if " update " in line)
    assert " all" not in update and "x " not in update, update  # supervisorctl would read "all" as every group

    conf.unlink()
    conf.symlink_to("/etc/passwd")  # a link is not read: it names nothing (preview refuses it on its own)
    node = load_context(Target.at(str(tmp_path))).node
    assert Supervisor().installed(node, Target.at(str(tmp_path))) == ()


def test_a_worker_s_programs_are_named_as_supervisor_loaded_them(run_cli, tmp_path, cluster_file):
    # the worker's program has the role's name, airflow-worker: the old layout's group had it too
    root = tmp_path / "node"
    assert run_cli(*worker_args(root, cluster_file, init_system="supervisor")).code == 0
    [start] = control("start", Target.at(str(root))).listed
    assert start.endswith(" start airflow-worker:airflow-worker airflow-dag-follower:airflow-dag-follower"), start

    conf = root / "etc/airflow-node/conf.d/airflow-node.conf"
    conf.write_text(conf.read_text() + "\n[group:airflow-worker]\nprograms=airflow-worker,airflow-dag-follower\n")
    [start] = control("start", Target.at(str(root))).listed
    assert start.endswith(" start airflow-worker:airflow-worker airflow-worker:airflow-dag-follower"), start


def test_a_unit_an_older_airflow_node_never_wrote_is_not_named_on_stop(run_cli, tmp_path, cluster_file):
    """A 2.x master from before its standalone DAG processor has no such unit: systemctl would refuse the
    whole stop for it. Its next init writes it, and starts it while the role runs."""
    root = tmp_path / "m"
    (root / "etc/airflow-node").mkdir(parents=True)
    (root / "etc/airflow-node/cluster.toml").write_text(dump_cluster(make_cluster("2.11")))
    assert run_cli("init", "--role", "master", "--root", root, "--airflow-version", "2.11.2", "--init-system",
                   "systemd").code == 0  # fmt: skip
    (root / "etc/systemd/system/airflow-dag-processor.service").unlink()
    stop = run_cli("stop", "--root", root)
    assert "systemctl stop airflow-master.target" in stop.out and "dag-processor" not in stop.out, stop.out
    again = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "2.11.2")
    assert "create     " in again.out and "airflow-dag-processor.service" in again.out
    assert "systemctl start airflow-db-migrate.service airflow-webserver.service airflow-scheduler.service " \
           "airflow-dag-processor.service" in again.out  # fmt: skip
