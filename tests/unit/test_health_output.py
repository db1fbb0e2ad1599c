"""Health output: table, JSON, Prometheus textfile, exit codes, and no password anywhere."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_nodes.cli import main
from airflow_nodes.health.clock import grade, skew_seconds
from airflow_nodes.health.consistency import judge_sync_state
from airflow_nodes.health.formatting import format_prometheus
from airflow_nodes.health.model import Result, Status, worst
from airflow_nodes.health.runner import PROBE_NAMES, HealthReport
from airflow_nodes.output import health_table

from conftest import NASTY_PASSWORD, NASTY_QUOTED


def run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def render(tmp_path: Path, capsys, role: str = "master") -> Path:
    root = tmp_path / "node"
    common = ["--root", root, "--airflow-version", "3.3.2", "--node-name", "n1", "--init-system", "systemd",
              "--airflow-node-bin", "/usr/local/bin/airflow-node"]  # fmt: skip
    master = root if role == "master" else tmp_path / "master"
    code, _, err = run(
        capsys, "init", "--role", "master", "--master-host", "127.0.0.1", "--web-port", "1", "--flower-port", "2",
        "--broker-url", f"redis://:{NASTY_QUOTED}@127.0.0.1:1/0",
        "--db-url", f"postgresql://airflow:{NASTY_QUOTED}@127.0.0.1:1/airflow",
        *[master if a == root else a for a in common],
    )  # fmt: skip
    assert code == 0, err
    if role == "worker":
        code, _, err = run(capsys, "init", "--role", "worker", "--config", master / "etc/airflow-node/cluster.toml",
                           *common)  # fmt: skip
        assert code == 0, err
    return root


@pytest.mark.parametrize("role", ["master", "worker"])
def test_no_output_ever_contains_a_configured_password(tmp_path, capsys, role):
    root = render(tmp_path, capsys, role)
    prom = tmp_path / "health.prom"
    outputs = []
    for args in (["--timeout", "0.5"], ["--json", "--timeout", "0.5", "--prometheus", prom], ["--only", "nope"]):
        outputs.append(run(capsys, "health", "--root", root, *args))
    outputs.append((0, prom.read_text(), ""))
    secrets = [NASTY_PASSWORD, NASTY_QUOTED, NASTY_QUOTED.replace("%", "%%")]
    for _, out, err in outputs:
        for secret in secrets:
            assert secret not in out + err
    assert "redis://:***@127.0.0.1:1/0" in outputs[0][1]
    assert outputs[0][0] == 2  # everything is refused


def test_exit_codes_follow_nagios(tmp_path, capsys):
    assert run(capsys, "health", "--root", tmp_path / "nothing")[0] == 3  # never initialised
    root = render(tmp_path, capsys)
    assert run(capsys, "health", "--root", root, "--only", "bogus")[0] == 3
    assert run(capsys, "health", "--root", root, "--no-such-option")[0] == 3
    assert run(capsys, "health", "--root", root, "--only", "consistency")[0] == 1  # never synced: warning
    assert run(capsys, "health", "--root", root, "--only", "redis")[0] == 2


def test_only_selects_probes_and_lists_the_inapplicable(tmp_path, capsys):
    root = render(tmp_path, capsys)
    code, out, _ = run(capsys, "health", "--root", root, "--only", "redis,clock", "--json")
    document = json.loads(out)
    assert [r["probe"] for r in document["results"]] == ["redis"]
    assert document["skipped"] == ["clock"]  # a master does not measure skew against itself


def test_help_names_every_probe(capsys):
    code, out, _ = run(capsys, "health", "--help")
    assert code == 0
    flat = " ".join(out.split())
    assert all(name in flat for name in PROBE_NAMES)


def report(*results: Result) -> HealthReport:
    return HealthReport(tuple(results), worst(r.status for r in results), 0.1, "master", "n1", 2.0, ())


def test_table_has_the_columns_and_a_summary():
    text = health_table(report(Result(Status.OK, "redis", "redis://h:6379/0", 0.0012, "PING ok")))
    header, row, _, summary = text.splitlines()
    assert header.split() == ["STATUS", "PROBE", "TARGET", "LATENCY", "DETAIL"]
    assert row.split() == ["OK", "redis", "redis://h:6379/0", "1.2", "ms", "PING", "ok"]
    assert summary.startswith("OK: 1 ok, 0 warning, 0 critical, 0 unknown")


def test_prometheus_textfile_is_valid_exposition_and_written_atomically(tmp_path, capsys):
    text = format_prometheus(
        report(
            Result(Status.CRITICAL, "web", 'http://h/x "y"', None, "down"),
            Result(Status.OK, "redis", "r", 0.5, "ok"),
        ),
        now=1700000000.0,
    )
    assert 'airflow_node_health_status{probe="web",target="http://h/x \\"y\\""} 2' in text
    assert 'airflow_node_health_latency_seconds{probe="redis",target="r"} 0.500000' in text
    assert 'airflow_node_health_overall_status{node="n1",role="master"} 2' in text
    assert text.endswith("airflow_node_health_last_run_timestamp_seconds 1700000000.000\n")
    root = render(tmp_path, capsys)
    prom = tmp_path / "textfile" / "airflow.prom"
    prom.parent.mkdir()
    run(capsys, "health", "--root", root, "--only", "consistency", "--prometheus", prom)
    assert [p.name for p in prom.parent.iterdir()] == ["airflow.prom"]  # no temp file left behind
    assert oct(prom.stat().st_mode & 0o777) == "0o644"


def test_worst_status_ranks_critical_over_unknown_over_warning():
    assert worst([Status.OK, Status.WARNING, Status.UNKNOWN]) == Status.UNKNOWN
    assert worst([Status.UNKNOWN, Status.CRITICAL]) == Status.CRITICAL
    assert worst([]) == Status.OK


def test_clock_skew_from_a_date_header():
    skew = skew_seconds("Tue, 14 Nov 2023 22:13:20 GMT", 1700000000.0 + 7.4, 1700000000.0 + 7.6)
    assert skew == pytest.approx(7.0)
    assert (grade(1.0), grade(-6.0), grade(12.0)) == (Status.OK, Status.WARNING, Status.CRITICAL)


NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


def state(**overrides: object) -> dict:
    values = {
        "dag_revision": "abc123def4567890",
        "source_revision": "abc123def4567890",
        "config_hash": "c" * 64,
        "cluster_file_hash": "d" * 64,
        "last_success": (NOW - timedelta(minutes=4)).isoformat(),
        "last_attempt": (NOW - timedelta(minutes=4)).isoformat(),
        "last_error": None,
    }
    values.update(overrides)
    return values


def test_fresh_unchanged_sync_is_consistent():
    findings = judge_sync_state(state(), "c" * 64, "d" * 64, 5, NOW)
    assert {status for status, _, _ in findings} == {Status.OK}


def test_stale_sync_edited_config_and_last_error_warn():
    old = (NOW - timedelta(minutes=16)).isoformat()
    findings = judge_sync_state(state(last_success=old, last_error="rsync: refused"), "e" * 64, "d" * 64, 5, NOW)
    warned = {aspect for status, aspect, _ in findings if status == Status.WARNING}
    assert warned == {"last sync", "last error", "airflow.cfg"}


def test_never_synced_and_missing_files():
    findings = judge_sync_state(state(last_success=None, dag_revision=None), None, "d" * 64, 5, NOW)
    by_aspect = {aspect: status for status, aspect, _ in findings}
    assert by_aspect == {
        "last sync": Status.WARNING,
        "airflow.cfg": Status.CRITICAL,
        "cluster file": Status.OK,
        "DAG revision": Status.WARNING,
    }
