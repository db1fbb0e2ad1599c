"""The one Redis client: redis-py, connected from the cluster's broker URL.

redis:// and rediss:// (TLS), an ACL user before the password, and a Sentinel list
(`sentinel://h1:26379;sentinel://h2:26379/0` with `[broker] sentinel_master` naming the master, as
Celery's `master_name` transport option does) are all understood here and only here. redis-py is
imported on first use: `airflow-node health` starts without it.
"""

from __future__ import annotations

from airflow_nodes.urls import SENTINEL, broker_endpoints


def connect(broker_url: str, sentinel_master: str, timeout: float, option: str = "broker.url"):
    """Return a redis.Redis for the broker (for a Sentinel list: its current master). Raise UserError for
    a URL that is no Redis broker; connection errors come from redis-py on the first command."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    endpoints = broker_endpoints(broker_url, option)
    first = endpoints[0]
    options = dict(
        username=first.user or None,
        password=first.password or None,
        db=int(first.path or 0),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one try: callers have a deadline, and cron runs us again
    )
    if first.scheme == SENTINEL:
        sentinels = [(e.host, e.port or 26379) for e in endpoints]
        sentinel = Sentinel(
            sentinels, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        return sentinel.master_for(sentinel_master, **options)
    return redis.Redis(host=first.host, port=first.port or 6379, ssl=first.scheme == "rediss", **options)
