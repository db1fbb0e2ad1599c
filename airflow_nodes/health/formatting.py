"""Turning a HealthReport into node_exporter textfile-collector metrics (its table and JSON: output.py)."""

from __future__ import annotations

import time
from pathlib import Path

from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.health.runner import HealthReport


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_prometheus(report: HealthReport, now: float | None = None) -> str:
    """Given a report, return node_exporter textfile-collector metrics (text exposition format)."""
    now = time.time() if now is None else now
    lines = [
        "# HELP airflow_node_health_status Probe result: 0 ok, 1 warning, 2 critical, 3 unknown.",
        "# TYPE airflow_node_health_status gauge",
    ]
    seen: set[tuple[str, str]] = set()
    latencies = []
    for result in report.results:
        key = (result.probe, result.target)
        if key in seen:
            continue
        seen.add(key)
        labels = f'probe="{_label(result.probe)}",target="{_label(result.target)}"'
        lines.append(f"airflow_node_health_status{{{labels}}} {int(result.status)}")
        if result.latency is not None:
            latencies.append(f"airflow_node_health_latency_seconds{{{labels}}} {result.latency:.6f}")
    lines += [
        "# HELP airflow_node_health_latency_seconds Time the probe took.",
        "# TYPE airflow_node_health_latency_seconds gauge",
        *latencies,
        "# HELP airflow_node_health_overall_status Worst probe result (the Nagios exit code).",
        "# TYPE airflow_node_health_overall_status gauge",
        f'airflow_node_health_overall_status{{node="{_label(report.node_name)}",role="{report.role}"}} '
        f"{int(report.status)}",
        "# HELP airflow_node_health_last_run_timestamp_seconds When the health run finished.",
        "# TYPE airflow_node_health_last_run_timestamp_seconds gauge",
        f"airflow_node_health_last_run_timestamp_seconds {now:.3f}",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Write text to path atomically, mode 0644; the temp name does not end in .prom, so
    node_exporter never reads a half-written file. Raise OSError if the directory is not writable."""
    write_atomically(path, text.encode("utf-8"), 0o644)
