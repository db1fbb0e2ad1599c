"""What airflow-node prints when what it reads is hostile: no secret it does not know by name, no
escape sequence or line break from outside that acts on root's terminal, no error line of unbounded
length; and uninstall asks nothing of the master before its own checks have passed.

Real files and the real CLI in-process, as in test_hostile_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hostile_input import one_line
from test_init_cli import init_master

import airflow_nodes.uninstall as uninstall_module
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.health.model import Result, Status
from airflow_nodes.health.runner import HealthReport
from airflow_nodes.node import SSH_KEY_FILE
from airflow_nodes.output import health_json, health_table
from airflow_nodes.sanitise import printable, printable_lines

from conftest import make_cluster, snapshot, worker_args

ESCAPES = "\x1b]0;pwned\x07\x1b[2J"  # retitle the terminal, clear the screen
FORGED = "\nOK: all fine"  # a second line that looks like ours
ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIGb4t2FfMVv1rBq0lq1U0u2QjfQ8r2m1bG6jNw9w9m9X"


def inert(text: str) -> bool:
    """Whether text holds no character that acts on a terminal (its own line breaks aside)."""
    return printable_lines(text) == text


@pytest.fixture
def master(run_cli, tmp_path) -> Path:
    root = tmp_path / "master"
    result = init_master(run_cli, root)
    assert result.code == 0, result.err
    return root


# -- 1. a dry run redacts secrets by what they are, not by a list of names ---------------------------


HAND_ADDED = {
    "smtp": "smtp_password = Sm7pPassw0rd\n",
    "ldap": "bind_password: B1ndPassw0rd\n",
    "secrets": 'backend = VaultBackend\nbackend_kwargs = {"url": "http://vault:8200", "token": "s.Vau1tT0ken"}\n',
    "api": "google_key_path = /k.json\nauth_kwargs = {'api_token': 'Py7hon7oken'}\n",
    "smtp_url": "relay = smtp://mail:Re1ayPassw0rd@relay:25/?oauth_secret=0authS3cret&x=1\n",
}
HAND_ADDED_SECRETS = ("Sm7pPassw0rd", "B1ndPassw0rd", "s.Vau1tT0ken", "Py7hon7oken", "Re1ayPassw0rd", "0authS3cret")


def test_dry_run_redacts_secrets_of_an_edited_config_that_it_does_not_know_by_name(run_cli, master):
    cfg = master / "opt/airflow/airflow.cfg"
    cfg.write_text(cfg.read_text() + "".join(f"\n[{section}]\n{lines}" for section, lines in HAND_ADDED.items()))
    before = snapshot(master)
    result = init_master(run_cli, master, "--dry-run", "--force")
    assert result.code == 0, result.err
    assert "-[secrets]" in result.out and '"token": "***"' in result.out  # the diff is there, redacted
    assert "-smtp_password = ***" in result.out and "-bind_password: ***" in result.out
    for secret in HAND_ADDED_SECRETS:
        assert secret not in result.out + result.err
    assert snapshot(master) == before


# -- 2. nothing from outside acts on the terminal -----------------------------------------------------


def test_the_sanitiser_shows_controls_breaks_and_bidi_overrides_escaped():
    assert printable("a\x1b[2Jb\r\nc\x85d\u202ee\u2028f\tg") == "a\\x1b[2Jb\\r\\nc\\x85d\\u202ee\\u2028f\\tg"
    assert printable_lines("one\x1b[1m\ntwo\tthree\r") == "one\\x1b[1m\ntwo\tthree\\r"
    assert printable("Ünïcödé ✓ plain") == "Ünïcödé ✓ plain"


def test_an_unknown_toml_key_with_escapes_and_a_line_break_is_one_inert_line(run_cli, tmp_path, cluster_file):
    cluster_file.write_text(cluster_file.read_text() + '\n[extra]\n"evil\\u001b]0;pwned\\u0007\\nOK: fine" = 1\n')
    root = tmp_path / "node"
    line = one_line(run_cli(*worker_args(root, cluster_file)))
    assert inert(line) and "\\x1b]0;pwned" in line and "unknown key extra.evil" in line
    assert str(cluster_file) in line and not root.exists()


def test_a_health_detail_from_outside_is_one_inert_line_in_the_table_and_json():
    detail = f"server said {ESCAPES}{FORGED}\u202e"
    result = Result(Status.CRITICAL, "web", f"http://m:8080 {ESCAPES}", 0.01, detail)
    report = HealthReport((result,), Status.CRITICAL, 0.1, "master", f"m{ESCAPES}", 1.0, ("units",))
    table = health_table(report)
    assert inert(table) and len(table.splitlines()) == 4  # header, one row, blank, summary
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\nOK: all fine\\u202e" in table
    document = health_json(report)
    assert inert(document) and json.loads(document)["results"][0]["detail"] == detail


def enroll(master: Path, name: str, address: str = "127.0.0.1") -> None:
    keys = master / "opt/airflow/.ssh/authorized_keys"
    keys.parent.mkdir(mode=0o700, exist_ok=True)
    keys.write_text(f"restrict ssh-ed25519 {ED25519} airflow-node-worker:{name}@{address}\n")


def test_a_worker_name_in_authorized_keys_never_acts_on_the_terminal(run_cli, master):
    enroll(master, f"evil{ESCAPES}")
    listing = run_cli("join-token", "--root", master, "--list")
    assert listing.code == 0, listing.err
    assert inert(listing.out) and "worker evil\\x1b]0;pwned" in listing.out
    for extra in ((), ("--json",)):
        health = run_cli("health", "--root", master, "--only", "logs", "--timeout", "1", *extra)
        assert "evil" in health.out and inert(health.out) and inert(health.err), health


def test_a_dag_file_name_in_a_sync_warning_is_printed_inert(run_cli, tmp_path):
    root = tmp_path / "m"
    (root / "srv/dags").mkdir(parents=True)
    (root / "srv/dags" / f"evil{ESCAPES}{FORGED}.py").write_text("def broken(:\n")
    assert run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--master-host", "m",
                   "--broker-url", "redis://m:6379/0", "--db-url", "postgresql://a@m/db", "--dags-source",
                   "/srv/dags", "--airflow-node-bin", "/usr/local/bin/airflow-node").code == 0  # fmt: skip
    result = run_cli("sync", "--root", root, "--dags-only", "--validate", "warn")
    assert result.code == 0, result.err
    assert "warning" in result.out and "evil\\x1b]0;pwned" in result.out
    assert inert(result.out) and len(result.out.splitlines()) == 1


# -- 3. errors are bounded and name the command; uninstall refuses before it asks the master -----------


@pytest.mark.parametrize(
    "key,value",
    [("master_host", "!" * 900_000), ("broker_url", "x" * 900_000), ("airflow_home", "/" + "x " * 450_000),
     ("dags_source", "/srv/" + "!" * 900_000)],
)  # fmt: skip
def test_a_huge_value_in_the_cluster_file_is_a_short_error_line(run_cli, tmp_path, key, value):
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(make_cluster(**{key: value})))
    root = tmp_path / "node"
    line = one_line(run_cli(*worker_args(root, cluster_file)))
    assert str(cluster_file) in line and len(line) < 700 and inert(line)
    assert not root.exists()


def test_cluster_usage_errors_name_the_cluster_command(run_cli):
    result = run_cli("cluster", "--no-such-option")
    assert result.code == 3 and result.err.startswith("airflow-node cluster: ")
    assert run_cli("health", "--no-such-option").err.startswith("airflow-node health: ")


def test_uninstall_asks_nothing_of_the_master_when_its_own_checks_refuse(run_cli, tmp_path, cluster_file, monkeypatch):
    root = tmp_path / "w"
    assert run_cli(*worker_args(root, cluster_file)).code == 0
    key = root / SSH_KEY_FILE.lstrip("/")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("a joined worker's key\n")
    asked = []
    monkeypatch.setattr(uninstall_module, "leave", lambda target, ctx: asked.append(target) or "left")
    edited = root / "etc/airflow-node/conf.d/airflow-node.conf"
    edited.write_text(edited.read_text() + "# edited\n")
    edited.with_name(edited.name + ".airflow-node-backup").mkdir()  # in the way of the backup --force keeps
    before = snapshot(root)
    assert "airflow-node-backup" in one_line(run_cli("uninstall", "--root", root, "--force"))
    assert asked == [] and snapshot(root) == before
    edited.with_name(edited.name + ".airflow-node-backup").rmdir()
    result = run_cli("uninstall", "--root", root, "--force")
    assert result.code == 0, result.err
    assert len(asked) == 1 and "left" in result.out
