"""`airflow-node health` against a private PostgreSQL cluster with scram-sha-256 password auth."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from fake_postgres import PlaintextPostgres
from servers import DB_PASSWORD, broker_url, free_port, render_node, running_postgres

from airflow_nodes.cli import main
from airflow_nodes.netio import ProbeFailure
from airflow_nodes.pgclient import connect, query_database

pytestmark = pytest.mark.integration
postgres = pytest.fixture(scope="module")(running_postgres)


@pytest.fixture
def impostor():
    server = PlaintextPostgres()
    yield server
    server.stop()


def probe_db(tmp_path, capsys, db_url: str, role: str = "master", **overrides) -> tuple[int, list[dict], str]:
    root = render_node(tmp_path / "node", role, broker=broker_url(free_port()), db=db_url, **overrides)
    capsys.readouterr()
    code = main(["health", "--root", str(root), "--only", "db", "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out)["results"], captured.out + captured.err


def test_right_password_runs_select_1_and_reports_the_version(tmp_path, capsys, postgres):
    code, results, output = probe_db(tmp_path, capsys, postgres.url())
    # Airflow 3.3 defaults the result backend to the same database: one probe, not two.
    assert [r["status"] for r in results] == ["OK"], results
    assert "SELECT 1 ok, PostgreSQL 15" in results[0]["detail"]
    assert code == 0
    assert DB_PASSWORD not in output and quote(DB_PASSWORD, safe="") not in output


def test_alembic_revision_is_shown_when_airflow_created_its_tables(tmp_path, capsys, postgres):
    postgres.psql(
        "CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32));"
        "GRANT SELECT ON alembic_version TO airflow; DELETE FROM alembic_version;"
        "INSERT INTO alembic_version VALUES ('29ce7909c52b');"
    )
    # the table lives in the postgres DB; point the node there to read it
    code, results, _ = probe_db(tmp_path, capsys, postgres.url(database="postgres"))
    assert code == 0 and "alembic revision 29ce7909c52b" in results[0]["detail"]


def test_wrong_password_says_so(tmp_path, capsys, postgres):
    code, results, output = probe_db(tmp_path, capsys, postgres.url(password="wr%ng@:pw"))
    assert code == 2
    assert results[0]["detail"] == "authentication failed: wrong password for user airflow"
    assert "wr%ng" not in output and "wr%25ng" not in output


def test_missing_database_says_so(tmp_path, capsys, postgres):
    code, results, _ = probe_db(tmp_path, capsys, postgres.url(database="nodb"))
    assert code == 2
    assert results[0]["detail"] == "database nodb does not exist"


def test_separate_result_backend_is_probed_too(tmp_path, capsys, postgres):
    backend = "db+" + postgres.url(database="nodb")
    code, results, _ = probe_db(tmp_path, capsys, postgres.url(), result_backend=backend)
    assert [(r["target"].split()[0], r["status"]) for r in results] == [("metadata", "OK"), ("result", "CRITICAL")]
    assert code == 2


def test_airflow_3_worker_probes_only_the_result_backend(tmp_path, capsys, postgres):
    backend = "db+" + postgres.url(database="postgres")
    code, results, _ = probe_db(tmp_path, capsys, postgres.url(), role="worker", result_backend=backend)
    assert [r["target"].split()[0] for r in results] == ["result"]
    assert code == 0


def test_stopped_server_is_refused(tmp_path, capsys, postgres):
    postgres.stop()
    try:
        code, results, _ = probe_db(tmp_path, capsys, postgres.url())
    finally:
        postgres.start()
    assert code == 2
    assert "connection refused" in results[0]["detail"]


def test_the_impostor_gets_the_password_from_a_client_that_allows_plain_text(impostor):
    # libpq's default, sslmode=prefer, falls back to plain text when the server refuses SSL
    with pytest.raises(ProbeFailure):
        query_database(impostor.url(quote(DB_PASSWORD, safe=""), "sslmode=prefer"), timeout=5)
    assert impostor.passwords == [DB_PASSWORD]


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_the_urls_sslmode_keeps_the_password_from_a_server_without_ssl(tmp_path, capsys, impostor, sslmode):
    url = impostor.url(quote(DB_PASSWORD, safe=""), f"sslmode={sslmode}&connect_timeout=5")
    code, results, output = probe_db(tmp_path, capsys, url)
    assert code == 2 and "SSL" in results[0]["detail"], results
    assert impostor.ssl_requests and not impostor.startups and impostor.passwords == []
    assert DB_PASSWORD not in output and quote(DB_PASSWORD, safe="") not in output


def test_the_urls_parameters_reach_the_server(postgres):
    url = postgres.url() + "?application_name=from-the-url&options=-c%20search_path%3Dfrom_url"
    with connect(url, timeout=10) as connection:
        row = connection.execute(
            "SELECT application_name, current_setting('search_path'), current_setting('statement_timeout')"
            " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row == ("from-the-url", "from_url", "10s")  # the probe's statement timeout still applies


def test_a_host_list_is_tried_in_order_and_target_session_attrs_applies(tmp_path, capsys, postgres):
    servers = f"host=127.0.0.1:{free_port()}&host=127.0.0.1:{postgres.port}"  # nothing listens on the first
    url = f"postgresql://{postgres.user}:{quote(DB_PASSWORD, safe='')}@/{postgres.database}?{servers}"
    code, results, _ = probe_db(tmp_path, capsys, url)
    assert code == 0 and results[0]["status"] == "OK", results
    with pytest.raises(ProbeFailure) as failed:
        query_database(url + "&target_session_attrs=standby", timeout=10)
    assert "standby" in str(failed.value)
