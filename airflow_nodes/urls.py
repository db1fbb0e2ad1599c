"""Checking and redacting the broker, database and result-backend URLs."""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit

from airflow_nodes.errors import UserError
from airflow_nodes.redaction import REDACTED
from airflow_nodes.versions import AirflowVersion

BROKER_SCHEMES = ("redis", "rediss")
DB_SCHEMES = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg")


def _split(url: str, option: str) -> SplitResult:
    if any(ch.isspace() for ch in url):
        raise UserError(f"{option}: the URL contains whitespace")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise UserError(f"{option}: the port in {redact_url(url)!r} is not a number") from None
    if not parts.hostname:
        raise UserError(f"{option}: {redact_url(url)!r} names no host")
    return parts


def check_broker_url(url: str, option: str = "--broker-url") -> str:
    """Given a Redis broker URL, return it unchanged. Raise UserError if it is not redis:// or rediss://."""
    parts = _split(url, option)
    if parts.scheme not in BROKER_SCHEMES:
        raise UserError(f"{option}: the broker must be Redis (redis:// or rediss://), got {parts.scheme}://")
    db_index = parts.path.lstrip("/")
    if db_index and not db_index.isdigit():
        raise UserError(f"{option}: the Redis database index must be a number, got {db_index!r}")
    return url


def check_db_url(url: str, option: str = "--db-url") -> str:
    """Given a PostgreSQL SQLAlchemy URL, return it unchanged. Raise UserError otherwise."""
    parts = _split(url, option)
    if parts.scheme not in DB_SCHEMES:
        expected = ", ".join(scheme + "://" for scheme in DB_SCHEMES)
        raise UserError(f"{option}: the metadata database must be PostgreSQL ({expected}), got {parts.scheme}://")
    if not parts.path.strip("/"):
        raise UserError(f"{option}: {redact_url(url)!r} names no database")
    return url


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


def url_password(url: str) -> str | None:
    """Return the (decoded) password of a URL, or None."""
    password = urlsplit(url).password
    return unquote(password) if password else None


def redact_url(url: str) -> str:
    """Return the URL with its password replaced by ***, for messages and output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}").geturl()
