"""Network helpers shared by the probes: a stdlib HTTP GET under a deadline, and error wording.

Only the standard library: importing requests or urllib3 would cost more than a probe takes.
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    latency: float  # seconds from connect to the last byte

    def json(self) -> object | None:
        """Return the body parsed as JSON, or None when it is not JSON (the status code is not trusted)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class ProbeFailure(Exception):
    """A probe could not get an answer; the message is meant for the report (no secrets)."""


def describe_error(exc: BaseException, timeout: float) -> str:
    """Given a socket-level exception, return a short human phrase: refused, timed out, no route, DNS."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening on that port)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:.1f}s (host down, firewalled or blackholed?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({exc.__class__.__name__})"
    return exc.__class__.__name__


def basic_auth(user: str, password: str) -> str:
    """Given credentials, return the value of an Authorization header for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def http_get(url: str, timeout: float, authorization: str | None = None, limit: int = 1 << 20) -> HttpResponse:
    """GET url with every socket operation bounded by the time left of `timeout`. Return the response.

    Raise ProbeFailure with a readable reason when there is no HTTP answer.
    """
    parts = urlsplit(url)
    started = time.monotonic()
    deadline = started + timeout
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Accept": "application/json", "Connection": "close", "User-Agent": "airflow-node-health"}
    if authorization:
        headers["Authorization"] = authorization
    try:
        connection.request("GET", path, headers=headers)
        if connection.sock is not None:
            connection.sock.settimeout(max(deadline - time.monotonic(), 0.005))
        response = connection.getresponse()
        chunks = []
        size = 0
        while size < limit:
            if connection.sock is not None:
                connection.sock.settimeout(max(deadline - time.monotonic(), 0.005))
            chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        return HttpResponse(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            body,
            time.monotonic() - started,
        )
    except (OSError, http.client.HTTPException) as exc:
        raise ProbeFailure(describe_error(exc, timeout)) from None
    finally:
        connection.close()


def run_concurrently(calls: list, deadline: float) -> list:
    """Run each zero-argument call in a daemon thread; wait until all return or the monotonic deadline.

    Return their return values in order, None for a call still running at the deadline (it is abandoned:
    daemon threads never keep the process alive). A call that raises is a bug and is re-raised.
    """
    answers: list = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call) -> None:
        try:
            answers[index] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, call), daemon=True) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    if errors:
        raise errors[0]
    return answers
