"""How root talks to PostgreSQL: a connection bounded in time whose failures read as sentences, and the
arguments of libpq's tools (pg_dump, pg_restore, psql) with the password in their environment.

psycopg is imported only when a connection is made, so `airflow-node health --only redis` never pays
for it. libpq would try every address a name resolves to, each with the full connect_timeout; we
resolve a single host name ourselves and hand libpq one address, so one attempt is one attempt within
the budget. A URL's host list (`?host=h1:5432&host=h2:5433`) is libpq's to walk, as it is for Airflow.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
from collections.abc import Iterator

from airflow_nodes.netio import ProbeFailure, describe_error
from airflow_nodes.urls import libpq_conninfo, libpq_params

# SQLSTATEs worth a plain sentence (PostgreSQL appendix A).
_SQLSTATE_PHRASES = {
    "28P01": "authentication failed: wrong password for user {user}",
    "28000": "authentication rejected for user {user} (pg_hba.conf has no matching entry, or the role cannot log in)",
    "3D000": "database {database} does not exist",
    "57P03": "the server is starting up or shutting down",
    "53300": "too many connections",
}


def _explain(exc: Exception, user: str, database: str, timeout: float) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _SQLSTATE_PHRASES:
        return _SQLSTATE_PHRASES[sqlstate].format(user=user, database=database)
    message = " ".join(str(exc).split()) or exc.__class__.__name__
    # psycopg walks a host list itself and lists each attempt: "- host: 'h', port: 'p', hostaddr: 'a': why"
    attempts = re.findall(r"- host: '([^']*)', port: '([^']*)'(?:, hostaddr: '[^']*')?: (.*?)(?= - host: '|$)", message)
    if attempts:
        return "; ".join(
            f"{host}:{port} {_explain_message(why, user, database, timeout)}" for host, port, why in attempts
        )
    return _explain_message(message, user, database, timeout)


def _explain_message(message: str, user: str, database: str, timeout: float) -> str:
    """Given one libpq error message, return it as a plain sentence."""
    lowered = message.lower()
    # psycopg reports connection-phase errors without a SQLSTATE; libpq's wording is stable.
    if "password authentication failed" in lowered:
        return _SQLSTATE_PHRASES["28P01"].format(user=user)
    if "does not exist" in lowered and "role" in lowered:
        return f"user {user} does not exist on the server"
    if "does not exist" in lowered and "database" in lowered:
        return _SQLSTATE_PHRASES["3D000"].format(database=database)
    if "connection refused" in lowered:
        return "connection refused (nothing listening on that port)"
    if "timeout" in lowered or "timed out" in lowered:
        return f"timed out after {timeout:.1f}s (host down, firewalled or blackholed?)"
    if "no password supplied" in lowered:
        return f"the server wants a password for user {user} and the URL has none"
    return message.rsplit(" failed: ", 1)[-1][:300]


def query_database(url: str, timeout: float) -> str:
    """Given a postgresql:// URL, connect, run SELECT 1 and read the server version within timeout.

    Return a detail line. Raise ProbeFailure with a readable reason (no secrets) on failure.
    """
    with connect(url, timeout) as connection:
        _, version = connection.execute("SELECT 1, current_setting('server_version')").fetchone()
        revision = alembic_revision(connection)
    detail = f"SELECT 1 ok, PostgreSQL {version}"
    if revision:
        detail += f", alembic revision {revision}"
    return detail


def server_version_num(url: str, timeout: float) -> int:
    """The server's version as a number (150004 for 15.4). Raise ProbeFailure."""
    with connect(url, timeout) as connection:
        return int(connection.execute("SELECT current_setting('server_version_num')").fetchone()[0])


@contextlib.contextmanager
def connect(url: str, timeout: float, application_name: str = "airflow-node-health") -> Iterator:
    """Given a PostgreSQL URL (a SQLAlchemy driver named or not), yield an autocommit psycopg connection
    whose statements end within timeout. Every libpq parameter of the URL applies (sslmode, host lists,
    options, ...); application_name is ours unless the URL names one. Raise ProbeFailure with a readable
    reason (no secrets: libpq gets the decoded parts, never the URL) when it or a statement fails."""
    params = libpq_params(url)
    user, database = params.get("user", ""), params.get("dbname", "")
    host, port = params.setdefault("host", "localhost"), params.get("port", "5432")
    if "," not in host + port and not host.startswith("/") and "hostaddr" not in params:
        try:
            params["hostaddr"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
        except OSError as exc:
            raise ProbeFailure(describe_error(exc, timeout)) from None
    import psycopg  # noqa: PLC0415 - deliberately lazy: 150 ms of imports

    # libpq takes whole seconds and no fewer than 2; the runner's deadline bounds shorter budgets.
    budget, asked = max(2, math.ceil(timeout)), params.get("connect_timeout", "")
    params["connect_timeout"] = str(min(budget, int(asked)) if asked.isdigit() and int(asked) > 0 else budget)
    params["options"] = f"{params.get('options', '')} -c statement_timeout={max(int(timeout * 1000), 1)}".strip()
    params.setdefault("fallback_application_name", application_name)
    try:
        with psycopg.connect(**params, autocommit=True) as connection:
            yield connection
    except psycopg.Error as exc:
        raise ProbeFailure(_explain(exc, user, database, timeout)) from None


def alembic_revision(connection) -> str | None:
    """Return Airflow's schema revision if the alembic_version table exists (one cheap query)."""
    (exists,) = connection.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not exists:
        return None
    row = connection.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
    return row[0] if row else None


def libpq_tool_args(url: str) -> tuple[list[str], dict[str, str]]:
    """The --dbname of pg_dump, pg_restore and psql: every libpq parameter of the DB URL (sslmode, a host
    list, options, ...) but the password, which goes in their environment (never argv)."""
    params = libpq_params(url)
    password = params.pop("password", "")
    return ["--dbname", libpq_conninfo(params)], {"PGPASSWORD": password} if password else {}
