"""Redis broker probe: connect, AUTH, SELECT, PING through the one Redis client (redisclient.py).

It tells refused, timed out, bad password and bad DB index apart, for redis://, rediss://, an ACL
user and a Sentinel list alike. redis-py is imported when the probe runs, not when health starts.
"""

from __future__ import annotations

import time

from airflow_nodes.health.model import MANAGED_HERE, Probe, ProbeInput, Result, Status
from airflow_nodes.netio import describe_error
from airflow_nodes.redaction import redact_url
from airflow_nodes.redisclient import connect
from airflow_nodes.urls import broker_endpoints

NAME = "redis"


def _explain(error: str, db_index: int) -> tuple[Status, str]:
    """Given a Redis error reply, return the status and a phrase an on-call engineer understands."""
    code = error.split(" ", 1)[0]
    if code in ("WRONGPASS", "NOAUTH") or "invalid password" in error or "invalid username-password" in error:
        return Status.CRITICAL, "authentication failed (wrong or missing password in the broker URL)"
    if "without any password configured" in error or "AUTH <password> called without" in error:
        return Status.CRITICAL, "authentication failed: the URL has a password but the server requires none"
    if "DB index is out of range" in error or "invalid DB index" in error:
        return Status.CRITICAL, f"wrong database index {db_index} (beyond the server's `databases` setting)"
    if code == "LOADING":
        return Status.WARNING, "Redis is loading its dataset into memory"
    return Status.CRITICAL, f"Redis error: {error}"


def ping_redis(url: str, sentinel_master: str, timeout: float) -> tuple[float, str]:
    """Given the broker URL, connect (AUTH and SELECT as the URL says) and PING within timeout.

    Return (round-trip seconds of PING, server detail). Raise a redis-py error.
    """
    client = connect(url, sentinel_master, timeout)
    try:
        started = time.monotonic()
        client.ping()
        rtt = time.monotonic() - started
        db_index = client.connection_pool.connection_kwargs.get("db", 0)
    finally:
        client.close()
    return rtt, f"PING ok, db {db_index}"


def _failure(exc: Exception, db_index: int, timeout: float) -> tuple[Status, str]:
    """Given a redis-py error, return the status and a phrase: refused, timed out, wrong password, wrong DB."""
    from redis import exceptions

    if isinstance(exc, exceptions.AuthenticationError):
        return Status.CRITICAL, "authentication failed (wrong or missing password in the broker URL)"
    if isinstance(exc, exceptions.ResponseError):
        return _explain(str(exc), db_index)
    if isinstance(exc, exceptions.TimeoutError):
        return Status.CRITICAL, describe_error(TimeoutError(), timeout)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return Status.CRITICAL, describe_error(cause, timeout)
    text = str(exc)
    if "refused" in text.lower():
        return Status.CRITICAL, describe_error(ConnectionRefusedError(), timeout)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return Status.CRITICAL, describe_error(TimeoutError(), timeout)
    return Status.CRITICAL, f"{exc.__class__.__name__}: {text}"


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result for its broker."""
    from redis import exceptions

    cluster = probe_input.ctx.cluster
    url = cluster.broker_url
    target = redact_url(url) + (f" ({MANAGED_HERE})" if probe_input.ctx.node.local_redis else "")
    db_index = int(broker_endpoints(url, "broker.url")[0].path or 0)
    started = time.monotonic()
    try:
        rtt, detail = ping_redis(url, cluster.sentinel_master, probe_input.remaining())
    except exceptions.RedisError as exc:
        status, detail = _failure(exc, db_index, probe_input.timeout)
        return [Result(status, NAME, target, time.monotonic() - started, detail)]
    return [Result(Status.OK, NAME, target, time.monotonic() - started, f"{detail}, round trip {rtt * 1000:.1f} ms")]


PROBE = Probe(NAME, check, description="Redis broker: connect, AUTH, SELECT, PING")
