"""The one place URLs are parsed: the broker, database and result-backend URLs, checked and redacted.

Everything that reads a URL's parts (init, the cluster file, the health probes) goes through
`parse_url`, which refuses what two parsers would read differently: urllib splits the host at the
last "@", SQLAlchemy and libpq at the first, and a "/", "?" or "#" in a password ends urllib's
host part early. Such characters must be percent-encoded, so every reader agrees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from airflow_nodes.errors import UserError
from airflow_nodes.redaction import redact_url
from airflow_nodes.versions import AirflowVersion

BROKER_SCHEMES = ("redis", "rediss")
SENTINEL = "sentinel"
DB_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg")


@dataclass(frozen=True)
class ServiceUrl:
    """A parsed broker or database URL; user and password are percent-decoded."""

    scheme: str
    host: str  # without IPv6 brackets
    port: int | None
    path: str  # without the leading "/": a Redis DB index or a database name
    user: str = ""
    password: str = ""


def _split(url: str, option: str) -> SplitResult:
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
    if any(name.lower() in ("password", "passwd") for name, _ in parse_qsl(parts.query)):
        raise UserError(f"{option}: put the password in the URL's user part, not in ?password= (it is redacted there)")
    if not parts.hostname:
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
    parts = parse_url(url, option)
    if parts.scheme not in DB_SCHEMES:
        expected = ", ".join(scheme + "://" for scheme in DB_SCHEMES)
        raise UserError(f"{option}: the metadata database must be PostgreSQL ({expected}), got {parts.scheme}://")
    if not parts.path.strip("/"):
        raise UserError(f"{option}: {redact_url(url)!r} names no database")
    return url


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


def http_url(host: str, port: int) -> str:
    """Return http://HOST:PORT, with an IPv6 address in brackets."""
    bare = host.strip("[]")
    return f"http://[{bare}]:{port}" if ":" in bare else f"http://{host}:{port}"
