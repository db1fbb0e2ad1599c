"""Turning a HealthReport into a table, JSON, or node_exporter textfile metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.health.model import Result, Status
from airflow_nodes.health.runner import HealthReport
from airflow_nodes.sanitise import printable

COLUMNS = ("STATUS", "PROBE", "TARGET", "LATENCY", "DETAIL")


def format_latency(seconds: float | None) -> str:
    """Given seconds or None, return '12.3 ms', '2.00 s' or '-'."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _summary(report: HealthReport) -> str:
    counts = {status: 0 for status in Status}
    for result in report.results:
        counts[result.status] += 1
    tally = ", ".join(f"{counts[s]} {s.name.lower()}" for s in Status)
    line = f"{report.status.name}: {tally} ({report.role} {report.node_name}, {report.elapsed:.2f} s)"
    if report.skipped:
        line += f"; not applicable here: {', '.join(report.skipped)}"
    return printable(line)


def format_table(report: HealthReport) -> str:
    """Given a report, return an aligned text table followed by a one-line summary. What a probe read
    from outside (a worker's name, a server's error) shows escaped: one line per result, inert."""
    rows = [COLUMNS] + [
        (r.status.name, printable(r.probe), printable(r.target), format_latency(r.latency), printable(r.detail))
        for r in report.results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [row[i].rjust(widths[i]) if i == 3 else row[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join([*lines, "", _summary(report)])


def _result_dict(result: Result) -> dict[str, object]:
    return {
        "status": result.status.name,
        "probe": result.probe,
        "target": result.target,
        "latency_seconds": None if result.latency is None else round(result.latency, 6),
        "detail": result.detail,
    }


def format_json(report: HealthReport) -> str:
    """Given a report, return it as a JSON document (status names, Nagios exit code, results). JSON's
    own escapes (ASCII only) keep control characters from outside inert."""
    document = {
        "status": report.status.name,
        "exit_code": int(report.status),
        "node": report.node_name,
        "role": report.role,
        "timeout_seconds": report.timeout,
        "elapsed_seconds": round(report.elapsed, 6),
        "results": [_result_dict(result) for result in report.results],
        "skipped": list(report.skipped),
    }
    return json.dumps(document, indent=2, ensure_ascii=True)


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
