"""Nothing a user types, a file holds, or a local account does makes airflow-node lose a secret, act
outside its root, or run a command it did not mean.

Each test states a class of attack or mistake, tries cases of it against the real CLI on real files,
and checks the exit code, that the error is one line without a traceback or a secret, and that the
tree (or the file outside it) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_init_cli import init_master, read_secrets

from conftest import NASTY_PASSWORD, NASTY_QUOTED, snapshot, worker_args

SECRET = "S3cretRedisPW"
STATE = "var/lib/airflow-node"


def one_line(result, code: int = 2) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


@pytest.fixture
def master(run_cli, tmp_path) -> Path:
    root = tmp_path / "master"
    result = init_master(run_cli, root)
    assert result.code == 0, result.err
    return root


# -- 1. secrets are never lost or silently rotated ------------------------------------------------


@pytest.mark.parametrize("damage", ["delete", "empty", "blank"])
def test_a_lost_cluster_file_is_refused_not_replaced_with_new_secrets(run_cli, master, damage):
    cluster = master / "etc/airflow-node/cluster.toml"
    if damage == "delete":
        cluster.unlink()
    else:
        cluster.write_text("" if damage == "empty" else "\n  \n")
    before = snapshot(master)
    for extra in ((), ("--force",)):
        line = one_line(init_master(run_cli, master, *extra))
        assert str(cluster) in line and "secrets" in line
        assert snapshot(master) == before  # airflow.cfg keeps the only copy of the Fernet key


def test_a_changed_password_keeps_the_old_config_as_a_backup(run_cli, master):
    cfg = master / "opt/airflow/airflow.cfg"
    old_cfg = cfg.read_bytes()
    result = init_master(run_cli, master, "--db-url", "postgresql://airflow:N3wPassw0rd@10.20.0.1/airflow",
                         "--broker-url", "redis://:N3wRedisPassw0rd@10.20.0.1:6379/0")  # fmt: skip
    assert result.code == 0, result.err
    backup = cfg.with_name("airflow.cfg.airflow-node-backup")
    assert backup.read_bytes() == old_cfg  # the old password's only copy on this host
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    assert (master / "etc/airflow-node/cluster.toml.airflow-node-backup").exists()


def test_a_hand_edited_fernet_key_is_a_conflict_and_force_keeps_it(run_cli, master):
    cfg = master / "opt/airflow/airflow.cfg"
    edited = cfg.read_text().replace("fernet_key = ", "fernet_key = HandRotatedKey0123456789abcdefghijklmnop,", 1)
    cfg.write_text(edited)
    secrets = read_secrets(master)
    dry = init_master(run_cli, master, "--dry-run", "--force")
    assert "HandRotatedKey" not in dry.out and secrets["fernet_key"] not in dry.out
    assert one_line(init_master(run_cli, master), 2)
    assert init_master(run_cli, master, "--force").code == 0
    assert cfg.with_name("airflow.cfg.airflow-node-backup").read_text() == edited


# -- 2. no local account can turn root's cron run against the system -------------------------------


def test_a_lock_symlinked_to_a_system_file_is_refused_and_the_file_untouched(run_cli, master, tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root:$6$hash:19000:0:99999:7:::\n")
    (master / STATE / "sync.lock").symlink_to(victim)
    line = one_line(run_cli("sync", "--root", master, "--dags-only"))
    assert "sync.lock" in line and "link" in line
    assert victim.read_text() == "root:$6$hash:19000:0:99999:7:::\n"


@pytest.mark.parametrize("entry", ["/../../outside", "relative/path", "/etc/../../outside", "//outside"])
def test_a_manifest_entry_outside_the_root_deletes_nothing(run_cli, master, tmp_path, entry):
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    manifest_path = master / STATE / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][entry] = __import__("hashlib").sha256(b"precious\n").hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    before = snapshot(master)
    for args in (("uninstall", "--root", master), ("uninstall", "--root", master, "--force", "--purge")):
        assert "manifest" in one_line(run_cli(*args))
    assert outside.read_text() == "precious\n"
    assert snapshot(master) == before


def test_state_files_that_are_links_are_refused(run_cli, master, tmp_path):
    decoy = tmp_path / "decoy.json"
    decoy.write_text('{"files": {}, "dirs": []}')
    manifest = master / STATE / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(decoy)
    assert "link" in one_line(init_master(run_cli, master))
    state = master / STATE / "sync-state.json"
    state.symlink_to(decoy)
    assert "link" in one_line(run_cli("sync", "--root", master, "--status"))


def test_a_state_directory_given_to_another_account_is_taken_back(run_cli, master):
    (master / STATE).chmod(0o777)
    result = init_master(run_cli, master)
    assert result.code == 0 and "fix dir" in result.out
    assert stat.S_IMODE((master / STATE).stat().st_mode) == 0o755


# -- 3. secrets are never printed -----------------------------------------------------------------


def test_dry_run_after_a_password_change_shows_neither_password(run_cli, master):
    result = init_master(run_cli, master, "--dry-run", "--broker-url", "redis://:N3wRedisSecret@10.20.0.1:6379/0")
    assert result.code == 0, result.err
    assert "airflow.cfg (on disk)" in result.out  # the diff is there
    for secret in (NASTY_PASSWORD, NASTY_QUOTED, NASTY_QUOTED.replace("%", "%%"), "N3wRedisSecret"):
        assert secret not in result.out
    assert "(changed)" in result.out  # but a changed secret is visible as such


@pytest.mark.parametrize("password", [f"{SECRET}#x", f"{SECRET}/x", f"{SECRET}?x", f"{SECRET}@x"])
def test_a_url_that_does_not_parse_is_never_echoed_with_its_password(run_cli, tmp_path, password):
    result = init_master(run_cli, tmp_path / "n", "--broker-url", f"redis://:{password}@127.0.0.1:6379/0")
    line = one_line(result)
    assert "--broker-url" in line and SECRET not in line
    assert not (tmp_path / "n").exists()


def test_urls_can_come_from_files_and_the_environment(run_cli, tmp_path, monkeypatch):
    db_file = tmp_path / "db-url"
    db_file.write_text("postgresql://airflow:FromAFile@10.20.0.1/airflow\n")
    db_file.chmod(0o600)
    monkeypatch.setenv("AIRFLOW_NODE_BROKER_URL", "redis://:FromTheEnv@10.20.0.1:6379/0")
    root = tmp_path / "n"
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--master-host",
                     "10.20.0.1", "--db-url-file", db_file,
                     "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    cluster = (root / "etc/airflow-node/cluster.toml").read_text()
    assert "FromAFile" in cluster and "FromTheEnv" in cluster
    assert "FromAFile" not in result.out + result.err and "FromTheEnv" not in result.out + result.err
    both = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2",
                   "--db-url", "postgresql://a:b@m/db", "--db-url-file", db_file)  # fmt: skip
    assert "--db-url-file" in one_line(both)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line(run_cli("init", "--role", "master", "--root", root, "--airflow-version",
                                                    "3.3.2", "--db-url-file", fifo))  # fmt: skip


def test_help_says_how_to_keep_passwords_off_the_command_line(run_cli):
    result = run_cli("init", "--help")
    assert "AIRFLOW_NODE_BROKER_URL" in result.out and "--db-url-file" in result.out


# -- 4. nothing written or run outside what was asked ---------------------------------------------


def test_an_empty_root_is_refused_and_a_relative_one_made_absolute(run_cli, tmp_path, cluster_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert "--root" in one_line(run_cli(*worker_args(Path("x"), cluster_file), "--root", ""))
    assert snapshot(tmp_path) == before
    source = tmp_path / "rel/srv/dags"  # a path source is read on the node, under its root
    source.mkdir(parents=True)
    (source / "a.py").write_text("x = 1\n")
    master = run_cli("init", "--role", "master", "--root", "rel", "--airflow-version", "3.3.2", "--master-host",
                     "10.20.0.1", "--broker-url", "redis://m:6379/0", "--db-url", "postgresql://a@m/db",
                     "--dags-source", "/srv/dags", "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert master.code == 0, master.err
    assert run_cli("sync", "--root", "rel", "--dags-only").code == 0
    published = tmp_path / "rel/opt/airflow/dags"
    assert os.path.isabs(os.readlink(published)) and (published / "a.py").read_text() == "x = 1\n"


def test_root_that_is_a_file_is_one_line_for_every_command(run_cli, tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for command in ("sync", "status", "start", "uninstall"):
        assert "--root" in one_line(run_cli(command, "--root", a_file))
    assert run_cli("health", "--root", a_file).code == 3


def test_a_root_that_cannot_be_created_is_one_line(run_cli, cluster_file):
    result = run_cli(*worker_args(Path("/proc/self/node"), cluster_file))
    assert one_line(result) == "airflow-node: --root: cannot create /proc/self/node (/proc/self is not writable)"


def test_from_master_never_hands_ssh_an_option(run_cli, tmp_path, monkeypatch):
    stub = tmp_path / "bin"
    stub.mkdir()
    called = tmp_path / "ssh-called"
    (stub / "ssh").write_text(f'#!/bin/sh\necho "$@" >> {called}\nexit 1\n')
    (stub / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:{os.environ['PATH']}")
    for spec in ("-oProxyCommand=touch /tmp/pwned@m", "airflow@-oProxyCommand=x", "a@m:-1", "a b@m"):
        assert "--from-master" in one_line(run_cli("init", "--role", "worker", "--root", tmp_path / "n",
                                                   "--airflow-version", "3.3.2", "--from-master", spec))  # fmt: skip
    assert not called.exists()  # refused before any ssh ran
    result = run_cli("init", "--role", "worker", "--root", tmp_path / "n", "--airflow-version", "3.3.2",
                     "--from-master", "airflow@m")  # fmt: skip
    assert result.code == 1 and called.read_text().split()[-4:] == [
        "--",
        "airflow@m",
        "cat",
        "/etc/airflow-node/cluster.toml",
    ]


def test_ssh_options_that_do_not_split_are_one_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_NODE_SSH_OPTS", '-o "x')
    result = run_cli("init", "--role", "worker", "--root", tmp_path / "n", "--airflow-version", "3.3.2",
                     "--from-master", "airflow@m")  # fmt: skip
    assert "AIRFLOW_NODE_SSH_OPTS" in one_line(result)


# -- 5. every number is bounded and finite ----------------------------------------------------------


@pytest.mark.parametrize(
    "args,option",
    [
        (["sync", "--max-delete-ratio", "nan"], "--max-delete-ratio"),
        (["sync", "--wait", "nan"], "--wait"),
        (["sync", "--wait", "inf"], "--wait"),
        (["sync", "--keep", "100000"], "--keep"),
    ],
)
def test_sync_numbers_are_finite_and_bounded(run_cli, master, args, option):
    before = snapshot(master)
    assert option in one_line(run_cli(*args, "--root", master))
    assert snapshot(master) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e9", "0"])
def test_health_timeout_is_finite_and_bounded(run_cli, master, value):
    result = run_cli("health", "--root", master, "--timeout", value)
    assert result.code == 3
    assert "--timeout" in result.err and len(result.err.strip().splitlines()) == 1


# -- 6. a user error is one line, exit 2, no traceback, nothing changed -----------------------------


@pytest.mark.parametrize("name", ["node.toml", "cluster.toml"])
def test_binary_config_files_are_one_line(run_cli, master, name):
    (master / "etc/airflow-node" / name).write_bytes(b"\xff\xfe\x00binary\x80")
    before = snapshot(master)
    for args in (("sync", "--root", master), ("status", "--root", master)):
        assert name in one_line(run_cli(*args))
    assert run_cli("health", "--root", master).code == 3
    assert snapshot(master) == before


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', '{"last_error": 5}', "{"])
def test_a_sync_state_that_is_not_ours_is_one_line(run_cli, master, content):
    (master / STATE / "sync-state.json").write_text(content)
    assert "sync-state.json" in one_line(run_cli("sync", "--root", master, "--status"))


def test_a_backup_path_in_the_way_fails_before_anything_changes(run_cli, master):
    cfg = master / "opt/airflow/airflow.cfg"
    cfg.write_text(cfg.read_text() + "# edited\n")
    cfg.with_name("airflow.cfg.airflow-node-backup").mkdir()
    before = snapshot(master)
    assert "airflow.cfg.airflow-node-backup" in one_line(init_master(run_cli, master, "--force", "--web-port", "8081"))
    assert snapshot(master) == before


def test_leftovers_of_a_killed_run_are_cleaned_by_the_next(run_cli, master):
    dead_pid = 2**22 + 1  # above pid_max's default: no such process
    leftovers = [master / f"opt/airflow/.airflow.cfg.airflow-node-tmp{dead_pid}-0",
                 master / f"etc/airflow-node/.cluster.toml.airflow-node-old{dead_pid}"]  # fmt: skip
    for leftover in leftovers:
        leftover.write_text("half a secret")
    foreign = master / "opt/airflow/.someone-elses.airflow-node-tmp1-0"
    foreign.write_text("not ours")
    result = init_master(run_cli, master)
    assert result.code == 0 and "left by an interrupted run" in result.out
    assert not any(path.exists() for path in leftovers) and foreign.exists()
    assert "Nothing to change" in init_master(run_cli, master).out


# -- 7. config that cannot work is refused ---------------------------------------------------------


def test_an_ipv6_master_is_rendered_in_brackets(run_cli, tmp_path):
    root = tmp_path / "n"
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--master-host",
                     "fd00::1", "--broker-url", "redis://[fd00::1]:6379/0", "--db-url", "postgresql://a@[fd00::1]/db",
                     "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    cfg = (root / "opt/airflow/airflow.cfg").read_text()
    assert "base_url = http://[fd00::1]:8080" in cfg and "http://[fd00::1]:8080/execution/" in cfg


def test_a_supervisord_conf_that_is_a_directory_is_refused(run_cli, tmp_path, cluster_file):
    root = tmp_path / "n"
    (root / "etc/supervisor").mkdir(parents=True)
    before = snapshot(root)
    result = run_cli(*worker_args(root, cluster_file), "--supervisord-conf", "/etc/supervisor")
    assert "--supervisord-conf" in one_line(result)
    assert snapshot(root) == before


def test_a_moved_master_takes_its_default_dag_source_along(run_cli, master):
    result = init_master(run_cli, master, "--master-host", "10.20.0.9")
    assert result.code == 0, result.err
    cluster = (master / "etc/airflow-node/cluster.toml").read_text()
    assert 'source = "airflow@10.20.0.9:/srv/airflow/dags/"' in cluster


# -- found by a hostile review: links part-way down a path, special files, parser limits, our own runs --


def test_a_link_part_way_down_a_path_is_never_followed(run_cli, master, tmp_path, cluster_file):
    outside = tmp_path / "outside"
    (outside / "system").mkdir(parents=True)
    (outside / "system" / "precious.service").write_text("keep\n")
    systemd = master / "etc/systemd"
    for unit in (systemd / "system").iterdir():
        (outside / "system" / unit.name).write_bytes(unit.read_bytes())
    os.rename(systemd, tmp_path / "moved-away")
    systemd.symlink_to(outside)
    assert "link" in one_line(run_cli("uninstall", "--root", master))
    assert sorted(p.name for p in (outside / "system").iterdir())[-1] == "precious.service"
    assert len(list((outside / "system").iterdir())) == 8  # nothing deleted through the link

    fresh = tmp_path / "fresh"
    (fresh / "etc").mkdir(parents=True)
    (fresh / "etc/cron.d").symlink_to(outside)
    assert "link" in one_line(run_cli(*worker_args(fresh, cluster_file)))
    assert not (outside / "airflow-node").exists()


def test_sync_never_follows_a_link_planted_in_its_work_tree(run_cli, tmp_path):
    root = tmp_path / "m"
    (root / "srv/dags").mkdir(parents=True)
    (root / "srv/dags/a.py").write_text("x = 1\n")
    assert run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--master-host", "m",
                   "--broker-url", "redis://m:6379/0", "--db-url", "postgresql://a@m/db", "--dags-source",
                   "/srv/dags", "--airflow-node-bin", "/usr/local/bin/airflow-node").code == 0  # fmt: skip
    assert run_cli("sync", "--root", root, "--dags-only").code == 0
    work = root / STATE / "dags"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep\n")
    shutil.rmtree(work / "mirror")
    (work / "mirror").symlink_to(victim)
    assert "mirror" in one_line(run_cli("sync", "--root", root, "--dags-only"))
    assert (victim / "precious.txt").read_text() == "keep\n" and not (victim / "a.py").exists()

    (work / "mirror").unlink()
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "a.py").write_text("import os\n")
    release = next((work / "releases").iterdir())
    shutil.rmtree(release)
    release.symlink_to(evil)
    (root / "opt/airflow/dags").unlink()
    assert run_cli("sync", "--root", root, "--dags-only").code == 0
    published = Path(os.path.realpath(root / "opt/airflow/dags"))
    assert root in published.parents and (published / "a.py").read_text() == "x = 1\n"


def run_in_a_process(*args: object, timeout: float = 30) -> subprocess.CompletedProcess:
    """The CLI in its own process, so that a hang is a failure and not a stuck test run."""
    argv = [sys.executable, "-m", "airflow_nodes", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[2])


def test_special_files_never_make_it_wait(master, tmp_path, cluster_file):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    config = run_in_a_process(*worker_args(tmp_path / "w", fifo))
    assert config.returncode == 2 and "--config" in config.stderr
    bin_fifo = tmp_path / "airflow"
    os.mkfifo(bin_fifo, 0o755)
    airflow_bin = run_in_a_process("init", "--role", "master", "--root", master, "--airflow-bin", bin_fifo, "--dry-run")
    assert airflow_bin.returncode == 2 and "Traceback" not in airflow_bin.stderr
    cfg = master / "opt/airflow/airflow.cfg"
    cfg.unlink()
    os.mkfifo(cfg)
    assert run_in_a_process("sync", "--root", master, "--dags-only").returncode in (0, 1, 2)  # it returns


@pytest.mark.parametrize(
    "where,content,command",
    [
        (f"{STATE}/manifest.json", "[" * 200000, "uninstall"),
        (f"{STATE}/sync-state.json", '{"a":' * 200000, "sync --status"),
        (f"{STATE}/sync-state.json", '{"last_error": "\\ud800 boom"}', "sync --status"),
        ("etc/airflow-node/node.toml", "x = " + "[" * 100000, "status"),
        ("etc/airflow-node/node.toml", "[worker]\nconcurrency = " + "1" * 5000, "status"),
    ],
)
def test_state_past_any_parser_limit_is_one_line(run_cli, master, where, content, command):
    (master / where).write_text(content)
    assert Path(where).name in one_line(run_cli(*command.split(), "--root", master))


def test_a_git_token_never_reaches_output_or_state(run_cli, master):
    result = init_master(run_cli, master, "--dags-source", "git+https://user:GitTok3nXYZ@127.0.0.1:9/repo.git")
    assert result.code == 0, result.err
    failed = run_cli("sync", "--root", master, "--dags-only")
    assert failed.code == 1 and "GitTok3nXYZ" not in failed.err + failed.out
    assert "GitTok3nXYZ" not in (master / STATE / "sync-state.json").read_text()
    assert "GitTok3nXYZ" not in run_cli("sync", "--root", master, "--status").out


def test_health_never_runs_an_interpreter_others_can_change(run_cli, master, tmp_path):
    marker = tmp_path / "ran"
    venv = master / "opt/venv/bin"  # the node's own, in its tree
    venv.mkdir(parents=True)
    fake_python = venv / "fakepython"
    fake_python.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake_python.chmod(0o777)  # anyone could have written it
    airflow = venv / "airflow"
    airflow.write_text(f"#!{fake_python} python\n")
    airflow.chmod(0o755)
    node_toml = master / "etc/airflow-node/node.toml"
    node_toml.write_text(re.sub(r'airflow_bin = ".*"', 'airflow_bin = "/opt/venv/bin/airflow"', node_toml.read_text()))
    result = run_cli("health", "--root", master, "--only", "packages", "--json")
    assert result.code == 2 and not marker.exists()
    assert "will not run it as root" in result.out


def test_root_never_hashes_a_file_through_a_link_the_airflow_account_planted(run_cli, master, tmp_path):
    secret = tmp_path / "root-only"  # stands in for /etc/shadow
    secret.write_text("root:$6$hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    cfg = master / "opt/airflow/airflow.cfg"  # in AIRFLOW_HOME, which the airflow account owns
    cfg.unlink()
    cfg.symlink_to(secret)
    run_cli("sync", "--root", master, "--dags-only")
    state = json.loads((master / STATE / "sync-state.json").read_text())
    leaked = hashlib.sha256(secret.read_bytes()).hexdigest()
    assert state["config_hash"] != leaked and leaked not in json.dumps(state)
