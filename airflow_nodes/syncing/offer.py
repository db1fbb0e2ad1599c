"""The master offers a new DAG release to the workers.

A doorbell: the release's revision stored in the broker, which every worker's follower (`airflow-node
follow`) reads every FOLLOW_POLL seconds (65 bytes at most), instead of walking the tree over SSH. Anyone holding
the broker's password can ring it; a worker only takes it as a hint to ask the master itself, through
the gate, which release it offers. On Airflow 2 (no versioned DAG bundles) the master also waits, up to
a bound, until every live worker holds the release before its own Airflow sees it.
"""

from __future__ import annotations

import time

from airflow_nodes import defaults
from airflow_nodes.context import NodeContext
from airflow_nodes.fleet import KEY_PREFIX, TooManyRecords, live_workers
from airflow_nodes.polling import wait_until
from airflow_nodes.redisclient import connect
from airflow_nodes.syncing.releases import REVISION


def release_key(cluster_name: str) -> str:
    return f"{KEY_PREFIX}:{cluster_name}:release"


def ring(ctx: NodeContext, revision: str, timeout: float = 1.0) -> str:
    """Store the offered revision in the broker. Return "" or why not (never fails the sync)."""
    try:
        client = connect(ctx.cluster.broker_url, ctx.cluster.sentinel_master, timeout)
        try:
            client.set(release_key(ctx.cluster.name), revision)
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - the workers' cron sync still comes
        return f"the workers were not told at once ({exc.__class__.__name__}); they find it at their next sync"
    return ""


def rung(client, cluster_name: str) -> str:
    """The revision the doorbell names, or "" (none, or not a revision: a hint is never more)."""
    value = client.getrange(release_key(cluster_name), 0, 64) or b""  # never more than a revision and a byte
    text = value.decode(errors="replace") if len(value) == 64 else ""
    return text if REVISION.fullmatch(text) else ""


def workers_behind(ctx: NodeContext, revision: str, timeout: float = 2.0) -> list[str]:
    """The live workers whose record names another release."""
    return sorted(r["node"] for r in live_workers(ctx, timeout) if r.get("dags") != revision)


def herd_splay(ctx: NodeContext, most: float) -> float:
    """Seconds over which the workers spread their fetches of a new release: SPLAY_PER_WORKER for each live
    worker, at most `most` (the master's sshd turns away unauthenticated connections past ten at once)."""
    from redis.exceptions import RedisError

    try:
        count = len(live_workers(ctx))
    except (RedisError, TooManyRecords, OSError):
        return most
    return min(most, defaults.SPLAY_PER_WORKER * count)


def wait_for_workers(ctx: NodeContext, revision: str, wait: float, poll: float = 1.0) -> tuple[float, list[str]]:
    """Wait until every live worker holds `revision`, at most `wait` seconds. Return (seconds waited,
    the workers still behind). A broker that cannot be read ends the wait: nobody can be seen."""
    from redis.exceptions import RedisError

    started = time.monotonic()
    behind: list[str] = []  # as the last look saw them

    def caught_up() -> bool:
        nonlocal behind
        behind = workers_behind(ctx, revision)
        return not behind

    try:
        wait_until(caught_up, wait, poll)
    except (RedisError, TooManyRecords, OSError):
        return time.monotonic() - started, ["(the broker: unreadable)"]
    return time.monotonic() - started, behind
