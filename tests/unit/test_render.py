"""Rendered nodes: golden files for every combination, and the properties every render must have."""

from __future__ import annotations

import configparser
import os
import shutil
from pathlib import Path

import pytest

from airflow_nodes.cluster import dump_cluster

from conftest import FIXED_SECRETS, NASTY_PASSWORD, make_cluster, worker_args

GOLDEN = Path(__file__).parent / "golden"
COMBINATIONS = [
    (version, role, init_system)
    for version in ("2.11.2", "3.3.2")
    for role in ("master", "worker")
    for init_system in ("systemd", "supervisor")
]


def render_node(run_cli, tmp_path: Path, version: str, role: str, init_system: str) -> Path:
    root = tmp_path / f"{version}-{role}-{init_system}"
    cluster = make_cluster(version.rsplit(".", 1)[0])
    cluster_path = tmp_path / f"cluster-{version}.toml"
    cluster_path.write_text(dump_cluster(cluster))
    if role == "master":
        # a master re-run keeps the existing cluster file (and so its fixed test secrets)
        (root / "etc/airflow-node").mkdir(parents=True)
        shutil.copy(cluster_path, root / "etc/airflow-node/cluster.toml")
        args = ["init", "--role", "master", "--root", root, "--airflow-version", version,
                "--init-system", init_system, "--node-name", "master1",
                "--airflow-node-bin", "/usr/local/bin/airflow-node"]  # fmt: skip
    else:
        args = worker_args(root, cluster_path, version, init_system)
    result = run_cli(*args)
    assert result.code == 0, result.err
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.mark.parametrize("version,role,init_system", COMBINATIONS)
def test_rendered_node_matches_golden_files(run_cli, tmp_path, version, role, init_system):
    root = render_node(run_cli, tmp_path, version, role, init_system)
    rendered = files_under(root)
    golden_dir = GOLDEN / root.name
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden_dir, ignore_errors=True)
        for rel, content in rendered.items():
            (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden_dir / rel).write_bytes(content)
    assert rendered == files_under(golden_dir), f"re-run with UPDATE_GOLDEN=1 and review the diff of {golden_dir}"


@pytest.mark.parametrize("version", ["2.11.2", "3.3.2"])
def test_airflow_cfg_is_identical_on_master_and_worker(run_cli, tmp_path, version):
    master = render_node(run_cli, tmp_path, version, "master", "systemd")
    worker = render_node(run_cli, tmp_path, version, "worker", "supervisor")
    cfg = "opt/airflow/airflow.cfg"
    assert (master / cfg).read_bytes() == (worker / cfg).read_bytes()


def read_cfg(root: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()  # BasicInterpolation, as Airflow reads it
    parser.read(root / "opt/airflow/airflow.cfg")
    return parser


def test_airflow3_cfg_has_every_key_a_celery_cluster_needs(run_cli, tmp_path):
    cfg = read_cfg(render_node(run_cli, tmp_path, "3.3.2", "worker", "systemd"))
    cluster = make_cluster("3.3")
    assert cfg["core"]["executor"] == "CeleryExecutor"
    assert cfg["core"]["load_examples"] == "False"
    assert cfg["core"]["fernet_key"] == FIXED_SECRETS.fernet_key
    assert cfg["core"]["execution_api_server_url"] == "http://10.20.0.1:8080/execution/"
    assert "sql_alchemy_conn" not in cfg["core"]
    # %% read back as the URL-quoted %; psycopg2 named (psycopg 3 breaks the 2.11 to 3.3 migration)
    assert cfg["database"]["sql_alchemy_conn"] == cluster.db_url.replace("postgresql://", "postgresql+psycopg2://")
    assert cfg["api"]["secret_key"] == FIXED_SECRETS.secret_key
    assert cfg["api_auth"]["jwt_secret"] == FIXED_SECRETS.jwt_secret
    assert cfg["celery"]["broker_url"] == cluster.broker_url
    assert cfg["celery"]["result_backend"] == cluster.result_backend
    assert cfg["celery"]["worker_enable_remote_control"] == "True"
    assert cfg["celery"]["flower_basic_auth"] == f"admin:{FIXED_SECRETS.flower_password}"
    assert cfg["celery_broker_transport_options"]["visibility_timeout"] == "86400"
    assert cfg["logging"]["worker_log_server_port"] == "8793"
    assert cfg["logging"]["trigger_log_server_port"] == "8794"
    assert not cfg.has_section("webserver")


def test_airflow2_cfg_uses_webserver_section_and_no_jwt(run_cli, tmp_path):
    cfg = read_cfg(render_node(run_cli, tmp_path, "2.11.2", "master", "supervisor"))
    assert cfg["webserver"]["secret_key"] == FIXED_SECRETS.secret_key
    assert cfg["webserver"]["web_server_port"] == "8080"
    assert not cfg.has_section("api_auth")
    assert "execution_api_server_url" not in cfg["core"]
    assert cfg["scheduler"]["standalone_dag_processor"] == "True"  # versions.py says why


@pytest.mark.parametrize("version,role,init_system", COMBINATIONS)
def test_secrets_stay_out_of_units_env_and_cron(run_cli, tmp_path, version, role, init_system):
    root = render_node(run_cli, tmp_path, version, role, init_system)
    secrets = [*FIXED_SECRETS.values(), NASTY_PASSWORD, "%25s%40"]
    for rel, content in files_under(root).items():
        if rel.endswith(("cluster.toml", "airflow.cfg")):
            assert (root / rel).stat().st_mode & 0o777 == 0o640, rel
            continue
        text = content.decode()
        assert not [s for s in secrets if s in text], rel
        assert (root / rel).stat().st_mode & 0o007 in (0o004, 0o005, 0o000), rel


def test_master_daemons_follow_the_airflow_version(run_cli, tmp_path):
    three = render_node(run_cli, tmp_path, "3.3.2", "master", "systemd") / "etc/systemd/system"
    two = render_node(run_cli, tmp_path, "2.11.2", "master", "systemd") / "etc/systemd/system"
    assert sorted(p.name for p in three.iterdir()) == [
        "airflow-api-server.service", "airflow-dag-processor.service", "airflow-db-migrate.service",
        "airflow-flower.service", "airflow-master.target", "airflow-scheduler.service", "airflow-triggerer.service",
    ]  # fmt: skip
    assert sorted(p.name for p in two.iterdir()) == [
        "airflow-dag-processor.service", "airflow-db-migrate.service", "airflow-flower.service",
        "airflow-master.target", "airflow-scheduler.service", "airflow-triggerer.service", "airflow-webserver.service",
    ]  # fmt: skip
    scheduler = (three / "airflow-scheduler.service").read_text()
    assert "Requires=airflow-db-migrate.service" in scheduler
    assert "After=network-online.target airflow-db-migrate.service" in scheduler


def test_worker_command_line_carries_the_per_node_settings(run_cli, tmp_path):
    root = render_node(run_cli, tmp_path, "3.3.2", "worker", "systemd")
    unit = (root / "etc/systemd/system/airflow-worker.service").read_text()
    assert "ExecStart=/opt/airflow-venv/bin/airflow celery worker -c 4 -H celery@worker1 -q default,etl\n" in unit
    assert "KillMode=mixed\n" in unit and "TimeoutStopSec=600\n" in unit
    assert "Wants=redis.service" not in unit and "postgresql" not in unit


def test_cron_entry_is_one_valid_line_with_a_final_newline(run_cli, tmp_path):
    root = render_node(run_cli, tmp_path, "3.3.2", "worker", "supervisor")
    cron = (root / "etc/cron.d/airflow-node").read_text()
    assert cron.endswith("\n")
    assert "*/5 * * * * root /usr/local/bin/airflow-node sync --quiet --splay 60 --wait 10\n" in cron


def test_dag_refresh_interval_is_short_on_both_lines(run_cli, tmp_path):
    """A new DAG file must show within a minute: Airflow's own 300 s listing interval is replaced."""
    three = read_cfg(render_node(run_cli, tmp_path, "3.3.2", "worker", "systemd"))
    two = read_cfg(render_node(run_cli, tmp_path, "2.11.2", "worker", "systemd"))
    assert int(three["dag_processor"]["refresh_interval"]) <= 30
    assert int(two["scheduler"]["dag_dir_list_interval"]) <= 30


def test_writable_paths_widen_every_unit_sandbox_and_are_kept_by_a_rerun(run_cli, tmp_path):
    root = render_node(run_cli, tmp_path, "3.3.2", "worker", "systemd")
    cluster_path = tmp_path / "cluster-3.3.2.toml"
    args = worker_args(root, cluster_path, "3.3.2", "systemd")
    (root / "srv/exports").mkdir(parents=True, mode=0o775)  # the operator's: left as it is
    os.chmod(root / "srv/exports", 0o775)
    result = run_cli(*args, "--writable-path", "/data/airflow", "--writable-path", "/srv/exports")
    assert result.code == 0, result.err
    assert (root / "data/airflow").stat().st_mode & 0o777 == 0o750  # made, for the airflow user
    assert (root / "srv/exports").stat().st_mode & 0o777 == 0o775
    unit = (root / "etc/systemd/system/airflow-worker.service").read_text()
    # and where a task asks the follower for its DAG version
    assert "ReadWritePaths=-/opt/airflow -/var/lib/airflow-node/release-requests -/data/airflow -/srv/exports\n" in unit
    assert run_cli(*args).code == 0  # a re-run without the option keeps the recorded list
    assert (root / "etc/systemd/system/airflow-worker.service").read_text() == unit
    assert 'writable_paths = "/data/airflow,/srv/exports"' in (root / "etc/airflow-node/node.toml").read_text()
    assert run_cli(*args, "--writable-path", "").code == 0  # '' clears it
    assert (
        "ReadWritePaths=-/opt/airflow -/var/lib/airflow-node/release-requests\n"
        in (root / "etc/systemd/system/airflow-worker.service").read_text()
    )


def test_only_the_worker_unit_goes_without_hidepid(run_cli, tmp_path):
    """Airflow 3 tasks make themselves non-dumpable; under ProtectProc= (hidepid) their own supervisor
    then cannot see them and every task fails at start (found running tasks on a systemd worker)."""
    worker = render_node(run_cli, tmp_path, "3.3.2", "worker", "systemd") / "etc/systemd/system"
    master = render_node(run_cli, tmp_path, "3.3.2", "master", "systemd") / "etc/systemd/system"
    assert "\nProtectProc=" not in (worker / "airflow-worker.service").read_text()
    assert "ProtectProc=invisible\n" in (master / "airflow-scheduler.service").read_text()
