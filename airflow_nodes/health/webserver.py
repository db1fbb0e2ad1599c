"""Web/api server probe: the health JSON of Airflow's webserver (2.x) or api-server (3.x).

Airflow answers HTTP 200 even when the scheduler is dead, so only the JSON counts: metadatabase,
scheduler, triggerer and dag_processor are reported separately, with the age of their heartbeats.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.netio import ProbeFailure, http_get
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


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a master node, return one Result per health component of its web/api server."""
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


PROBE = Probe(NAME, check, description="web/api server health JSON, per component")
