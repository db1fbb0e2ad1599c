"""Redis broker probe: TCP connect, AUTH, SELECT, PING, spoken in RESP over a plain socket.

The protocol exchange is four commands; speaking it directly keeps the import cost at zero
(redis-py pulls in asyncio) and lets us tell refused, timed out, bad password and bad DB index apart.
"""

from __future__ import annotations

import socket
import ssl
import time

from airflow_nodes.health.model import ANY_ROLE, Probe, ProbeInput, Result, Status
from airflow_nodes.health.netio import ProbeFailure, describe_error
from airflow_nodes.redaction import redact_url
from airflow_nodes.urls import parse_url

NAME = "redis"


class RedisError(Exception):
    """The server answered a command with an error reply (-ERR ..., -WRONGPASS ...)."""


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader) -> str | int | None:
    """Read one RESP2 reply. Return it; raise RedisError for an error reply."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ProbeFailure("the server closed the connection (not Redis, or protected mode?)")
    kind, payload = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"+":
        return payload
    if kind == b"-":
        raise RedisError(payload)
    if kind == b":":
        return int(payload)
    if kind == b"$":
        size = int(payload)
        return None if size < 0 else reader.read(size + 2)[:-2].decode(errors="replace")
    raise ProbeFailure(f"not a Redis reply: {line[:20]!r}")


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


def ping_redis(url: str, timeout: float) -> tuple[float, str]:
    """Given a redis:// or rediss:// URL, AUTH, SELECT and PING within timeout.

    Return (round-trip seconds of PING, server detail). Raise RedisError or ProbeFailure.
    """
    parts = parse_url(url, "broker.url")
    host, port = parts.host or "localhost", parts.port or 6379
    db_index = int(parts.path or 0)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ProbeFailure(describe_error(exc, timeout)) from None
    try:
        if parts.scheme == "rediss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        reader = sock.makefile("rb")

        def call(*args: str) -> str | int | None:
            sock.settimeout(max(deadline - time.monotonic(), 0.005))
            sock.sendall(_command(*args))
            return _read_reply(reader)

        try:
            if parts.password:
                call(*(("AUTH", parts.user, parts.password) if parts.user else ("AUTH", parts.password)))
            if db_index:
                call("SELECT", str(db_index))
            started = time.monotonic()
            reply = call("PING")
            rtt = time.monotonic() - started
        except OSError as exc:
            raise ProbeFailure(describe_error(exc, timeout)) from None
        if reply != "PONG":
            raise ProbeFailure(f"unexpected PING reply {reply!r}")
        return rtt, f"PING ok, db {db_index}"
    finally:
        sock.close()


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result for its broker."""
    url = probe_input.ctx.cluster.broker_url
    target = redact_url(url)
    db_index = int(parse_url(url, "broker.url").path or 0)
    started = time.monotonic()
    try:
        rtt, detail = ping_redis(url, probe_input.remaining())
    except RedisError as exc:
        status, detail = _explain(str(exc), db_index)
        return [Result(status, NAME, target, time.monotonic() - started, detail)]
    except ProbeFailure as exc:
        return [Result(Status.CRITICAL, NAME, target, time.monotonic() - started, str(exc))]
    return [Result(Status.OK, NAME, target, time.monotonic() - started, f"{detail}, round trip {rtt * 1000:.1f} ms")]


PROBE = Probe(NAME, ANY_ROLE, check, description="Redis broker: connect, AUTH, SELECT, PING")
