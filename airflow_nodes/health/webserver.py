"""Web/api server probe: the health JSON of Airflow's webserver (2.x) or api-server (3.x).

Airflow answers HTTP 200 even when the scheduler is dead, so only the JSON counts: metadatabase,
scheduler, triggerer and dag_processor are reported separately, with the age of their heartbeats.

The JSON is the cluster's: it shows the most recent heartbeat of each kind, whichever master sent it, so
it is read at the cluster address. Where that is not this host's (a load balancer or floating address in
front of several masters), this host's own server is asked too: a master whose API server is down is
found even while another serves the cluster address.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, http_get, run_concurrently
from airflow_nodes.timestamps import parse_utc

NAME = "web"
COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def heartbeat_age(value: str | None, now: datetime) -> float | None:
    """Given an ISO-8601 heartbeat from the health JSON, return its age in seconds, or None."""
    stamp = parse_utc(value)
    return (now - stamp).total_seconds() if stamp else None


def parse_health(document: object, now: datetime | None = None) -> list[tuple[str, Status, str]]:
    """Given the decoded health JSON, return (component, status, detail) for each of the four components.

    Tolerant of extra keys (newer Airflow adds some); a missing entry is reported, not a crash.
    """
    now = now or datetime.now(timezone.utc)
    if not isinstance(document, dict):
        return [(name, Status.CRITICAL, "health answer is not a JSON object") for name in COMPONENTS]
    rows = []
    for component in COMPONENTS:
        entry = document.get(component)
        entry = entry if isinstance(entry, dict) else {}
        state = entry.get("status")
        age = heartbeat_age(entry.get(f"latest_{component}_heartbeat"), now)
        age_text = f", heartbeat {age:.0f}s ago" if age is not None else ""
        if state == "healthy":
            rows.append((component, Status.OK, f"healthy{age_text}"))
        elif state is None:
            if component == "metadatabase" or component == "scheduler":
                rows.append((component, Status.CRITICAL, "no status in the health answer"))
            else:
                rows.append((component, Status.WARNING, "has never reported a heartbeat (daemon not running?)"))
        else:
            never = ", no heartbeat ever" if age is None and component != "metadatabase" else ""
            rows.append((component, Status.CRITICAL, f"{state}{age_text}{never}"))
    return rows


def _cluster_health(probe_input: ProbeInput) -> list[Result]:
    """One Result per health component, as the server at the cluster address reports them."""
    url = probe_input.ctx.cluster.web_url + probe_input.ctx.line.health_path
    try:
        response = http_get(url, probe_input.remaining())
    except ProbeFailure as exc:
        return [Result(Status.CRITICAL, NAME, url, None, str(exc))]
    document = response.json()
    if document is None:
        major = probe_input.ctx.line.major
        detail = f"HTTP {response.status} without a JSON body (is this the Airflow {major} web port?)"
        return [Result(Status.CRITICAL, NAME, url, response.latency, detail)]
    if response.status == 404:
        message = document.get("error") if isinstance(document, dict) else None
        detail = f"HTTP 404: {message or 'no health endpoint here'} (Airflow version in the cluster file?)"
        return [Result(Status.CRITICAL, NAME, url, response.latency, detail)]
    rows = parse_health(document)
    return [Result(status, NAME, f"{url} {component}", response.latency, detail) for component, status, detail in rows]


def _own_server(probe_input: ProbeInput) -> Result:
    """One Result for this host's own web/API server: it answers its health JSON (the components in it
    are the cluster's, reported once, from the cluster address)."""
    url = probe_input.ctx.own_web_url + probe_input.ctx.line.health_path
    try:
        response = http_get(url, probe_input.remaining())
    except ProbeFailure as exc:
        return Result(Status.CRITICAL, NAME, url, None, f"this host's server: {exc}")
    if response.status == 200 and isinstance(response.json(), dict):
        return Result(Status.OK, NAME, url, response.latency, "this host's server answers its health JSON")
    return Result(Status.CRITICAL, NAME, url, response.latency, f"this host's server: HTTP {response.status}")


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master node, return one Result per health component of the server at the cluster address,
    and one for this host's own server when the cluster address is another (both asked side by side)."""
    if probe_input.ctx.own_web_url == probe_input.ctx.cluster.web_url:
        return _cluster_health(probe_input)
    cluster, own = run_concurrently(
        [lambda: _cluster_health(probe_input), lambda: _own_server(probe_input)], probe_input.deadline
    )
    late = "no answer before the deadline"
    path = probe_input.ctx.line.health_path
    return [
        *(cluster or [Result(Status.CRITICAL, NAME, probe_input.ctx.cluster.web_url + path, None, late)]),
        own or Result(Status.CRITICAL, NAME, probe_input.ctx.own_web_url + path, None, f"this host's server: {late}"),
    ]


PROBE = Probe(NAME, check, description="web/api server health JSON, per component")
