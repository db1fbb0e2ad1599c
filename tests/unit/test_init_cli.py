"""`airflow-node init` as a user meets it: idempotence, edit protection, atomicity, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import airflow_nodes.apply as apply_module
from airflow_nodes.cluster import dump_cluster
from airflow_nodes.schema import tomllib

from conftest import NASTY_PASSWORD, NASTY_QUOTED, make_cluster, snapshot, worker_args

MASTER_OPTIONS = [
    "--airflow-version", "3.3.2", "--master-host", "10.20.0.1", "--init-system", "systemd",
    "--broker-url", f"redis://:{NASTY_QUOTED}@10.20.0.1:6379/0",
    "--db-url", f"postgresql://airflow:{NASTY_QUOTED}@10.20.0.1/airflow",
    "--node-name", "master1", "--airflow-node-bin", "/usr/local/bin/airflow-node",
]  # fmt: skip


def init_master(run_cli, root: Path, *extra: str):
    return run_cli("init", "--role", "master", "--root", root, *MASTER_OPTIONS, *extra)


def read_secrets(root: Path) -> dict:
    return tomllib.loads((root / "etc/airflow-node/cluster.toml").read_text())["secrets"]


def test_master_init_generates_secrets_once_and_rerun_changes_nothing(run_cli, tmp_path):
    first = init_master(run_cli, tmp_path)
    assert first.code == 0, first.err
    secrets = read_secrets(tmp_path)
    assert len(__import__("base64").urlsafe_b64decode(secrets["fernet_key"])) == 32
    before = snapshot(tmp_path)
    again = init_master(run_cli, tmp_path)
    assert again.code == 0, again.err
    assert "Nothing to change" in again.out
    assert snapshot(tmp_path) == before
    # without any cluster option the existing cluster file is used, secrets included
    bare = run_cli("init", "--role", "master", "--root", tmp_path, "--airflow-version", "3.3.2")
    assert bare.code == 0 and "Nothing to change" in bare.out
    assert read_secrets(tmp_path) == secrets


def test_changing_a_cluster_option_keeps_the_secrets(run_cli, tmp_path):
    assert init_master(run_cli, tmp_path).code == 0
    secrets = read_secrets(tmp_path)
    result = run_cli("init", "--role", "master", "--root", tmp_path, "--airflow-version", "3.3.2",
                     "--visibility-timeout", "172800")  # fmt: skip
    assert result.code == 0, result.err
    assert "update" in result.out and "airflow.cfg" in result.out
    assert read_secrets(tmp_path) == secrets
    assert "visibility_timeout = 172800" in (tmp_path / "opt/airflow/airflow.cfg").read_text()


def test_dry_run_shows_a_redacted_diff_and_changes_nothing(run_cli, tmp_path):
    result = init_master(run_cli, tmp_path, "--dry-run")
    assert result.code == 0, result.err
    assert snapshot(tmp_path) == {}
    assert "+++ /opt/airflow/airflow.cfg (planned)" in result.out
    assert "+executor = CeleryExecutor" in result.out
    assert "Dry run: nothing was changed." in result.out
    assert "would run: systemctl daemon-reload" in result.out
    for secret in (NASTY_PASSWORD, NASTY_QUOTED, NASTY_QUOTED.replace("%", "%%")):
        assert secret not in result.out


def test_dry_run_never_prints_generated_secrets(run_cli, tmp_path):
    assert init_master(run_cli, tmp_path).code == 0
    secrets = read_secrets(tmp_path)
    (tmp_path / "opt/airflow/airflow.cfg").unlink()
    result = run_cli("init", "--role", "master", "--root", tmp_path, "--airflow-version", "3.3.2", "--dry-run")
    assert "+fernet_key = ***" in result.out
    assert not [v for k, v in secrets.items() if k != "flower_user" and v in result.out]


def test_an_edited_file_is_kept_unless_forced_and_then_backed_up(run_cli, tmp_path, cluster_file):
    args = worker_args(tmp_path, cluster_file)
    assert run_cli(*args).code == 0
    conf = tmp_path / "etc/airflow-node/conf.d/airflow-node.conf"
    conf.write_text(conf.read_text() + "; my local tweak\n")
    before = snapshot(tmp_path)
    refused = run_cli(*[*args[:-2], "--airflow-node-bin", "/opt/other/airflow-node"])
    assert refused.code == 2
    assert "airflow-node.conf: changed since airflow-node wrote it" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before
    forced = run_cli(*[*args[:-2], "--airflow-node-bin", "/opt/other/airflow-node"], "--force")
    assert forced.code == 0, forced.err
    backup = Path(str(conf) + ".airflow-node-backup")
    assert backup.read_text().endswith("; my local tweak\n")
    assert "my local tweak" not in conf.read_text()


def test_a_file_not_written_by_us_is_not_overwritten(run_cli, tmp_path, cluster_file):
    cfg = tmp_path / "opt/airflow/airflow.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("[core]\nexecutor = LocalExecutor\n")
    before = snapshot(tmp_path)
    result = run_cli(*worker_args(tmp_path, cluster_file))
    assert result.code == 2
    assert "not ours" in result.err
    assert snapshot(tmp_path) == before


def fail_rename(monkeypatch, at_call: int, error: OSError) -> list:
    """Make the at_call-th rename during apply fail, as a full or failing disk would; return the calls."""
    calls = []
    real_replace = os.replace

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == at_call:
            raise error
        return real_replace(src, dst)

    monkeypatch.setattr(apply_module.os, "replace", failing_replace)
    return calls


def test_a_write_failing_half_way_leaves_the_previous_state(run_cli, tmp_path, cluster_file, monkeypatch):
    root = tmp_path / "node"
    assert run_cli(*worker_args(root, cluster_file)).code == 0
    before = snapshot(root)
    calls = fail_rename(monkeypatch, at_call=3, error=OSError(28, "No space left on device"))
    changed = make_cluster(visibility_timeout=7200, sync_interval_minutes=10)
    cluster_file.write_text(dump_cluster(changed))
    result = run_cli(*worker_args(root, cluster_file))
    monkeypatch.undo()
    assert result.code == 1
    assert "No space left on device; nothing was changed" in result.err
    assert len(calls) >= 3  # files had been renamed into place before the failure
    assert snapshot(root) == before


def test_a_fresh_render_failing_half_way_leaves_no_trace(run_cli, tmp_path, cluster_file, monkeypatch):
    root = tmp_path / "node"
    calls = fail_rename(monkeypatch, at_call=4, error=OSError(5, "Input/output error"))
    result = run_cli(*worker_args(root, cluster_file))
    monkeypatch.undo()
    assert len(calls) >= 4  # three files were in place when the fourth rename failed
    assert result.code == 1 and "Traceback" not in result.err
    assert not root.exists()


def test_uninstall_removes_exactly_what_init_installed(run_cli, tmp_path, cluster_file):
    (tmp_path / "etc/cron.d").mkdir(parents=True)
    (tmp_path / "etc/cron.d/other-job").write_text("* * * * * root true\n")
    before = snapshot(tmp_path)
    assert run_cli(*worker_args(tmp_path, cluster_file)).code == 0
    (tmp_path / "opt/airflow/logs/task.log").write_text("a user's data\n")
    result = run_cli("uninstall", "--root", tmp_path)
    assert result.code == 0, result.err
    assert "kept" in result.out and "cluster.toml" in result.out
    left = set(snapshot(tmp_path)) - set(before)
    assert left == {
        "opt", "opt/airflow", "opt/airflow/logs", "opt/airflow/logs/task.log",
        "etc/airflow-node", "etc/airflow-node/cluster.toml",
        # the manifest records the kept cluster file, so a later init knows it wrote it
        "var", "var/lib", "var/lib/airflow-node", "var/lib/airflow-node/manifest.json",
    }  # fmt: skip
    purge = run_cli("init", "--role", "worker", "--root", tmp_path, "--airflow-version", "3.3.2",
                    "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert purge.code == 0, purge.err  # the kept cluster file lets the node be re-created
    assert run_cli("uninstall", "--root", tmp_path, "--purge").code == 0
    assert not (tmp_path / "etc/airflow-node/cluster.toml").exists()


def test_control_commands_are_listed_under_root(run_cli, tmp_path, cluster_file):
    assert run_cli(*worker_args(tmp_path, cluster_file, init_system="systemd")).code == 0
    result = run_cli("restart", "--root", tmp_path)
    assert result.code == 0
    assert "systemctl restart airflow-worker.target" in result.out


def master_with(changes: dict[str, str | None]) -> list[str]:
    """A valid master init command line with some options changed (None leaves the option out)."""
    options = {"--airflow-version": "3.3.2", "--master-host": "m", "--broker-url": "redis://m:6379/0",
               "--db-url": "postgresql://a@m/db", **changes}  # fmt: skip
    return ["init", "--role", "master", *(word for o, v in options.items() if v is not None for word in (o, v))]


BAD_INPUT = [
    (["init", "--role", "scheduler"], "--role"),
    (["init", "--role", "worker", "-c", "0"], "--concurrency"),
    (["init", "--role", "worker", "-c", "-3"], "--concurrency"),
    (master_with({"--broker-url": "amqp://guest@m//"}), "--broker-url"),
    (master_with({"--broker-url": "redis://m:6379/zero"}), "--broker-url"),
    (master_with({"--db-url": "mysql://a@m/db"}), "--db-url"),
    (master_with({"--db-url": "sqlite:////tmp/x.db"}), "--db-url"),
    (master_with({"--result-backend": "postgresql://a@m/db"}), "--result-backend"),
    (master_with({"--airflow-version": "3.1.0", "--result-backend": "db+postgresql+psycopg://a@m/db"}),
     "--result-backend"),
    (master_with({"--master-host": None}), "--master-host"),
    (master_with({"--master-host": "bad host!"}), "--master-host"),
    (master_with({"--airflow-version": "2.6.3"}), "--airflow-version"),
    (master_with({"--airflow-version": "4.0.0"}), "--airflow-version"),
    (master_with({"--airflow-version": "three"}), "--airflow-version"),
    (master_with({"--sync-interval": "0"}), "--sync-interval"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2"], "--from-master"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--broker-url", "redis://m/0"], "--broker-url"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--config", "/nonexistent/cluster.toml"], "--config"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--queues", "a b"], "--queues"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--stop-timeout", "1"], "--stop-timeout"),
    (master_with({"--writable-path": "/"}), "--writable-path"),
    (master_with({"--writable-path": "data"}), "--writable-path"),
    (master_with({"--writable-path": "/data/../etc"}), "--writable-path"),
    (master_with({"--writable-path": "/data dir"}), "--writable-path"),
    # where root's own files are, what airflow already owns, what the sandbox hides anyway
    (master_with({"--writable-path": "/etc/cron.d"}), "--writable-path"),
    (master_with({"--writable-path": "/var/lib"}), "--writable-path"),
    (master_with({"--writable-path": "/var/lib/airflow-node/dags"}), "--writable-path"),
    (master_with({"--writable-path": "/usr/local"}), "--writable-path"),
    (master_with({"--writable-path": "/home/etl"}), "--writable-path"),
    (master_with({"--writable-path": "/tmp/exchange"}), "--writable-path"),
    (master_with({"--writable-path": "/opt"}), "--writable-path"),
    (master_with({"--writable-path": "/opt/airflow/data"}), "--writable-path"),
    (master_with({"--writable-path": "/var/log/airflow-node/out"}), "--writable-path"),
    (master_with({"--writable-path": "/srv/airflow/dags/out"}), "--writable-path"),
    (master_with({"--writable-path": "/data,/data/out"}), "--writable-path"),
    (["init", "--role", "worker", "--airflow-version", "3.2.0"], "--airflow-version"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--venv", "relative/venv"], "--venv"),
    (["init", "--role", "worker", "--venv", "/nonexistent/venv"], "--venv"),
    # hostile input: paths that leave the root, numbers past any sense, URLs two parsers read apart,
    # DAG sources that reach ssh as options or copy the node's own secrets
    (master_with({"--airflow-home": "/../../x"}), "--airflow-home"),
    (master_with({"--airflow-home": "opt/airflow"}), "--airflow-home"),
    (master_with({"--airflow-home": "/tmp"}), "--airflow-home"),
    (master_with({"--airflow-home": "/etc/airflow"}), "--airflow-home"),
    (master_with({"--airflow-home": "/var/lib"}), "--airflow-home"),
    (master_with({"--airflow-version": "3." + "3" * 5000}), "--airflow-version"),
    (master_with({"--broker-url": "redis://:S3cret\uff20RedisPW@m:6379/0"}), "--broker-url"),
    (master_with({"--broker-url": 'redis://:Sec"retQQ@m:6379/0'}), "--broker-url"),
    (master_with({"--broker-url": "redis://m:6379/0?password=TopSecretQ"}), "--broker-url"),
    (master_with({"--db-url": "postgresql://a@m/db?password=TopSecretDB"}), "--db-url"),
    (master_with({"--broker-url": "redis://m:6379/\u00b2"}), "--broker-url"),
    (master_with({"--visibility-timeout": "99999999999999999999"}), "--visibility-timeout"),
    (master_with({"--web-port": "5555"}), "--flower-port"),
    (master_with({"--web-port": "70000"}), "--web-port"),
    (master_with({"--broker-url": "redis://:S3cretRedisPW#x@m:6379/0"}), "--broker-url"),
    (master_with({"--broker-url": "redis://[::1:6379/0"}), "--broker-url"),
    (master_with({"--db-url": "postgresql://a:p@ss@m/db"}), "--db-url"),
    (master_with({"--db-url": "postgresql://a:p/ss@m/db"}), "--db-url"),
    (master_with({"--dags-source": "-oProxyCommand=id@m:/dags"}), "--dags-source"),
    (master_with({"--dags-source": "m:/opt/airflow"}), "--dags-source"),
    (master_with({"--dags-source": "/"}), "--dags-source"),
    (master_with({"--dags-source": "/var/lib/airflow-node/dags/releases"}), "--dags-source"),
    (master_with({"--dags-source": "git+ext::sh -c id"}), "--dags-source"),
    (master_with({"--dags-source": "git+https://example.invalid/d.git#--upload-pack=id"}), "--dags-source"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "-c", "99999999999999999999"], "--concurrency"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--from-master", "-oProxyCommand=id@m"],
     "--from-master"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--from-master", "m:22x"], "--from-master"),
    (["init", "--role", "worker", "--airflow-version", "3.3.2", "--from-master", "m:\u00b2"], "--from-master"),
]  # fmt: skip


@pytest.mark.parametrize("args,option", BAD_INPUT, ids=[f"{n}-{a[2]}-{o}" for n, (a, o) in enumerate(BAD_INPUT)])
def test_bad_input_is_one_line_naming_the_option_exit_2_nothing_written(run_cli, tmp_path, cluster_file, args, option):
    root = tmp_path / "node"
    if args[2] == "worker" and "--config" not in args and option != "--from-master":
        args = [*args, "--config", cluster_file]
    result = run_cli(*args, "--root", root, "--airflow-node-bin", "/usr/local/bin/airflow-node")
    assert result.code == 2, (result.out, result.err)
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert option in result.err
    assert "Traceback" not in result.err
    assert not any(secret in result.err for secret in ("S3cret", 'Sec"ret', "TopSecret"))
    assert not root.exists()


@pytest.mark.parametrize(
    "corruption,key",
    [
        (lambda text: text.replace("[secrets]", "[secrets"), "not valid TOML"),
        (lambda text: text.replace('url = "redis', 'url = "amqp'), "broker.url"),
        (lambda text: text.replace("web_port = 8080", 'web_port = "8080"'), "master.web_port"),
        (lambda text: text.replace("fernet_key = ", 'fernet_key = "x"\n#'), "secrets.fernet_key"),
        (lambda text: text + "\n[extra]\nkey = 1\n", "unknown key extra.key"),
        (lambda text: text.replace('jwt_secret = "test-jwt-secret-0123456789abcdefghij"\n', ""), "secrets.jwt_secret"),
    ],
)
def test_corrupt_cluster_file_is_refused_naming_the_key(run_cli, tmp_path, cluster_file, corruption, key):
    cluster_file.write_text(corruption(cluster_file.read_text()))
    root = tmp_path / "node"
    result = run_cli(*worker_args(root, cluster_file))
    assert result.code == 2
    assert key in result.err and str(cluster_file) in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not root.exists()


def test_unwritable_root_is_refused(run_cli, tmp_path, cluster_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli(*worker_args(blocker / "node", cluster_file))
    assert result.code == 2
    assert "--root" in result.err
    assert blocker.read_text() == "x"


def test_role_change_is_refused(run_cli, tmp_path, cluster_file):
    assert run_cli(*worker_args(tmp_path, cluster_file)).code == 0
    before = snapshot(tmp_path)
    result = run_cli("init", "--role", "master", "--root", tmp_path, "--airflow-version", "3.3.2")
    assert result.code == 2 and "already a worker" in result.err
    assert snapshot(tmp_path) == before


def test_from_master_unreachable_is_one_line_exit_1_nothing_written(run_cli, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens there
    monkeypatch.setenv("AIRFLOW_NODE_SSH_OPTS", "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    root = tmp_path / "node"
    result = run_cli("init", "--role", "worker", "--root", root, "--airflow-version", "3.3.2",
                     "--from-master", f"airflow@127.0.0.1:{port}")  # fmt: skip
    assert result.code == 1
    assert result.err.startswith("airflow-node: --from-master: reading airflow@127.0.0.1:/etc/airflow-node/")
    assert "Connection refused" in result.err and len(result.err.strip().splitlines()) == 1
    assert not root.exists()


def test_the_master_user_gets_a_shell_for_the_workers_ssh_and_a_worker_user_none(run_cli, tmp_path, cluster_file):
    master = init_master(run_cli, tmp_path / "master", "--dry-run")
    worker = run_cli(*worker_args(tmp_path / "worker", cluster_file), "--dry-run")
    assert "--shell /bin/sh airflow" in master.out
    assert "--shell /usr/sbin/nologin airflow" in worker.out


def test_install_airflow_option_is_listed_under_dry_run_and_checked(run_cli, tmp_path):
    listed = init_master(run_cli, tmp_path / "a", "--install-airflow", "3.3.2", "--dry-run")
    assert listed.code == 0, listed.err
    assert "would run: airflow-node install-airflow --version 3.3.2 --venv /opt/airflow-venv" in listed.out
    unknown = init_master(run_cli, tmp_path / "b", "--install-airflow", "3.3.9", "--dry-run")
    assert unknown.code == 2 and "--install-airflow: no lock file for Airflow 3.3.9" in unknown.err
