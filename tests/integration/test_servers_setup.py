"""localservers.py against real servers: what init --with-postgres/--with-redis writes and runs works.

- PostgreSQL 15 (a private one, as the postgres account, its socket in /var/run/postgresql) starts with the
  pg_hba.conf plan_servers renders (trailing comments on rules included) and reads every rule of it; the
  setup command, run as apply runs it, makes the role and database once (a re-run changes nothing); the
  airflow role logs in over TCP with SCRAM (the server checks our hand-computed verifier) and creates
  tables in its database; database_ready refuses a role or database of someone else's and a server it
  cannot log in to; drop_database_sql removes both; check_port_free and check_local_address tell.
- Redis: the redis.conf plan_servers renders includes Debian's and its settings win (requirepass,
  protected mode).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import redis
from servers import PG_BIN, REDIS_SERVER, _port_open, free_port, stop_pid

from airflow_nodes import localservers
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import UserError
from airflow_nodes.execute import run_checked
from airflow_nodes.localservers import Distribution, ServerFacts
from airflow_nodes.node import NodeSettings

from conftest import make_cluster, wait_for

pytestmark = pytest.mark.integration
SOCKET_DIR = "/var/run/postgresql"  # where Debian's psql (run as postgres, `psql -p PORT`) looks
AS_POSTGRES = dict(user="postgres", group="postgres", extra_groups=[])


def context(broker_url: str, db_url: str, **node: object) -> NodeContext:
    cluster = make_cluster(master_host="127.0.0.1", broker_url=broker_url, db_url=db_url, result_backend=f"db+{db_url}")
    settings = NodeSettings("all-in-one", "3.3.2", "systemd", "/usr/bin/airflow", "/usr/local/bin/airflow-node",
                            "solo", **node)  # fmt: skip
    return NodeContext(cluster, settings)


def planned(files: list, path: str) -> str:
    (found,) = [f for f in files if f.path == path]
    return found.content.decode()


class Postgres:
    """PostgreSQL 15 in a temp dir, started with the pg_hba.conf plan_servers renders."""

    def __init__(self):
        self.port, self.password = free_port(), localservers.generated_password()
        url = f"postgresql://airflow:{self.password}@127.0.0.1:{self.port}/airflow"
        self.ctx = context("redis://:pw@127.0.0.1:6379/0", url, local_postgres="15/main")
        self.facts = ServerFacts(Distribution("debian", "12"), (), postgres_version=15, postgres_cluster_exists=True,
                                 postgres_port=self.port, distribution_hba="local all postgres peer\n",
                                 enrolled=(("worker1", "127.0.0.2"),))  # fmt: skip
        files, _, self.setup = localservers.plan_servers(self.ctx, self.facts)
        self.dir = Path(tempfile.mkdtemp(prefix="localservers-pg-"))  # postgres must enter it
        shutil.chown(self.dir, "postgres", "postgres")
        self.hba_text = planned(files, localservers.PG_HBA)
        self.hba = self.dir / "pg_hba.conf"
        self.hba.write_text(self.hba_text)
        pwfile = self.dir / "pw"
        pwfile.write_text("postgres-superuser\n")
        for path in (self.hba, pwfile):
            shutil.chown(path, "postgres", "postgres")
        self.process: subprocess.Popen | None = None
        try:
            subprocess.run([PG_BIN / "initdb", "-D", self.dir / "data", "-U", "postgres", "--pwfile", pwfile,
                            "--no-sync", "-E", "UTF8", "--auth-local=peer", "--auth-host=scram-sha-256"],
                           check=True, capture_output=True, **AS_POSTGRES)  # fmt: skip
            log = (self.dir / "log").open("w")
            self.process = subprocess.Popen(
                [PG_BIN / "postgres", "-D", self.dir / "data", "-p", str(self.port), "-k", SOCKET_DIR,
                 "-c", "listen_addresses=127.0.0.1", "-c", f"hba_file={self.hba}",
                 "-c", "password_encryption=scram-sha-256", "-c", "fsync=off", "-c", "shared_buffers=16MB"],
                stdout=log, stderr=log, **AS_POSTGRES,
            )  # fmt: skip
            wait_for(self._ready, 30, f"postgres on port {self.port}")
        except BaseException:
            self.remove()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited: {(self.dir / 'log').read_text()}")
        ready = [PG_BIN / "pg_isready", "-h", SOCKET_DIR, "-p", str(self.port), "-q"]
        return subprocess.run(ready, check=False).returncode == 0

    def sql(self, sql: str) -> str:
        """SQL as the postgres account over the socket (peer), from our own psql rather than the module's."""
        argv = [PG_BIN / "psql", "-X", "-h", SOCKET_DIR, "-p", str(self.port), "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-Atc", sql]  # fmt: skip
        return subprocess.run(argv, check=True, capture_output=True, text=True, cwd="/", **AS_POSTGRES).stdout.strip()

    def connect(self, password: str) -> psycopg.Connection:
        return psycopg.connect(f"host=127.0.0.1 port={self.port} dbname=airflow user=airflow password={password}")

    def remove(self) -> None:
        if self.process is not None:
            stop_pid(self.process, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    server = Postgres()
    yield server
    server.remove()


@pytest.fixture
def pg(server):
    """The server without an airflow role or database, before and after each test."""
    clean = "DROP DATABASE IF EXISTS airflow WITH (FORCE)", "DROP ROLE IF EXISTS airflow", "DROP ROLE IF EXISTS other"
    for statement in clean:
        server.sql(statement)
    yield server
    for statement in clean:
        server.sql(statement)


def test_postgres_reads_every_rule_of_our_pg_hba(pg):
    assert "127.0.0.2/32 scram-sha-256  # worker worker1, enrolled" in pg.hba_text
    assert pg.sql("SHOW hba_file") == str(pg.hba)
    rules = pg.sql("SELECT type, database[1], user_name[1], address, auth_method, error FROM pg_hba_file_rules")
    assert rules.splitlines() == [
        "host|airflow|airflow|127.0.0.1|scram-sha-256|",
        "host|airflow|airflow|::1|scram-sha-256|",
        "host|airflow|airflow|127.0.0.2|scram-sha-256|",
        "local|all|postgres||peer|",
    ]


def test_setup_makes_the_role_and_database_once(pg):
    assert localservers.database_ready(pg.facts, pg.password) is False
    (command,) = pg.setup
    run_checked(command.argv, input=command.input, user=command.user)
    assert localservers.database_ready(pg.facts, pg.password) is True
    verifier = pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'airflow'")
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:\S+\$\S+:\S+", verifier)
    assert pg.password not in command.input and pg.password not in " ".join(command.argv)
    run_checked(command.argv, input=command.input, user=command.user)
    assert pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'airflow'") == verifier
    assert pg.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'airflow'") == "airflow"


def test_airflow_logs_in_with_scram_and_creates_tables(pg):
    (command,) = pg.setup
    run_checked(command.argv, input=command.input, user=command.user)
    with pg.connect(pg.password) as conn:
        conn.execute("CREATE TABLE dag_run (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO dag_run VALUES (1)")
        assert conn.execute("SELECT current_user, count(*) FROM dag_run GROUP BY 1").fetchone() == ("airflow", 1)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect("wrong-password")


def test_someone_elses_role_or_database_is_refused(pg):
    pg.sql("CREATE ROLE airflow LOGIN PASSWORD 'another-password'")
    with pytest.raises(UserError, match="another password"):
        localservers.database_ready(pg.facts, pg.password)
    pg.sql("DROP ROLE airflow")
    pg.sql("CREATE ROLE airflow LOGIN")  # no password: CREATE DATABASE ... OWNER would adopt it
    with pytest.raises(UserError, match="another password, or none"):
        localservers.database_ready(pg.facts, pg.password)
    pg.sql("DROP ROLE airflow")
    # our password, and a right we never give
    pg.sql(f"CREATE ROLE airflow LOGIN CREATEROLE PASSWORD '{localservers.scram_verifier(pg.password)}'")
    with pytest.raises(UserError, match="more rights than LOGIN"):
        localservers.database_ready(pg.facts, pg.password)
    pg.sql("DROP ROLE airflow")
    pg.sql("CREATE ROLE other")
    pg.sql("CREATE DATABASE airflow OWNER other")
    with pytest.raises(UserError, match="owned by 'other'"):
        localservers.database_ready(pg.facts, pg.password)


def test_no_server_on_the_port_cannot_log_in(pg):
    with pytest.raises(UserError, match="cannot log in"):
        localservers.database_ready(replace(pg.facts, postgres_port=free_port()), pg.password)


def test_drop_database_sql_removes_role_and_database(pg):
    (command,) = pg.setup
    run_checked(command.argv, input=command.input, user=command.user)
    with pg.connect(pg.password):  # a session open on it: WITH (FORCE) ends it
        drop = localservers.psql_command(pg.facts, localservers.drop_database_sql(), "purge")
        run_checked(drop.argv, input=drop.input, user=drop.user)
    assert pg.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'airflow'") == "0"
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'airflow'") == "0"
    assert localservers.database_ready(pg.facts, pg.password) is False


def test_check_port_free_tells_the_service_from_another_program(pg):
    with pytest.raises(UserError) as caught:
        localservers.check_port_free(pg.port, "some-unit-that-does-not-exist.service", "--with-postgres")
    assert str(caught.value).startswith(f"--with-postgres: port {pg.port} is taken by another program than ")
    assert localservers.check_port_free(free_port(), "some-unit-that-does-not-exist.service", "--with-postgres") is None
    # what tells them apart: the listening sockets (the kernel's table) are the server's own (as systemd's MainPID)
    listening = localservers.listening_sockets(pg.port)
    assert listening and listening <= localservers.sockets_of(pg.process.pid)
    assert not listening & localservers.sockets_of(os.getpid())


def test_check_local_address():
    assert localservers.check_local_address("127.0.0.1") is None
    with pytest.raises(UserError, match="--master-host: 192.0.2.1 is not an address of this host"):
        localservers.check_local_address("192.0.2.1")


def test_our_redis_settings_win_over_debians(tmp_path):
    if not Path("/etc/redis/redis.conf").exists():
        pytest.skip("no /etc/redis/redis.conf (Debian's redis-server package)")
    password, port = localservers.generated_password(), free_port()
    ctx = context(f"redis://:{password}@127.0.0.1:6379/0", "postgresql://airflow:pw@127.0.0.1:5432/airflow",
                  local_redis=True)  # fmt: skip
    files, _, _ = localservers.plan_servers(ctx, ServerFacts(Distribution("debian", "12"), ()))
    conf = planned(files, localservers.REDIS_CONF)
    directives = [line for line in conf.splitlines() if line and not line.startswith("#")]
    assert directives[0] == "include /etc/redis/redis.conf"  # Debian's first: what follows wins
    # The machine's own Redis holds 6379 (and may hold ::1): only port and bind change, to a free port on loopback.
    ours, ports = re.subn(r"(?m)^port 6379$", f"port {port}", conf)
    ours, binds = re.subn(r"(?m)^bind .*$", "bind 127.0.0.1", ours)
    assert (ports, binds) == (1, 1)
    (tmp_path / "redis.conf").write_text(ours)
    process = subprocess.Popen(
        [REDIS_SERVER, tmp_path / "redis.conf", "--daemonize", "no", "--dir", tmp_path, "--logfile", "",
         "--pidfile", tmp_path / "pid"],
        stdout=(tmp_path / "log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _port_open(port) or process.poll() is not None, 10, f"redis-server on port {port}")
        assert process.poll() is None, (tmp_path / "log").read_text()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        client = redis.Redis(port=port, password=password, socket_timeout=5, decode_responses=True)
        assert client.ping() is True
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("requirepass") == {"requirepass": password}
    finally:
        stop_pid(process)
