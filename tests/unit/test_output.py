"""Exit codes, errors that name what they are about, and the one table and JSON formatter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.exitcodes import CheckStatus, ExitCode
from airflow_nodes.fleet import FleetReport, NodeRow
from airflow_nodes.join import EnrolledWorker, JoinListing, ListedToken
from airflow_nodes.output import fleet_json, fleet_table, join_listing, sync_status, table, to_json, upgraded
from airflow_nodes.syncing.state import SyncState
from airflow_nodes.upgrade import UpgradeOutcome
from airflow_nodes.versions import parse_airflow_version


def test_the_checks_states_are_the_tools_exit_codes_under_nagios_names():
    assert [(s.name, int(s)) for s in CheckStatus] == [("OK", 0), ("WARNING", 1), ("CRITICAL", 2), ("UNKNOWN", 3)]
    assert {int(s) for s in CheckStatus} == {int(code) for code in ExitCode}
    assert CheckStatus.CRITICAL.exit_code is ExitCode.USAGE and CheckStatus.UNKNOWN.exit_code is ExitCode.UNKNOWN


def test_a_user_error_says_what_it_is_about_and_prints_as_given():
    explicit = UserError("give the full version, such as 3.3.2", about="--to")
    assert (explicit.about, explicit.detail) == ("--to", "give the full version, such as 3.3.2")
    assert str(explicit) == "--to: give the full version, such as 3.3.2"
    older = UserError("--version: no lock file for Airflow 9.9.9 (available: 3.3.2)")
    assert (older.about, older.detail) == ("--version", "no lock file for Airflow 9.9.9 (available: 3.3.2)")
    assert str(older.about_instead("--to")) == "--to: no lock file for Airflow 9.9.9 (available: 3.3.2)"
    plain = UserError("nothing in particular")
    assert (plain.about, plain.detail, str(plain)) == (None, "nothing in particular", "nothing in particular")
    assert str(OperationError("ssh exited 255", about="--from-master")) == "--from-master: ssh exited 255"


@pytest.mark.parametrize(
    "message",
    ["--root: /x: is not a directory", "a: b: c", "no about here", "trailing: ", ": leading", "café: ü"],
)
def test_str_of_a_user_error_is_exactly_its_message(message):
    assert str(UserError(message)) == message


def test_a_table_pads_every_column_but_the_last_and_drops_trailing_spaces():
    rows = [("NAME", "N", "NOTE"), ("a", "10", ""), ("longer", "7", "x  ")]
    assert table(rows, right_aligned={1}) == ["NAME     N  NOTE", "a       10", "longer   7  x"]
    assert table([]) == []


def test_json_is_indented_ascii_with_sorting_on_request():
    assert to_json({"b": "é\x1b", "a": 1}, sort_keys=True) == '{\n  "a": 1,\n  "b": "\\u00e9\\u001b"\n}'


def test_the_fleet_table_marks_a_differing_value_and_its_json_keeps_the_nagios_status():
    master = {"node": "m", "role": "master", "address": "10.0.0.1", "airflow": "3.3.2", "clock_offset": 0.0}
    worker = {**master, "node": "w-long-name", "role": "worker", "airflow": "3.3.1"}
    rows = [NodeRow(master), NodeRow(worker, ["airflow differs from the master's"], {"airflow"}, CheckStatus.WARNING)]
    report = FleetReport(rows, [], CheckStatus.WARNING, "WARNING: 1 of 2 node(s) differ or are stale: w-long-name")
    lines = fleet_table(report).splitlines()
    assert lines[0].startswith("NODE         ROLE    ADDRESS   AIRFLOW  PACKAGES")
    assert lines[2].startswith("w-long-name  worker  10.0.0.1  !3.3.1") and lines[2].endswith("0.0")
    assert lines[3:] == ["w-long-name: airflow differs from the master's", report.verdict]
    document = json.loads(fleet_json(report))
    assert document["status"] == 1 and [n["status"] for n in document["nodes"]] == [0, 1]


def test_the_join_listing_says_each_token_and_worker_on_its_own_line():
    listing = JoinListing(
        [ListedToken("abcdefghijkl", 0.0, True), ListedToken("mnopqrstuvwx", None, False)],
        [EnrolledWorker("w1", "10.0.0.11")],
    )
    assert join_listing(listing).splitlines() == [
        "token abcdefghijkl  expired until 1970-01-01 00:00:00 UTC",
        "token mnopqrstuvwx  valid until ?",
        "worker w1  10.0.0.11",
    ]
    assert join_listing(JoinListing([], [])) == "no tokens, no enrolled workers"


def test_the_sync_status_is_aligned_key_value_lines():
    lines = sync_status(SyncState(dag_revision="abc", last_error="x\ny")).splitlines()
    assert lines[0] == "dag_revision       abc" and lines[1] == "source_revision    -"
    assert lines[-1] == "last_error         x\\ny"


def test_the_upgrade_says_what_it_did_with_its_timings():
    outcome = UpgradeOutcome(parse_airflow_version("3.3.2"), (("build", 61.25), ("migrate", 4.0)), 31.5, 95.04,
                             Path("/var/backups/airflow-node/x.dump"))  # fmt: skip
    assert upgraded(outcome) == (
        "upgraded the master to Airflow 3.3.2 (build 61.2s, migrate 4.0s, master down 31.5s, no scheduling 95.0s); "
        "backup /var/backups/airflow-node/x.dump; the workers take no tasks until their next `airflow-node sync` "
        "moves them to it"
    )
