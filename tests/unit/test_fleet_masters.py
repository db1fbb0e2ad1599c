"""The fleet view of a cluster with several masters: computed purely from records (as the broker hands
them to `airflow-node cluster`) and the masters the cluster file names."""

from __future__ import annotations

import dataclasses
import json

from airflow_nodes import fleet, output
from airflow_nodes.cluster import MASTER, WORKER, Member
from airflow_nodes.exitcodes import ExitCode
from airflow_nodes.sshkeys import public_key_line

from conftest import make_cluster

NOW, PERIOD = 10_000.0, 300
SAME = {"tool": "1.0", "airflow": "3.3.2", "cfg": "c1", "cluster_file": "f1", "secrets": "s1", "dags": "d1"}


def member(name: str, role: str, address: str) -> Member:
    key = public_key_line(name.encode().ljust(32, b"k"))
    host_key = public_key_line(name.encode().ljust(32, b"h")) if role == MASTER else ""
    return Member(name, role, address, address, key, host_key)


# the first master (10.20.0.1, the file's [master] host) enrolled as m1 when m2 joined
CLUSTER = make_cluster(members=(member("m1", MASTER, "10.20.0.1"), member("m2", MASTER, "10.20.0.2"),
                                member("w1", WORKER, "10.20.0.11")))  # fmt: skip
MASTERS = fleet.named_masters(CLUSTER)


def record(name: str, role: str, address: str, age: float = 10.0, **facts: object) -> dict:
    return {"node": name, "role": role, "address": address, "published": NOW - age, **SAME, **facts}


def view(*records: dict) -> fleet.FleetReport:
    return fleet.compare(list(records), "", PERIOD, NOW, masters=MASTERS)


M1 = record("m1", "master", "10.20.0.1")
M2 = record("m2", "master", "10.20.0.2")
W1 = record("w1", "worker", "10.20.0.11")


def test_the_cluster_file_names_each_master_by_name_and_address():
    assert [(m.name, m.address) for m in MASTERS] == [("m1", "10.20.0.1"), ("m2", "10.20.0.2")]
    assert fleet.named_masters(make_cluster()) == ()  # one master: the view works as it always did


def test_two_masters_live_is_ok():
    report = view(M1, M2, W1)
    assert report.status == fleet.OK and report.status.exit_code == ExitCode.OK and report.missing == []
    assert report.verdict == "OK: 3 node(s) consistent with the master m1 (2 of 2 masters live)"
    assert [row.findings for row in report.rows] == [[], [], []]


def test_one_master_missing_is_degraded_exit_1_naming_it():
    report = view(M1, W1)
    assert report.status == fleet.DRIFT and report.status.exit_code == ExitCode.FAILED
    assert report.missing == ["master m2 (10.20.0.2)"]
    assert report.verdict == "DEGRADED: missing master m2 (10.20.0.2) (1 of 2 masters live)"
    assert output.fleet_table(report).splitlines()[-3:] == [
        "master m1 (10.20.0.1): live (record m1)",
        "master m2 (10.20.0.2): missing (no record)",
        report.verdict,
    ]
    document = json.loads(output.fleet_json(report))
    assert document["status"] == 1 and document["missing"] == ["master m2 (10.20.0.2)"]
    assert document["masters"] == [{"name": "m1", "address": "10.20.0.1", "node": "m1", "live": True},
                                   {"name": "m2", "address": "10.20.0.2", "node": "", "live": False}]  # fmt: skip


def test_a_master_whose_record_is_stale_is_missing_too():
    report = view(M1, record("m2", "master", "10.20.0.2", age=3 * PERIOD), W1)
    assert report.status == fleet.DRIFT and report.missing == ["master m2 (10.20.0.2)"]
    assert any(finding.startswith("stale") for finding in report.rows[1].findings)
    assert "master m2 (10.20.0.2): missing (its record m2 is stale)" in output.fleet_table(report).splitlines()


def test_no_master_live_is_critical_exit_2():
    report = view(W1)
    assert report.status == fleet.MISSING and report.status.exit_code == ExitCode.USAGE  # Nagios CRITICAL, 2
    assert report.missing == ["master m1 (10.20.0.1)", "master m2 (10.20.0.2)"]
    assert report.verdict.startswith("CRITICAL: missing master m1") and "(0 of 2 masters live)" in report.verdict
    stale_only = view(record("m1", "master", "10.20.0.1", age=3 * PERIOD), W1)
    assert stale_only.status == fleet.MISSING


def test_a_missing_expected_worker_stays_critical_with_every_master_live():
    report = fleet.compare([M1, M2], "w1", PERIOD, NOW, masters=MASTERS)
    assert report.status == fleet.MISSING and report.missing == ["w1"]


def test_drift_is_measured_against_the_first_masters_record():
    report = view(M1, record("m2", "master", "10.20.0.2", cfg="c2"), record("w1", "worker", "10.20.0.11", dags="d0"))
    findings = {row.record["node"]: row.findings for row in report.rows}
    assert findings == {
        "m1": [],
        "m2": ["cfg differs from the master m1's"],
        "w1": ["dags differs from the master m1's"],
    }
    assert report.status == fleet.DRIFT and report.verdict.startswith("WARNING: 2 of 3 node(s) differ")


def test_with_the_first_master_missing_another_masters_record_is_the_reference():
    report = view(record("m2", "master", "10.20.0.2", cfg="c2"), record("w1", "worker", "10.20.0.11", cfg="c2"))
    assert [row.findings for row in report.rows] == [[], []]
    assert report.missing == ["master m1 (10.20.0.1)"] and report.status == fleet.DRIFT
    # a live master's record is preferred to the first master's stale one
    late_first = record("m1", "master", "10.20.0.1", age=3 * PERIOD, cfg="c0")
    assert fleet.reference_master([late_first, M2], MASTERS, NOW, PERIOD) is M2


def test_a_master_record_is_found_by_address_when_its_node_name_differs():
    renamed = record("host-b", "master", "10.20.0.2")
    report = view(M1, renamed, W1)
    assert report.status == fleet.OK and report.missing == []


def test_a_master_record_the_cluster_file_does_not_name_is_flagged():
    stranger = record("m9", "master", "10.20.0.9")
    report = view(M1, M2, stranger)
    findings = {row.record["node"]: row.findings for row in report.rows}
    assert findings["m9"] == ["claims a master's role, but the cluster file names no master by its name or address"]
    assert report.status == fleet.DRIFT


def test_the_first_master_before_it_is_a_member_is_named_by_its_address():
    cluster = dataclasses.replace(CLUSTER, members=(member("m2", MASTER, "10.20.0.2"),))
    masters = fleet.named_masters(cluster)
    assert [m.label for m in masters] == ["10.20.0.1", "m2 (10.20.0.2)"]
    report = fleet.compare([M1, M2], "", PERIOD, NOW, masters=masters)
    assert report.status == fleet.OK
    report = fleet.compare([M2], "", PERIOD, NOW, masters=masters)
    assert report.missing == ["master 10.20.0.1"] and report.status == fleet.DRIFT


def test_one_master_clusters_still_refuse_two_master_records():
    report = fleet.compare([M1, M2, W1], "", PERIOD, NOW)
    assert report.masters == [] and json.loads(output.fleet_json(report))["masters"] == []
    assert report.status == fleet.MISSING and report.missing == ["the master (2 records claim it)"]
    report = fleet.compare([M1, record("w1", "worker", "10.20.0.11", cfg="c2")], "", PERIOD, NOW)
    assert report.rows[1].findings == ["cfg differs from the master's"]
