"""Leader probe (several masters): who runs the daemons that run on one master at a time.

With several masters the DAG processor runs under `airflow-node lead` (airflow_nodes/leader.py): every
master's wrapper is up, and only the one holding the lock in the broker runs Airflow's daemon. So the
unit being active says little; the lock says who parses. The holder is "HOST pid N", HOST being the
holder's advertised address: this host leads, another does (this one stands by), or nobody holds the lock and no
DAG is parsed anywhere. redis-py is imported when the probe runs, not when health starts.
"""

from __future__ import annotations

import time

from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.leader import current_leader, lock_key
from airflow_nodes.redisclient import connect

NAME = "leader"


def locked_daemons(probe_input: ProbeInput) -> list[str]:
    """Given a node, return the lock names of its daemons that run on one host at a time."""
    return [daemon.leader_lock for daemon in probe_input.ctx.daemons if daemon.leader_lock]


def judge(daemon: str, holder: str | None, this_host: str) -> tuple[Status, str]:
    """Given a lock's name, its holder as current_leader reads it ("HOST pid N" or None) and this host's
    name, return the status and the phrase: led here, standing by, or led by nobody."""
    if holder is None:
        return Status.CRITICAL, f"nobody holds the lock: no {daemon} runs on any master (wrappers down, or the broker?)"
    if holder.rsplit(" pid ", 1)[0] == this_host:
        return Status.OK, f"led by {holder} (this host)"
    return Status.OK, f"standing by; led by {holder}"


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master of several, return one Result per daemon run under a lock: who holds it."""
    from redis.exceptions import RedisError

    cluster = probe_input.ctx.cluster
    started = time.monotonic()
    holders: dict[str, str | None] = {}
    try:
        client = connect(cluster.broker_url, cluster.sentinel_master, probe_input.remaining())
        try:
            for daemon in locked_daemons(probe_input):
                holders[daemon] = current_leader(client, daemon)
        finally:
            client.close()
    except RedisError as exc:
        detail = f"cannot read the lock from the broker ({exc.__class__.__name__}; see the redis probe)"
        return [Result(Status.UNKNOWN, NAME, lock_key(d), None, detail) for d in locked_daemons(probe_input)]
    latency = time.monotonic() - started
    results = []
    for daemon, holder in holders.items():
        status, detail = judge(daemon, holder, probe_input.ctx.own_address)
        results.append(Result(status, NAME, lock_key(daemon), latency, detail))
    return results


PROBE = Probe(
    NAME,
    check,
    applies=lambda probe_input: bool(locked_daemons(probe_input)),
    description="who holds each one-at-a-time daemon's lock (several masters: the DAG processor)",
)
