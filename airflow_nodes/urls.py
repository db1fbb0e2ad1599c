"""The one place URLs are parsed: the broker, database and result-backend URLs, checked and redacted.

Everything that reads a URL's parts (init, the cluster file, the health probes, the upgrade's pg_dump)
goes through `parse_url` (a database URL through `libpq_params`), which refuses what two parsers would
read differently: urllib splits the host at the last "@", SQLAlchemy and libpq at the first, and a
"/", "?" or "#" in a password ends urllib's host part early. Such characters must be percent-encoded,
so every reader agrees.

A database URL is read as SQLAlchemy reads it for Airflow (`libpq_params`): every query parameter is
a libpq keyword (sslmode, target_session_attrs, options, ...), and `?host=` lists the servers to try.
Our own libpq clients (the DB probe, pg_dump, pg_restore, psql) get all of them, so they connect as
Airflow does, never with less protection than the URL asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from airflow_nodes.errors import UserError
from airflow_nodes.redaction import redact_url
from airflow_nodes.versions import AirflowVersion

BROKER_SCHEMES = ("redis", "rediss")
SENTINEL = "sentinel"
DB_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg")
# a password in the query would stand there unredacted, and in a libpq tool's argv
SECRET_PARAMETERS = ("password", "passwd")


@dataclass(frozen=True)
class ServiceUrl:
    """A parsed broker or database URL; user and password are percent-decoded."""

    scheme: str
    host: str  # without IPv6 brackets
    port: int | None
    path: str  # without the leading "/": a Redis DB index or a database name
    user: str = ""
    password: str = ""


def _split(url: str, option: str, host_in_query: bool = False) -> SplitResult:
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise UserError(f"{option}: the URL contains whitespace or control characters")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UserError(f"{option}: {redact_url(url)!r} is not a URL (scheme://...)")
    userinfo, at, _ = rest.rpartition("@")
    if at and any(ch in userinfo for ch in '@/?#"\\'):
        raise UserError(f'{option}: percent-encode @ / ? # " \\ in the user or password (%40 %2F %3F %23 %22 %5C)')
    if not url.isascii():
        raise UserError(f"{option}: {redact_url(url)!r} has non-ASCII characters; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:  # its message may quote the password: never shown
        raise UserError(f"{option}: {redact_url(url)!r} does not parse as a URL") from None
    query = [name.lower() for name, _ in parse_qsl(parts.query)]
    if "sslpassword" in query:
        raise UserError(f"{option}: no ?sslpassword= (it would show in output and in pg_dump's command line); "
                        "give a client key without a passphrase, readable by root only")  # fmt: skip
    if any(name in SECRET_PARAMETERS for name in query):
        raise UserError(f"{option}: put the password in the URL's user part, not in ?password= (it is redacted there)")
    if not parts.hostname and not (host_in_query and "host" in query):
        raise UserError(f"{option}: {redact_url(url)!r} names no host")
    return parts


def parse_url(url: str, option: str) -> ServiceUrl:
    """Given a service URL, return its parts. Raise UserError (naming option, never the password)."""
    parts = _split(url, option)
    return ServiceUrl(
        scheme=parts.scheme,
        host=parts.hostname or "",
        port=parts.port,
        path=unquote(parts.path.lstrip("/")),
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


def broker_endpoints(url: str, option: str = "--broker-url") -> list[ServiceUrl]:
    """Given a broker URL as Celery takes it, return its endpoints: one for redis:// or rediss:// (an ACL
    user may precede the password), one per Sentinel for `sentinel://h1:26379;sentinel://h2:26379`.
    Raise UserError when it is no Redis broker."""
    endpoints = [parse_url(part, option) for part in url.split(";")]
    schemes = {endpoint.scheme for endpoint in endpoints}
    if len(endpoints) > 1 and schemes != {SENTINEL}:
        raise UserError(f"{option}: only a Sentinel list (sentinel://...;sentinel://...) has several URLs")
    if not schemes <= {*BROKER_SCHEMES, SENTINEL}:
        raise UserError(
            f"{option}: the broker must be Redis (redis://, rediss:// or sentinel://), got {url.split(':')[0]}://"
        )
    for endpoint in endpoints:
        if endpoint.path and not re.fullmatch(r"[0-9]{1,4}", endpoint.path):
            raise UserError(f"{option}: the Redis database index must be a number (0-9999), got {endpoint.path[:20]!r}")
    return endpoints


def check_broker_url(url: str, option: str = "--broker-url") -> str:
    """Given a Redis broker URL, return it unchanged. Raise UserError if it is not one (see broker_endpoints)."""
    broker_endpoints(url, option)
    return url


def check_db_url(url: str, option: str = "--db-url") -> str:
    """Given a PostgreSQL SQLAlchemy URL, return it unchanged. Raise UserError otherwise."""
    params = libpq_params(url, option)
    scheme = url.split("://", 1)[0]
    if scheme not in DB_SCHEMES:
        expected = ", ".join(scheme + "://" for scheme in DB_SCHEMES)
        raise UserError(f"{option}: the metadata database must be PostgreSQL ({expected}), got {scheme}://")
    if not params.get("dbname", "").strip("/"):
        raise UserError(f"{option}: {redact_url(url)!r} names no database")
    return url


# The query parameters a DB URL may carry. The health probe and the upgrade's pg tools connect as root,
# and a worker takes its URLs from the cluster file the master's airflow account serves: no parameter
# that makes libpq read a file of its choosing (passfile, service, servicefile), write one
# (sslkeylogfile) or load code (an OpenSSL engine as sslkey=ENGINE:KEY) passes.
LIBPQ_QUERY_PARAMETERS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "connect_timeout", "client_encoding", "options",
    "application_name", "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey",
    "sslcertmode", "sslrootcert", "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "channel_binding", "require_auth", "gssencmode", "krbsrvname", "target_session_attrs", "load_balance_hosts",
})  # fmt: skip
LIBPQ_FILE_PARAMETERS = ("sslcert", "sslkey", "sslrootcert")  # files root opens: absolute paths, never an engine


def libpq_files(url: str) -> dict[str, str]:
    """Given a DB URL, return the files it has libpq open (sslcert, sslkey, sslrootcert): {name: path}."""
    return {name: value for name, value in parse_qsl(urlsplit(url).query) if name in LIBPQ_FILE_PARAMETERS}


def libpq_params(url: str, option: str = "database.url") -> dict[str, str]:
    """Given a PostgreSQL URL (a SQLAlchemy driver named or not), return the libpq connection keywords
    SQLAlchemy hands the driver for it: user, password, dbname, host and port from the URL, then every
    query parameter (sslmode, sslrootcert, target_session_attrs, options, ...; a query's host, port,
    user or dbname wins). Several servers: `?host=h1:5432&host=h2:5433` or `?host=h1,h2&port=5432,5433`.
    Raise UserError (naming option, never the password) for what SQLAlchemy would refuse too."""
    if "," in url.partition("://")[2].rpartition("@")[2].split("/")[0]:
        raise UserError(f"{option}: list several servers as ?host=h1:5432&host=h2:5433 (SQLAlchemy's form)")
    parts = _split(url, option, host_in_query=True)
    params = {"host": parts.hostname or "", "port": str(parts.port or ""), "user": unquote(parts.username or ""),
              "password": unquote(parts.password or ""), "dbname": unquote(parts.path.lstrip("/"))}  # fmt: skip
    query = parse_qsl(parts.query)
    names = [name for name, _ in query if name != "host"]
    if bad := next((name for name in names if not re.fullmatch(r"[a-z_]{1,64}", name)), None):
        raise UserError(f"{option}: ?{bad[:40]!r} is not a libpq parameter (lower-case letters and _)")
    if twice := next((name for name in names if names.count(name) > 1), None):
        raise UserError(f"{option}: ?{twice}= is given more than once")
    if unknown := next((name for name in names if name not in LIBPQ_QUERY_PARAMETERS), None):
        raise UserError(f"{option}: ?{unknown}= is not a libpq parameter airflow-node passes on (root connects "
                        f"with it: one that names a file to load or run is refused)")  # fmt: skip
    for name, value in query:
        a_file = name in LIBPQ_FILE_PARAMETERS and not (name == "sslrootcert" and value == "system")
        if a_file and (not value.startswith("/") or ":" in value or ".." in value.split("/")):
            raise UserError(f"{option}: ?{name}= must be an absolute path (no ':', which names an engine)")
    params.update((name, value) for name, value in query if name != "host")
    if hosts := [value for name, value in query if name == "host"]:
        params["host"], ports = _servers(hosts, dict(query).get("port"), option)
        params["port"] = ports or str(parts.port or "")
    return {name: value for name, value in params.items() if value}


_NAME_AND_PORT = re.compile(r"(?P<host>[A-Za-z0-9.-]*)(?::(?P<port>[0-9]*))?")


def _servers(hosts: list[str], port: str | None, option: str) -> tuple[str, str]:
    """Given the URL's ?host= values and its ?port=, return libpq's host and port lists, as SQLAlchemy's
    PostgreSQL dialects build them. Raise UserError for lists they would misread or refuse."""
    if len(hosts) == 1 and port is None and (match := _NAME_AND_PORT.fullmatch(hosts[0])):
        return match["host"], match["port"] or ""  # host=h1:5432
    if len(hosts) > 1:  # host=h1:5432&host=h2:5433
        if port is not None:
            raise UserError(f"{option}: give host=h1:5432&host=h2:5433 or host=h1,h2&port=5432,5433, not both")
        pairs = [host.partition(":")[::2] for host in hosts]
        hosts, ports = [host for host, _ in pairs], [port for _, port in pairs]
    else:  # host=h1,h2&port=5432,5433
        hosts, ports = hosts[0].split(","), port.split(",") if port else []
        if any(":" in host and _NAME_AND_PORT.fullmatch(host) for host in hosts):
            raise UserError(f"{option}: list servers as ?host=h1:5432&host=h2:5433 or ?host=h1,h2&port=5432,5433")
    if not all(port.isdigit() for port in ports if port):
        raise UserError(f"{option}: the ports in ?host= and ?port= must be numbers")
    if len(ports) > 1 and len(ports) != len(hosts):
        raise UserError(f"{option}: {len(hosts)} hosts but {len(ports)} ports in ?host= and ?port=")
    return ",".join(hosts), ",".join(ports)


def libpq_conninfo(params: dict[str, str]) -> str:
    """Given libpq keywords, return the conninfo string a libpq tool takes as --dbname. Each value is
    quoted, so none can add a keyword."""
    return " ".join(f"{name}='{_conninfo_escape(value)}'" for name, value in params.items())


def _conninfo_escape(value: str) -> str:
    """Escape a value for libpq's single quotes: a backslash or a quote gets a backslash."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def libpq_url(sqlalchemy_url: str) -> str:
    """Given postgresql+driver://..., return postgresql://... (libpq does not know SQLAlchemy drivers)."""
    scheme, rest = sqlalchemy_url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


def metadata_db_url(db_url: str) -> str:
    """`[database] sql_alchemy_conn`: the DB URL with Airflow's tested driver, psycopg2, named. SQLAlchemy
    2.1 (Airflow 3.3's) makes psycopg 3 the default for postgresql://, and under it Airflow 3.3.2's
    migration e812941398f4 fails on a 2.x database with rows ("could not determine data type of
    parameter $8"): an upgrade from 2.11 could never migrate."""
    scheme, rest = db_url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgresql", "postgres") else db_url


def default_result_backend(db_url: str, version: AirflowVersion) -> str:
    """Given the metadata DB URL, return the Celery result backend on the same database."""
    scheme, rest = db_url.split("://", 1)
    if scheme == "postgresql+psycopg" and (version.major, version.minor) < (3, 2):
        scheme = "postgresql+psycopg2"  # celery's db backend takes psycopg 3 only from Airflow 3.2
    return f"db+{scheme}://{rest}"


def check_result_backend(url: str, version: AirflowVersion, option: str = "--result-backend") -> str:
    """Given a Celery result backend, return it unchanged. Raise UserError if it is not db+postgresql."""
    if not url.startswith("db+"):
        raise UserError(f"{option}: a database result backend starts with db+ (for example db+postgresql://...)")
    check_db_url(url[3:], option)
    if url.startswith("db+postgresql+psycopg://") and (version.major, version.minor) < (3, 2):
        raise UserError(f"{option}: db+postgresql+psycopg:// needs Airflow >= 3.2; use db+postgresql+psycopg2://")
    return url


def bare_host(host: str) -> str:
    """Given a host as a URL, a DAG source spec or an option writes it ("[fe80::1]", "fe80::1", "db1"),
    return the bare name or address, as ssh, getaddrinfo and libpq take it ("fe80::1", "db1")."""
    return host.strip("[]")


def url_host(host: str) -> str:
    """Given a host, bracketed or bare, return it as a URL or rsync writes it: an IPv6 address in brackets."""
    bare = bare_host(host)
    return f"[{bare}]" if ":" in bare else host


def http_url(host: str, port: int) -> str:
    """Return http://HOST:PORT, with an IPv6 address in brackets."""
    return f"http://{url_host(host)}:{port}"


def redis_url(host: str, port: int, password: str, db_index: int = 0) -> str:
    """The broker URL of a Redis with a password and no user (requirepass): redis://:PASSWORD@HOST:PORT/DB."""
    return f"redis://:{quote(password, safe='')}@{url_host(host)}:{port}/{db_index}"


def postgres_url(user: str, password: str, host: str, port: int, database: str) -> str:
    """The metadata DB URL: postgresql://USER:PASSWORD@HOST:PORT/DATABASE."""
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{url_host(host)}:{port}/{quote(database)}"
