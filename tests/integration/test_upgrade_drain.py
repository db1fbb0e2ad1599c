"""The upgrade's drain reads the metadata DB for the tasks it waits on (a private PostgreSQL, password auth)."""

from __future__ import annotations

import pytest
from servers import running_postgres

from airflow_nodes.errors import OperationError
from airflow_nodes.upgrade import other_masters_running, unfinished_tasks

pytestmark = pytest.mark.integration
postgres = pytest.fixture(scope="module")(running_postgres)


def test_queued_and_running_task_instances_are_what_the_drain_waits_for(postgres):
    postgres.psql(
        "CREATE TABLE task_instance (dag_id text, task_id text, run_id text, state text, hostname text);"
        "INSERT INTO task_instance VALUES ('etl', 'load', 'r1', 'running', '10.0.0.11'),"
        " ('etl', 'extract', 'r1', 'success', '10.0.0.11'), ('etl', 'report', 'r1', 'queued', NULL),"
        " ('etl', 'wait', 'r1', 'deferred', NULL), ('etl', 'later', 'r1', 'scheduled', NULL);"
        f"ALTER TABLE task_instance OWNER TO {postgres.user};",
        database=postgres.database,
    )
    assert unfinished_tasks(postgres.url()) == ["etl.load running on 10.0.0.11", "etl.report queued"]
    postgres.psql("UPDATE task_instance SET state = 'success' WHERE state IN ('running', 'queued')",
                  database=postgres.database)  # fmt: skip
    assert unfinished_tasks(postgres.url().replace("postgresql://", "postgresql+psycopg2://")) == []  # as Airflow's


@pytest.mark.parametrize("password", ["Wrong-pw-42", "ab%zzSECRET"])  # the second, loosely encoded, once leaked
def test_a_wrong_password_is_an_operation_error_without_the_password(postgres, password):
    url = f"postgresql://{postgres.user}:{password}@127.0.0.1:{postgres.port}/{postgres.database}"
    with pytest.raises(OperationError) as raised:
        unfinished_tasks(url)
    assert "wrong password for user airflow" in str(raised.value), raised.value
    assert password not in str(raised.value) and "SECRET" not in str(raised.value)


def test_the_upgrade_names_the_scheduling_daemons_other_masters_still_run(postgres):
    """Several masters: the jobs that heartbeat on other hosts (Airflow's job table) stop an upgrade."""
    postgres.psql(
        "CREATE TABLE job (id serial, state text, job_type text, latest_heartbeat timestamptz, hostname text);"
        "INSERT INTO job (state, job_type, latest_heartbeat, hostname) VALUES"
        " ('running', 'SchedulerJob', now(), '10.0.0.2'), ('running', 'TriggererJob', now(), '10.0.0.2'),"
        " ('running', 'SchedulerJob', now(), '10.0.0.1'),"  # this master's own
        " ('running', 'SchedulerJob', now() - interval '5 minutes', '10.0.0.3'),"  # a master long gone
        " ('success', 'DagProcessorJob', now(), '10.0.0.3'), ('running', 'LocalTaskJob', now(), '10.0.0.11');"
        f"ALTER TABLE job OWNER TO {postgres.user};",
        database=postgres.database,
    )
    assert other_masters_running(postgres.url(), "10.0.0.1") == ["SchedulerJob on 10.0.0.2", "TriggererJob on 10.0.0.2"]
    postgres.psql("UPDATE job SET state = 'success' WHERE hostname = '10.0.0.2'", database=postgres.database)
    assert other_masters_running(postgres.url(), "10.0.0.1") == []


def test_several_masters_need_postgresql_12_or_later(postgres, monkeypatch):
    """`join-token --role master` reads the server's version: PostgreSQL 15 here passes; a server older than
    what several schedulers need (the bar raised past it) is refused, naming the option."""
    from airflow_nodes import join
    from airflow_nodes.errors import UserError

    join.check_database_for_masters(postgres.url())
    monkeypatch.setattr(join, "OLDEST_DB_FOR_MASTERS", 990000)
    with pytest.raises(UserError, match=r"^--role master: the metadata DB is PostgreSQL 1\d; several schedulers"):
        join.check_database_for_masters(postgres.url())
    with pytest.raises(UserError, match=r"^--role master: the metadata DB does not answer") as raised:
        join.check_database_for_masters(postgres.url(password="Wrong-pw-42"))
    assert "Wrong-pw-42" not in str(raised.value)
