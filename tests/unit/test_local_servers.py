"""`init --with-redis --with-postgres` and the all-in-one role, rendered under --root: golden files of
our Redis and PostgreSQL configuration, the package commands listed per distribution, bad input."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from airflow_nodes.apply import node_lock
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.errors import UserError
from airflow_nodes.localservers import hba_rules, scram_matches, scram_verifier
from airflow_nodes.node import NodeSettings, dump_node
from airflow_nodes.target import Target

from conftest import make_cluster, snapshot

GOLDEN = Path(__file__).parent / "golden"
OS_RELEASE = {
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "debian13": 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n',
    "ubuntu2404": 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n',
    "rocky9": 'NAME="Rocky Linux"\nVERSION_ID="9.4"\nID="rocky"\nID_LIKE="rhel centos fedora"\n',
}
DEBIAN_HBA = """# PostgreSQL Client Authentication Configuration File
local   all             postgres                                peer
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
"""
ONE_HOST = ["--role", "all-in-one", "--airflow-version", "3.3.2", "--master-host", "10.20.0.1", "--init-system",
            "systemd", "--node-name", "solo", "--airflow-node-bin", "/usr/local/bin/airflow-node"]  # fmt: skip
SERVERS = ["--with-redis", "--with-postgres"]


def host_root(tmp_path: Path, distribution: str) -> Path:
    root = tmp_path / distribution
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE[distribution])
    return root


def installed_postgres(root: Path, version: int, hba: str = DEBIAN_HBA) -> None:
    """What Debian's postgresql package leaves: the server's binaries and its main cluster's config."""
    (root / f"usr/lib/postgresql/{version}/bin").mkdir(parents=True)
    (root / f"usr/lib/postgresql/{version}/bin/postgres").touch()
    conf = root / f"etc/postgresql/{version}/main"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "postgresql.conf").write_text("include_dir = 'conf.d'\nport = 5432\n")
    (conf / "pg_hba.conf").write_text(hba)


def managed_before(root: Path, postgres_cluster: str) -> None:
    """A node whose last init set up both servers, with fixed passwords (a re-run keeps them)."""
    cluster = make_cluster(
        master_host="10.20.0.1",
        broker_url="redis://:redis-fixed-password-0123456789@10.20.0.1:6379/0",
        db_url="postgresql://airflow:pg-fixed-password-0123456789@10.20.0.1:5432/airflow",
        result_backend="db+postgresql://airflow:pg-fixed-password-0123456789@10.20.0.1:5432/airflow",
    )
    node = NodeSettings("all-in-one", "3.3.2", "systemd", "/usr/bin/airflow", "/usr/local/bin/airflow-node", "solo",
                        local_redis=True, local_postgres=postgres_cluster)  # fmt: skip
    (root / "etc/airflow-node").mkdir(parents=True)
    (root / "etc/airflow-node/cluster.toml").write_text(dump_cluster(cluster))
    (root / "etc/airflow-node/node.toml").write_text(dump_node(node))


SERVER_FILES = (
    "etc/airflow-node/redis.conf",
    "etc/systemd/system/redis-server.service.d/airflow-node.conf",
    "etc/airflow-node/pg_hba.conf",
    "etc/systemd/system/airflow-node-admit.path",
    "etc/systemd/system/airflow-node-admit.service",
)


@pytest.mark.parametrize(("distribution", "version"), [("debian12", 15), ("ubuntu2404", 16)])
def test_server_files_match_golden_files(run_cli, tmp_path, distribution, version):
    """PostgreSQL 15 gets the distribution's rules copied into our pg_hba, 16+ includes them."""
    root = host_root(tmp_path, distribution)
    installed_postgres(root, version)
    managed_before(root, f"{version}/main")
    # --force: node.toml was written by this test, not by an init (its manifest)
    result = run_cli("init", "--root", root, *ONE_HOST, *SERVERS, "--db-allow", "10.20.5.0/24", "--db-allow",
                     "10.20.6.7", "--force")  # fmt: skip
    assert result.code == 0, result.err
    files = [*SERVER_FILES, f"etc/postgresql/{version}/main/conf.d/airflow-node.conf", "etc/airflow-node/node.toml"]
    rendered = {name: (root / name).read_bytes() for name in files}
    golden = GOLDEN / f"servers-{distribution}"
    if os.environ.get("UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        for name, content in rendered.items():
            (golden / name).parent.mkdir(parents=True, exist_ok=True)
            (golden / name).write_bytes(content)
    assert rendered == {name: (golden / name).read_bytes() for name in files}, f"UPDATE_GOLDEN=1, review {golden}"
    # the distribution's files are read, never written
    assert (root / f"etc/postgresql/{version}/main/pg_hba.conf").read_text() == DEBIAN_HBA
    assert "role all-in-one" not in result.out and "all-in-one node 'solo'" in result.out


def test_the_password_stays_out_of_what_init_prints_and_of_world_readable_files(run_cli, tmp_path):
    root = host_root(tmp_path, "debian12")
    managed_before(root, "15/main")
    result = run_cli("init", "--root", root, *ONE_HOST, *SERVERS, "--dry-run")
    assert result.code == 0, result.err
    assert "redis-fixed-password" not in result.out + result.err and "pg-fixed-password" not in result.out
    run_cli("init", "--root", root, *ONE_HOST, *SERVERS)
    for path in root.rglob("*"):
        if path.is_file() and "fixed-password" in path.read_text(errors="replace"):
            assert path.stat().st_mode & 0o007 == 0, f"{path} holds a password and others may read it"


@pytest.mark.parametrize(
    ("distribution", "installed", "expected"),
    [
        ("debian12", {}, ["apt-get update -qq", "apt-get install -y -qq redis-server postgresql",
                          "pg_createcluster --start 15 main"]),
        ("debian13", {}, ["apt-get update -qq", "apt-get install -y -qq redis-server postgresql",
                          "pg_createcluster --start 17 main"]),
        ("ubuntu2404", {"redis": True}, ["apt-get update -qq", "apt-get install -y -qq postgresql",
                                         "pg_createcluster --start 16 main"]),
        ("debian12", {"redis": True, "postgres": 15}, []),
    ],
)  # fmt: skip
def test_the_distributions_packages_are_listed_not_installed_under_root(
    run_cli, tmp_path, distribution, installed, expected
):
    root = host_root(tmp_path, distribution)
    if installed.get("redis"):
        (root / "usr/bin").mkdir(parents=True)
        (root / "usr/bin/redis-server").touch()
    if installed.get("postgres"):
        installed_postgres(root, installed["postgres"])
    result = run_cli("init", "--root", root, *ONE_HOST, *SERVERS, "--dry-run")
    assert result.code == 0, result.err
    listed = [line.split("would run: ", 1)[1].split("   #")[0] for line in result.out.splitlines()
              if "would run:" in line and ("apt-get" in line or "pg_createcluster" in line)]  # fmt: skip
    assert listed == [f"env DEBIAN_FRONTEND=noninteractive {c}" if "apt-get" in c else c for c in expected]
    # before the plan's own commands: they run before the node is planned
    if expected:
        assert result.out.index("apt-get") < result.out.index("useradd")


def test_a_distribution_we_do_not_set_up_is_refused_in_one_line(run_cli, tmp_path):
    root = host_root(tmp_path, "rocky9")
    before = snapshot(root)
    result = run_cli("init", "--root", root, *ONE_HOST, *SERVERS)
    assert result.code == 2
    assert (
        result.err.count("\n") == 1
        and "--with-postgres: airflow-node sets up Redis and PostgreSQL on Debian" in result.err
    )
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--broker-url", "redis://:x@10.20.0.1:6379/0"], "--broker-url: not with --with-redis"),
        (["--init-system", "supervisor"], "--with-postgres: the distribution's Redis and PostgreSQL run as systemd"),
        (["--db-allow", "10.20.0.0/33"], "--db-allow: '10.20.0.0/33' is not an IP network"),
        (["--db-allow", "10.20.0.1/24"], "--db-allow: '10.20.0.1/24' is not an IP network"),  # host bits set
        (
            ["--without-postgres", "--db-url", "postgresql://a:b@10.20.0.9/airflow", "--db-allow", "10.20.5.0/24"],
            "--db-allow: only with --with-postgres",
        ),
        (["--master-host", "master.example"], "--master-host (with --with-postgres): 'master.example' is not an IP"),
        (["--db-allow", "10.0.0.1\nhost all all 0.0.0.0/0 trust"], "--db-allow: "),
    ],
)
def test_bad_server_options_are_refused_naming_the_option(run_cli, tmp_path, extra, message):
    root = host_root(tmp_path, "debian12")
    before = snapshot(root)
    result = run_cli("init", "--root", root, *ONE_HOST, *SERVERS, *extra)
    assert result.code == 2, result.out
    assert result.err.startswith("error: " + message) or message in result.err.splitlines()[0], result.err
    assert result.err.count("\n") == 1
    assert snapshot(root) == before


def test_a_worker_takes_no_server_options(run_cli, tmp_path, cluster_file):
    result = run_cli("init", "--role", "worker", "--root", tmp_path / "w", "--airflow-version", "3.3.2", "--config",
                     cluster_file, "--with-redis")  # fmt: skip
    assert result.code == 2 and "--with-redis: for a master, not a worker" in result.err


def test_dropping_our_redis_needs_the_url_of_another_broker(run_cli, tmp_path):
    root = host_root(tmp_path, "debian12")
    installed_postgres(root, 15)
    assert run_cli("init", "--root", root, *ONE_HOST, *SERVERS).code == 0
    before = snapshot(root)
    result = run_cli("init", "--root", root, *ONE_HOST, "--without-redis")
    assert result.code == 2 and "--without-redis: give --broker-url of the server to use instead" in result.err
    assert snapshot(root) == before
    result = run_cli(
        "init", "--root", root, *ONE_HOST, "--without-redis", "--broker-url", "redis://:pw@10.20.0.9:6379/0"
    )
    assert result.code == 0, result.err
    assert not (root / "etc/airflow-node/redis.conf").exists()
    assert not (root / "etc/systemd/system/redis-server.service.d/airflow-node.conf").exists()
    assert "systemctl try-restart redis-server.service" in result.out  # back to the distribution's settings
    assert (root / "etc/airflow-node/pg_hba.conf").exists()  # PostgreSQL stays ours


def test_the_one_host_role_runs_the_master_and_a_worker(run_cli, tmp_path):
    root = host_root(tmp_path, "debian12")
    installed_postgres(root, 15)
    result = run_cli("init", "--root", root, *ONE_HOST, *SERVERS, "-c", "3", "--start")
    assert result.code == 0, result.err
    units = sorted(p.name for p in (root / "etc/systemd/system").glob("airflow-*"))
    assert units == ["airflow-all-in-one.target", "airflow-api-server.service", "airflow-dag-processor.service",
                     "airflow-db-migrate.service", "airflow-flower.service", "airflow-node-admit.path",
                     "airflow-node-admit.service", "airflow-scheduler.service", "airflow-triggerer.service",
                     "airflow-worker.service"]  # fmt: skip
    assert "celery worker -c 3 -H celery@solo" in (root / "etc/systemd/system/airflow-worker.service").read_text()
    assert "systemctl start airflow-all-in-one.target" in result.out  # --start, listed under --root
    assert "the UI: http://10.20.0.1:8080 (user admin" in result.out
    cluster = (root / "etc/airflow-node/cluster.toml").read_text()
    assert 'url = "redis://:' in cluster and "@10.20.0.1:6379/0" in cluster
    assert 'url = "postgresql://airflow:' in cluster and "@10.20.0.1:5432/airflow" in cluster


def test_uninstall_gives_the_servers_back_and_keeps_the_database(run_cli, tmp_path):
    root = host_root(tmp_path, "debian12")
    installed_postgres(root, 15)
    assert run_cli("init", "--root", root, *ONE_HOST, *SERVERS).code == 0
    result = run_cli("uninstall", "--root", root)
    assert result.code == 0, result.err
    for name in (*SERVER_FILES, "etc/postgresql/15/main/conf.d/airflow-node.conf"):
        assert not (root / name).exists(), name
    assert not list((root / "etc/postgresql/15/main/conf.d").iterdir())  # removed, not moved aside
    assert "systemctl try-restart postgresql@15-main.service" in result.out
    assert "kept the database airflow in PostgreSQL 15/main" in result.out and "DROP" not in result.out
    assert (root / "etc/postgresql/15/main/pg_hba.conf").read_text() == DEBIAN_HBA


def test_uninstall_purge_drops_the_database(run_cli, tmp_path):
    root = host_root(tmp_path, "debian12")
    installed_postgres(root, 15)
    assert run_cli("init", "--root", root, *ONE_HOST, *SERVERS).code == 0
    result = run_cli("uninstall", "--root", root, "--purge")
    assert result.code == 0, result.err
    listed = result.out.split("not run under --root", 1)[1]
    assert "psql -X -q -At -v ON_ERROR_STOP=1 -p 5432 -d postgres   (as postgres)" in listed
    assert "kept the database" not in result.out


def test_scram_verifier_round_trip():
    verifier = scram_verifier("secret-pw", b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert scram_matches("secret-pw", verifier)
    assert not scram_matches("secret-px", verifier)
    assert not scram_matches("secret-pw", "md5" + "0" * 32)
    assert not scram_matches("secret-pw", "SCRAM-SHA-256$99999999:AA==$AA==:AA==")  # iterations bounded


def test_only_the_rules_of_the_distributions_pg_hba_are_copied():
    assert hba_rules(DEBIAN_HBA) == (
        "local   all             postgres                                peer\n"
        "local   all             all                                     peer\n"
        "host    all             all             127.0.0.1/32            scram-sha-256\n"
    )


def test_a_url_for_a_server_the_last_init_set_up_says_how_to_hand_it_back(run_cli, tmp_path):
    root = host_root(tmp_path, "debian12")
    installed_postgres(root, 15)
    assert run_cli("init", "--root", root, *ONE_HOST, *SERVERS).code == 0
    before = snapshot(root)
    result = run_cli("init", "--root", root, *ONE_HOST, "--broker-url", "redis://:pw@10.20.0.9:6379/0")
    assert result.code == 2
    assert "--broker-url: this host's server is airflow-node's (--with-redis, as the last init recorded); add " \
           "--without-redis to use another" in result.err  # fmt: skip
    assert snapshot(root) == before


def test_init_and_admit_take_turns_on_the_node(run_cli, tmp_path):
    """One lock on the state directory from plan to apply: an init waits for an admit that is applying."""
    root = host_root(tmp_path, "debian12")
    installed_postgres(root, 15)
    assert run_cli("init", "--root", root, *ONE_HOST, *SERVERS).code == 0
    holder = os.open(root / "var/lib/airflow-node", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process's lock, as far as flock is concerned
        before = snapshot(root)
        refused = pytest.raises(UserError, match="another airflow-node init or admit has held its lock")
        with refused, node_lock(Target.at(root), wait=0.2):
            pass
        assert snapshot(root) == before  # no lock file left behind
    finally:
        os.close(holder)
    with node_lock(Target.at(root), wait=0.2):
        pass
