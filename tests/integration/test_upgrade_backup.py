"""The upgrade's pg_dump backup and pg_restore rollback against a private PostgreSQL (password auth) and an
impostor server that refuses SSL: every libpq parameter of the DB URL reaches the tools, the password
never goes where the URL forbids, and the dump is root's alone from its first byte."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from fake_postgres import PlaintextPostgres
from servers import DB_PASSWORD, broker_url, free_port, render_node, running_postgres

from airflow_nodes.errors import OperationError
from airflow_nodes.target import Target
from airflow_nodes.upgrade import UpgradePlan, backup_database, plan_upgrade, restore_database

from conftest import wait_for

pytestmark = pytest.mark.integration
postgres = pytest.fixture(scope="module")(running_postgres)


def plan_for(tmp_path: Path, db_url: str, backup_dir: Path | None = None) -> UpgradePlan:
    """The plan of an upgrade from 2.11.2 to 3.3.2 on a node rendered with db_url."""
    root = render_node(tmp_path / "node", "master", broker=broker_url(free_port()), db=db_url, version="2.11.2")
    return plan_upgrade(Target.at(root), "3.3.2", backup_dir or tmp_path / "backups")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_backup_and_restore_reach_the_servers_of_a_host_list(tmp_path, postgres):
    servers = f"host=127.0.0.1:{free_port()}&host=127.0.0.1:{postgres.port}"  # nothing listens on the first
    url = f"postgresql://{postgres.user}:{quote(DB_PASSWORD, safe='')}@/{postgres.database}?{servers}"
    table = f"CREATE TABLE kept (v text); INSERT INTO kept VALUES ('x'); ALTER TABLE kept OWNER TO {postgres.user}"
    postgres.psql(table, database=postgres.database)
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o755)
    plan = plan_for(tmp_path, url + "&target_session_attrs=read-write&application_name=upgrade-test", backups)
    dump = backup_database(plan)
    assert mode(backups) == 0o700 and mode(dump) == 0o600  # an existing directory is made root's alone
    postgres.psql("DROP TABLE kept", database=postgres.database)
    restore_database(plan, dump)
    assert postgres.psql("SELECT v FROM kept", database=postgres.database) == "x\n"


def test_pg_dump_honours_target_session_attrs_and_leaves_no_dump(tmp_path, postgres):
    plan = plan_for(tmp_path, postgres.url() + "?target_session_attrs=standby")  # the server is a primary
    with pytest.raises(OperationError) as failed:
        backup_database(plan)
    assert "pg_dump" in str(failed.value) and "standby" in str(failed.value), failed.value
    assert list(plan.backup_dir.iterdir()) == []


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_pg_dump_never_sends_the_password_to_a_server_without_ssl_when_the_url_requires_it(tmp_path, sslmode):
    impostor = PlaintextPostgres()
    try:
        plan = plan_for(tmp_path, impostor.url(quote(DB_PASSWORD, safe=""), f"sslmode={sslmode}&connect_timeout=5"))
        with pytest.raises(OperationError) as failed:
            backup_database(plan)
    finally:
        impostor.stop()
    assert "SSL" in str(failed.value), failed.value
    assert impostor.ssl_requests and not impostor.startups and impostor.passwords == []
    assert DB_PASSWORD not in str(failed.value) and list(plan.backup_dir.iterdir()) == []


def test_the_dump_is_0600_from_its_creation_while_pg_dump_still_connects(tmp_path):
    impostor = PlaintextPostgres(held=True)  # pg_dump opens its file, then waits for the server
    failures: list[BaseException] = []

    def backup() -> None:
        try:
            backup_database(plan)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failures.append(exc)

    try:
        plan = plan_for(tmp_path, impostor.url(quote(DB_PASSWORD, safe="")))
        thread = threading.Thread(target=backup)
        thread.start()
        dump = wait_for(lambda: next(plan.backup_dir.glob("*.dump"), None), 30, "pg_dump to open its file")
        assert mode(dump) == 0o600 and mode(plan.backup_dir) == 0o700
    finally:
        impostor.release()
        thread.join(60)
        impostor.stop()
    assert isinstance(failures[0], OperationError) and "password authentication failed" in str(failures[0])


def test_a_backup_dir_swapped_for_a_link_after_the_plan_is_refused(tmp_path, postgres):
    plan = plan_for(tmp_path, postgres.url())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    plan.backup_dir.symlink_to(elsewhere)
    with pytest.raises(OperationError) as failed:
        backup_database(plan)
    assert str(failed.value) == f"--backup-dir: {plan.backup_dir} is a symbolic link; give the directory itself"
    assert list(elsewhere.iterdir()) == [] and mode(elsewhere) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership matters only to root")
def test_a_backup_dir_another_account_owns_is_refused(tmp_path, postgres):
    plan = plan_for(tmp_path, postgres.url())
    plan.backup_dir.mkdir(mode=0o755)
    os.chown(plan.backup_dir, 65534, 65534)
    with pytest.raises(OperationError) as failed:
        backup_database(plan)
    assert "--backup-dir:" in str(failed.value) and "another account (uid 65534)" in str(failed.value)
    assert list(plan.backup_dir.iterdir()) == [] and mode(plan.backup_dir) == 0o755
