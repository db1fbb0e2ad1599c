"""A libpq multi-host DB URL with target_session_attrs=read-write, against two real PostgreSQL servers: a
primary and its streaming standby (pg_basebackup -R), the standby listed first.

Proven: root's connection (the db probe) and libpq's tools (pg_dump, psql in the upgrade) reach the primary
and skip the standby; after the standby is promoted and the old primary is gone, the same URL reaches the
new primary, and the probe says which attempt failed why while no server is writable.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from servers import PG_BIN, free_port, stop_pid

from airflow_nodes.netio import ProbeFailure
from airflow_nodes.pgclient import connect, libpq_tool_args, query_database

from conftest import wait_for

pytestmark = pytest.mark.integration
AS_POSTGRES = {"user": "postgres", "group": "postgres", "extra_groups": []}
PASSWORD = "failover-pw%/?#"  # characters that need quoting in a URL


class Server:
    """One PostgreSQL server in a directory of its own, run as the postgres account on 127.0.0.1."""

    def __init__(self, workdir: Path, name: str):
        self.data, self.port, self.name = workdir / name, free_port(), name
        self.socket_dir = workdir
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.socket_dir / f"{self.name}.log").open("a")
        self.process = subprocess.Popen(
            [PG_BIN / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.socket_dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=16MB"],
            stdout=log, stderr=log, **AS_POSTGRES,
        )  # fmt: skip
        wait_for(self.ready, 30, f"postgres {self.name} on port {self.port}")

    def ready(self) -> bool:
        argv = [PG_BIN / "pg_isready", "-h", self.socket_dir, "-p", str(self.port), "-q"]
        return subprocess.run(argv, check=False).returncode == 0

    def sql(self, text: str) -> str:
        argv = [PG_BIN / "psql", "-h", self.socket_dir, "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-Atc", text]  # fmt: skip
        return subprocess.run(argv, check=True, capture_output=True, text=True, **AS_POSTGRES).stdout.strip()

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process, timeout=30)
            self.process = None


@pytest.fixture
def pair():
    """A primary with the role and database Airflow uses, and its streaming standby."""
    workdir = Path(tempfile.mkdtemp(prefix="failover-pg-"))
    shutil.chown(workdir, "postgres", "postgres")
    primary, standby = Server(workdir, "primary"), Server(workdir, "standby")
    try:
        subprocess.run([PG_BIN / "initdb", "-D", primary.data, "-U", "postgres", "--no-sync", "-E", "UTF8",
                        "--auth-local=trust", "--auth-host=scram-sha-256"],
                       check=True, capture_output=True, **AS_POSTGRES)  # fmt: skip
        primary.start()
        primary.sql(f"CREATE ROLE airflow LOGIN PASSWORD '{PASSWORD}'")
        primary.sql("CREATE DATABASE airflow OWNER airflow")
        # the standby: a base backup over the primary's socket (local replication is trusted by initdb)
        subprocess.run([PG_BIN / "pg_basebackup", "-h", workdir, "-p", str(primary.port), "-U", "postgres",
                        "-D", standby.data, "-R", "-X", "stream", "--no-sync", "--checkpoint=fast"],
                       check=True, capture_output=True, **AS_POSTGRES)  # fmt: skip
        standby.start()
        assert standby.sql("SELECT pg_is_in_recovery()") == "t"
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def url(*servers: Server) -> str:
    """The DB URL an operator gives for a primary and its standby, in SQLAlchemy's multi-host form."""
    hosts = "&".join(f"host=127.0.0.1:{server.port}" for server in servers)
    return f"postgresql://airflow:{quote(PASSWORD, safe='')}@/airflow?{hosts}&target_session_attrs=read-write"


def reached(db_url: str) -> tuple[int, bool]:
    """(the port of the server root's connection reached, whether it is in recovery)."""
    with connect(db_url, 5) as connection:
        return connection.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()


def reached_by_psql(db_url: str) -> str:
    """What psql (a libpq tool, as the upgrade runs pg_dump and psql) reaches with the same URL."""
    args, env = libpq_tool_args(db_url)
    argv = [PG_BIN / "psql", *args, "-Atc", "SELECT inet_server_port() || ' ' || pg_is_in_recovery()"]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()


def test_a_multi_host_url_reaches_the_primary_and_follows_a_failover(pair):
    primary, standby = pair
    db_url = url(standby, primary)  # the standby first: target_session_attrs makes libpq skip it
    assert reached(db_url) == (primary.port, False)
    assert reached_by_psql(db_url) == f"{primary.port} false"
    assert query_database(db_url, 5).startswith("SELECT 1 ok, PostgreSQL ")

    # the primary is lost; the standby is promoted (by the operator or their failover tool)
    primary.stop()
    with pytest.raises(ProbeFailure) as caught:  # nothing writable: each attempt says why it failed
        reached(db_url)
    assert f"127.0.0.1:{standby.port} " in str(caught.value) and f"127.0.0.1:{primary.port} " in str(caught.value)
    subprocess.run([PG_BIN / "pg_ctl", "promote", "-D", standby.data, "-w"], check=True, capture_output=True,
                   **AS_POSTGRES)  # fmt: skip
    assert reached(db_url) == (standby.port, False)
    assert reached_by_psql(db_url) == f"{standby.port} false"
    with connect(db_url, 5) as connection:  # and it takes writes
        connection.execute("CREATE TABLE after_failover (id integer)")
