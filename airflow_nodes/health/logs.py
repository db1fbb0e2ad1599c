"""Log servers probe (master): every enrolled worker's log server is reachable at the address the API
server will use for its task logs.

The API server fetches a task's log from http://<ti.hostname>:<worker_log_server_port>/log/...; with
airflow-node, ti.hostname is the worker's advertised address (hostname_callable), which the worker
gave when it joined. So the check is what the API server will do: resolve it and open a TCP
connection to it, from the master, for each worker by name.
"""

from __future__ import annotations

import socket
import time

from airflow_nodes.errors import UserError
from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, describe_error, run_concurrently
from airflow_nodes.sshkeys import keys_file_of

NAME = "logs"


def reach(address: str, port: int, timeout: float) -> float:
    """Resolve address and connect to it within timeout; return the seconds it took. Raise ProbeFailure."""
    started = time.monotonic()
    try:
        family, kind, proto, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(where)
    except OSError as exc:
        raise ProbeFailure(describe_error(exc, timeout)) from None
    return time.monotonic() - started


def check(probe_input: ProbeInput) -> list[Result]:
    """Given the master, return one Result per enrolled worker: its log server answers a TCP connect."""
    port = probe_input.ctx.cluster.worker_log_port
    try:
        workers = keys_file_of(probe_input.target, probe_input.ctx).workers()
    except UserError as exc:
        return [Result(Status.UNKNOWN, NAME, "enrolled workers", None, str(exc))]
    if not workers:
        return [Result(Status.OK, NAME, "enrolled workers", None, "no worker joined with a token yet")]

    def probe(address: str):
        def call():
            try:
                return reach(address, port, probe_input.remaining())
            except ProbeFailure as exc:
                return exc

        return call

    answers = run_concurrently([probe(address) for _, address in workers], probe_input.deadline)
    results = []
    for (name, address), answer in zip(workers, answers, strict=True):
        target = f"celery@{name} {address}:{port}"
        if isinstance(answer, float):
            results.append(Result(Status.OK, NAME, target, answer, "log server reachable from the master"))
        else:
            reason = str(answer) if answer is not None else "no answer before the deadline"
            results.append(Result(Status.CRITICAL, NAME, target, None, f"{reason}: task logs of {name} cannot be read"))
    return results


PROBE = Probe(NAME, check, description="each enrolled worker's log server reachable from the master")
