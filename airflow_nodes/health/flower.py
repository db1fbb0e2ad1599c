"""flower probes: flower itself (/healthcheck, no auth) and the online Celery workers (/api/workers).

`/api/workers?status=true` maps every worker flower has seen to whether it is alive (heartbeats).
Flower can lag behind reality by up to a minute after a broker outage: a warning, not the truth.
A node that runs flower asks its own (with several masters each has one, with its own view of the
workers); a worker asks the first master's.
"""

from __future__ import annotations

from airflow_nodes.context import NodeContext
from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, basic_auth, http_get, run_concurrently

NAME = "flower"
WORKER_NAME = "worker"


def flower_url(ctx: NodeContext) -> str:
    """Given a node, return the flower it asks: its own where its role runs one, else the first master's."""
    return ctx.own_flower_url if ctx.role.schedules else ctx.cluster.flower_url


def fetch_worker_states(probe_input: ProbeInput) -> tuple[dict[str, bool], float]:
    """Return ({celery node name: alive}, latency) from flower. Raise ProbeFailure with a readable reason."""
    cluster = probe_input.ctx.cluster
    url = flower_url(probe_input.ctx) + "/api/workers?status=true"
    response = http_get(url, probe_input.remaining(), basic_auth(cluster.flower_user, cluster.secrets.flower_password))
    if response.status == 401:
        raise ProbeFailure("flower rejected the credentials (secrets.flower_user / flower_password)")
    if response.status != 200:
        raise ProbeFailure(f"HTTP {response.status} from flower's API")
    states = response.json()
    if not isinstance(states, dict):
        raise ProbeFailure("flower's API answered without the JSON object it should send")
    return {str(name): bool(alive) for name, alive in states.items()}, response.latency


def summarize_workers(states: dict[str, bool]) -> tuple[Status, str]:
    """Given {worker: alive}, return the status and 'N online: a, b; offline: c'."""
    online = sorted(name for name, alive in states.items() if alive)
    offline = sorted(name for name, alive in states.items() if not alive)
    detail = f"{len(online)} online" + (f": {', '.join(online)}" if online else "")
    if offline:
        detail += f"; offline: {', '.join(offline)}"
    if not online:
        return Status.WARNING, detail + " (queued tasks will not run)"
    return (Status.WARNING if offline else Status.OK), detail


def _healthcheck(probe_input: ProbeInput) -> Result:
    url = flower_url(probe_input.ctx) + "/healthcheck"
    try:
        response = http_get(url, probe_input.remaining())
    except ProbeFailure as exc:
        return Result(Status.CRITICAL, NAME, url, None, str(exc))
    if response.status == 200 and response.body.strip() == b"OK":
        return Result(Status.OK, NAME, url, response.latency, "OK")
    return Result(Status.CRITICAL, NAME, url, response.latency, f"HTTP {response.status}, not flower's OK")


def _workers(probe_input: ProbeInput) -> Result:
    url = flower_url(probe_input.ctx) + "/api/workers"
    try:
        states, latency = fetch_worker_states(probe_input)
    except ProbeFailure as exc:
        return Result(Status.CRITICAL, NAME, url, None, str(exc))
    status, detail = summarize_workers(states)
    return Result(status, NAME, url, latency, detail)


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master node, return flower's own health and the online-worker count, fetched side by side."""
    calls = [lambda: _healthcheck(probe_input), lambda: _workers(probe_input)]
    answers = run_concurrently(calls, probe_input.deadline)
    base = flower_url(probe_input.ctx)
    missing = Result(Status.CRITICAL, NAME, base, None, "no answer before the deadline")
    return [answer or missing for answer in answers]


def check_this_worker(probe_input: ProbeInput) -> list[Result]:
    """Given a worker node, return whether flower sees its Celery worker (celery@NODE) online."""
    name = probe_input.ctx.node.celery_name
    target = f"{flower_url(probe_input.ctx)}/api/workers {name}"
    try:
        states, latency = fetch_worker_states(probe_input)
    except ProbeFailure as exc:
        return [Result(Status.CRITICAL, WORKER_NAME, target, None, str(exc))]
    if states.get(name):
        return [Result(Status.OK, WORKER_NAME, target, latency, f"{name} online")]
    seen = "offline (no recent heartbeat)" if name in states else "unknown to flower (never started?)"
    return [Result(Status.CRITICAL, WORKER_NAME, target, latency, f"{name} {seen}")]


PROBE = Probe(NAME, check, description="flower /healthcheck and online workers")
WORKER_PROBE = Probe(WORKER_NAME, check_this_worker, description="this node's Celery worker online")
