"""A database URL read as SQLAlchemy reads it for Airflow: the libpq keywords our own clients get."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from airflow_nodes.errors import UserError
from airflow_nodes.urls import check_db_url, libpq_conninfo, libpq_params

BASE = "postgresql+psycopg2://airflow:p%40ss@db1:5433/airflow"


@pytest.mark.parametrize(
    "url,expected",
    [
        (BASE, {"host": "db1", "port": "5433", "user": "airflow", "password": "p@ss", "dbname": "airflow"}),
        (BASE + "?sslmode=verify-full&sslrootcert=/etc/ssl/pg.crt&options=-c+search_path%3Dx&connect_timeout=3",
         {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/pg.crt", "options": "-c search_path=x",
          "connect_timeout": "3"}),
        # SQLAlchemy's two host-list forms; a query's host replaces the URL's
        ("postgresql://airflow:pw@/airflow?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
         {"host": "h1,h2", "port": "5432,5433", "target_session_attrs": "read-write"}),
        (BASE + "?host=h1,h2&port=5432,5433", {"host": "h1,h2", "port": "5432,5433"}),
        (BASE + "?host=h1&host=h2", {"host": "h1,h2", "port": ","}),  # each on libpq's default port
        (BASE + "?host=h1", {"host": "h1", "port": "5433"}),
        (BASE + "?host=h1:6000", {"host": "h1", "port": "6000"}),
        ("postgresql://airflow@/airflow?host=/run/postgresql", {"host": "/run/postgresql", "user": "airflow"}),
    ],
)  # fmt: skip
def test_every_query_parameter_and_host_list_becomes_a_libpq_keyword(url, expected):
    params = libpq_params(url)
    assert params.items() >= expected.items(), params
    check_db_url(url)  # init takes it


@pytest.mark.parametrize(
    "url,words",
    [
        (BASE + "?sslpassword=KeyPassphrase9", "no ?sslpassword="),
        (BASE + "?password=TopSecretDB", "not in ?password="),
        ("postgresql://airflow:TopSecretDB@h1:5432,h2:5433/airflow", "?host=h1:5432&host=h2:5433"),
        (BASE + "?host=h1:5432,h2:5433", "list servers as"),
        (BASE + "?host=h1:5432&host=h2&port=5433", "not both"),
        (BASE + "?host=h1,h2&port=1,2,3", "2 hosts but 3 ports"),
        (BASE + "?host=h1:x&host=h2", "must be numbers"),
        (BASE + "?sslmode=require&sslmode=disable", "?sslmode= is given more than once"),
        (BASE + "?SSLMode=disable", "is not a libpq parameter"),
        (BASE + "?x%27%20host%3D=evil", "is not a libpq parameter"),
        ("postgresql://airflow:TopSecretDB@/airflow", "names no host"),
        # root connects with these: nothing that loads code or reads or writes a file of the URL's choosing
        (BASE + "?sslmode=require&sslkey=/opt/airflow/dags/evil:k", "no ':', which names an engine"),
        (BASE + "?sslcert=relative.crt", "must be an absolute path"),
        (BASE + "?sslkeylogfile=/etc/ld.so.preload", "not a libpq parameter airflow-node passes on"),
        (BASE + "?passfile=/etc/shadow", "not a libpq parameter airflow-node passes on"),
        (BASE + "?service=evil", "not a libpq parameter airflow-node passes on"),
        (BASE + "?servicefile=/opt/airflow/pg_service.conf", "not a libpq parameter airflow-node passes on"),
    ],
)
def test_a_db_url_libpq_would_misread_is_refused_naming_the_option(url, words):
    with pytest.raises(UserError) as refused:
        check_db_url(url)
    message = str(refused.value)
    assert message.startswith("--db-url: ") and words in message, message
    assert "TopSecretDB" not in message and "KeyPassphrase9" not in message and "p@ss" not in message


def test_conninfo_quotes_every_value_so_none_adds_a_keyword():
    params = {"host": "db1", "dbname": "a' host='evil", "options": "-c search_path=x\\y", "user": ""}
    assert conninfo_to_dict(libpq_conninfo(params)) == params  # libpq's own parser reads what we meant
