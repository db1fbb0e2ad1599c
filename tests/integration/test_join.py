"""Joining a worker with a token, against a real sshd playing the master's.

The master is rendered under a temp root with its airflow user's home there; sshd reads that home's
authorized_keys, so every key airflow-node adds is enforced by sshd itself (restrict, expiry-time,
the forced ssh-gate). The worker joins, syncs DAGs and the cluster file through the gate, and the
tests then try, with the worker's own key, what a compromised worker would.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sync_fixtures import STAND_IN, free_port, wait_for

from airflow_nodes.cluster import dump_cluster
from airflow_nodes.join import JOIN_REQUEST_WAIT, parse_token, upgrade_marker
from airflow_nodes.node import UPGRADE_MARKER
from airflow_nodes.sshkeys import KEYS_LOCK_WAIT, private_key_file
from airflow_nodes.sync import ReleaseAnswer, parse_release_answer

from conftest import make_cluster

pytestmark = pytest.mark.integration
TOOL_BIN = Path(sys.executable).parent  # airflow-node as installed: the master's forced command runs it
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class MasterSshd:
    """sshd for a master rendered under `root`: its host key is the one the master's files name."""

    def __init__(self, root: Path, home: Path, directory: Path):
        directory.mkdir(parents=True)
        self.port = free_port()
        self.host_key = directory / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key], check=True)
        (root / "etc/ssh").mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{self.host_key}.pub", root / "etc/ssh/ssh_host_ed25519_key.pub")
        self.log = directory / "sshd.log"
        config = directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {directory}/sshd.pid\n"
            f"AuthorizedKeysFile {home}/.ssh/authorized_keys\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stderr=open(self.log, "wb"))  # noqa: SIM115
        wait_for(lambda: "Server listening" in self.log.read_text(), 10, "sshd listening")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_master(tmp_path: Path, run_cli, **cluster_values) -> tuple[Path, Path, MasterSshd]:
    """A master under tmp_path/master, its airflow user's home in tmp_path/home, sshd in front of it."""
    root, home = tmp_path / "master", tmp_path / "home"  # AIRFLOW_HOME, the airflow user's home
    dags = root / "srv/airflow/dags"
    dags.mkdir(parents=True)
    (dags / "hello.py").write_text("HELLO = 1\n")
    home_on_master = root / str(home).lstrip("/")  # the node's files are under --root: so is the home
    sshd = MasterSshd(root, home_on_master, tmp_path / "sshd")
    (root / "etc/localtime").symlink_to("/etc/localtime")  # this sshd's zone: the host's
    source = f"ssh://root@127.0.0.1:{sshd.port}/srv/airflow/dags/"
    cluster = make_cluster("3.3", master_host="127.0.0.1", airflow_user="root", airflow_home=str(home),
                           dags_source=source, **cluster_values)  # fmt: skip
    (root / "etc/airflow-node").mkdir(parents=True)
    (root / "etc/airflow-node/cluster.toml").write_text(dump_cluster(cluster))
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--init-system",
                     "systemd", "--airflow-bin", STAND_IN, "--airflow-node-bin", TOOL_BIN / "airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    return root, home_on_master, sshd


@pytest.fixture
def master(tmp_path, run_cli):
    started = start_master(tmp_path, run_cli)
    yield started
    started[2].stop()


def mint(run_cli, root: Path, sshd: MasterSshd) -> str:
    result = run_cli("join-token", "--root", root, "--ssh-port", sshd.port)
    assert result.code == 0, result.err
    return re.search(r"AIRFLOW_NODE_JOIN_TOKEN=(\S+) airflow-node init --role worker", result.out).group(1)


def join(run_cli, tmp_path: Path, token: str, name: str = "worker1", root: Path | None = None):
    return run_cli("init", "--role", "worker", "--root", root or tmp_path / name, "--airflow-version", "3.3.2",
                   "--init-system", "supervisor", "--airflow-bin", STAND_IN, "--node-name", name,
                   "--advertise-address", "127.0.0.11", "--airflow-node-bin", TOOL_BIN / "airflow-node",
                   "--join", token)  # fmt: skip


def test_a_worker_joins_with_one_token_and_syncs_through_the_gate(master, tmp_path, run_cli):
    root, home, sshd = master
    token = mint(run_cli, root, sshd)
    result = join(run_cli, tmp_path, token)
    assert result.code == 0, result.err
    worker = tmp_path / "worker1"
    assert (worker / "etc/airflow-node/cluster.toml").read_bytes() == (
        root / "etc/airflow-node/cluster.toml"
    ).read_bytes()
    key = worker / "etc/airflow-node/ssh/id_ed25519"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert "127.0.0.1" in (worker / "etc/airflow-node/ssh/known_hosts").read_text()
    assert "AIRFLOW_NODE_ADVERTISE_ADDRESS='127.0.0.11'" in (worker / "etc/airflow-node/airflow.env").read_text()
    listed = run_cli("join-token", "--root", root, "--list").out
    assert "worker worker1  127.0.0.11" in listed

    assert run_cli("sync", "--root", root).code == 0  # the master publishes its first release
    synced = run_cli("sync", "--root", worker)  # the release by rsync through rrsync -ro, the cluster file by `cat`
    assert synced.code == 0, synced.err
    assert "dags published" in synced.out, synced.out
    dags_folder = worker / str(tmp_path / "home").lstrip("/") / "dags"  # AIRFLOW_HOME/dags, under the root
    assert (dags_folder / "hello.py").read_text() == "HELLO = 1\n"
    assert "config unchanged" in synced.out

    left = run_cli("uninstall", "--root", worker)
    assert left.code == 0, left.err
    assert "worker1" not in run_cli("join-token", "--root", root, "--list").out or "not run under --root" in left.out


def ssh_as_worker(worker: Path, sshd: MasterSshd, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return ssh_with(worker / "etc/airflow-node/ssh/id_ed25519", worker, sshd, *args, timeout=timeout)


def ssh_with(key: Path, worker: Path, sshd: MasterSshd, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    known = worker / "etc/airflow-node/ssh/known_hosts"
    argv = ["ssh", "-i", key, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}", "-o",
            "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(sshd.port), *args]  # fmt: skip
    return subprocess.run(
        list(map(str, argv)), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_an_enrolled_worker_key_can_only_read_dags_and_the_cluster_file(master, tmp_path, run_cli):
    root, home, sshd = master
    assert join(run_cli, tmp_path, mint(run_cli, root, sshd)).code == 0
    worker = tmp_path / "worker1"
    marker = tmp_path / "pwned"
    cat = ssh_as_worker(worker, sshd, "root@127.0.0.1", "cat", "/etc/airflow-node/cluster.toml")
    assert cat.returncode == 0 and "[secrets]" in cat.stdout  # what the key is for

    terminal = ssh_as_worker(worker, sshd, "-tt", "root@127.0.0.1")
    assert terminal.returncode != 0 and "PTY allocation request failed" in terminal.stderr  # restrict: no pty
    shell = ssh_as_worker(worker, sshd, "root@127.0.0.1")
    command = ssh_as_worker(worker, sshd, "root@127.0.0.1", f"touch {marker}")
    sneaky = ssh_as_worker(worker, sshd, "root@127.0.0.1", f"cat /etc/airflow-node/cluster.toml; touch {marker}")
    for refused in (shell, command, sneaky):
        assert refused.returncode != 0 and "may not run" in refused.stderr, refused
    assert not marker.exists()

    forward = ssh_as_worker(worker, sshd, "-W", f"127.0.0.1:{sshd.port}", "root@127.0.0.1")
    assert forward.returncode != 0 and "prohibited" in forward.stderr, forward.stderr

    upload = tmp_path / "evil.py"
    upload.write_text("import os\n")
    key = worker / "etc/airflow-node/ssh/id_ed25519"
    known = worker / "etc/airflow-node/ssh/known_hosts"
    rsh = f"ssh -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known} -o BatchMode=yes -p {sshd.port}"
    write = subprocess.run(["rsync", "-e", rsh, str(upload), "root@127.0.0.1:/srv/airflow/dags/"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert write.returncode != 0 and not (root / "srv/airflow/dags/evil.py").exists(), write.stderr
    other = subprocess.run(["rsync", "-e", rsh, "root@127.0.0.1:/etc/", str(tmp_path / "stolen")],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert other.returncode != 0 and not (tmp_path / "stolen").exists(), other.stderr


def test_expired_revoked_and_forged_tokens_are_refused_with_nothing_written(master, tmp_path, run_cli):
    root, home, sshd = master
    keys = home / ".ssh/authorized_keys"

    expired = mint(run_cli, root, sshd)
    keys.write_text(re.sub(r'expiry-time="\d{14}"', 'expiry-time="20200101000000"', keys.read_text()))
    result = join(run_cli, tmp_path, expired)
    assert result.code == 2 and "refused the token" in result.err, result.err
    assert not (tmp_path / "worker1").exists()

    revoked = mint(run_cli, root, sshd)
    token_id = re.findall(r"^token (\S+)  valid", run_cli("join-token", "--root", root, "--list").out, re.M)[-1]
    assert run_cli("join-token", "--root", root, "--revoke", token_id).code == 0
    result = join(run_cli, tmp_path, revoked)
    assert result.code == 2 and "refused the token" in result.err, result.err
    assert not (tmp_path / "worker1").exists()

    for bad in ("afn1-nonsense", revoked[:-8], "K10deadbeef::server:secret"):
        result = join(run_cli, tmp_path, bad)
        assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and bad not in result.err

    # a master with another host key: the token names a different one; nothing may be sent to it
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other_key], check=True)
    shutil.copy(f"{other_key}.pub", root / "etc/ssh/ssh_host_ed25519_key.pub")
    forged = mint(run_cli, root, sshd)
    before = keys.read_text()
    log_size = sshd.log.stat().st_size
    result = join(run_cli, tmp_path, forged)
    assert result.code == 2 and "nothing was sent" in result.err, result.err
    assert not (tmp_path / "worker1").exists() and keys.read_text() == before
    time.sleep(0.2)
    assert "publickey" not in sshd.log.read_bytes()[log_size:].decode(errors="replace")  # no key was offered


def test_a_dry_run_join_checks_the_token_and_changes_nothing(master, tmp_path, run_cli):
    root, home, sshd = master
    token = mint(run_cli, root, sshd)
    before = (home / ".ssh/authorized_keys").read_text()
    result = run_cli("init", "--role", "worker", "--root", tmp_path / "w", "--airflow-version", "3.3.2",
                     "--join", token, "--dry-run")  # fmt: skip
    assert result.code == 0 and "is valid" in result.out and "nothing was sent" in result.out
    assert (home / ".ssh/authorized_keys").read_text() == before and not (tmp_path / "w").exists()


def test_the_token_can_come_from_the_environment_or_a_file(master, tmp_path, run_cli, monkeypatch):
    root, home, sshd = master
    token_file = tmp_path / "token"
    token_file.write_text(mint(run_cli, root, sshd) + "\n")
    result = run_cli("init", "--role", "worker", "--root", tmp_path / "w", "--airflow-version", "3.3.2",
                     "--join-file", token_file, "--dry-run")  # fmt: skip
    assert result.code == 0 and "is valid" in result.out
    monkeypatch.setenv("AIRFLOW_NODE_JOIN_TOKEN", token_file.read_text().strip())
    result = run_cli("init", "--role", "worker", "--root", tmp_path / "w", "--airflow-version", "3.3.2", "--dry-run")
    assert result.code == 0 and "is valid" in result.out
    assert os.environ["AIRFLOW_NODE_JOIN_TOKEN"] not in result.out + result.err


# -- what a review found: sshd's time zone, squatting, bounds, pinned worker keys ------------------


@pytest.fixture
def tz(monkeypatch):
    """Set this process's TZ (not sshd's, started before)."""

    def set_tz(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield set_tz
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("zone", ["Etc/GMT+12", "Pacific/Kiritimati"])
def test_a_token_minted_under_a_far_tz_lives_its_ttl_as_sshd_reads_it(master, tmp_path, run_cli, tz, zone):
    """sshd reads expiry-time in the system's zone. Read in ours, a stamp from UTC-12 was dead on
    arrival, and one from UTC+14 lived 14 hours past its --ttl (the unit tests read it as sshd does)."""
    root, home, sshd = master
    tz(zone)
    result = run_cli("join-token", "--root", root, "--ssh-port", sshd.port, "--ttl", "60")
    assert result.code == 0, result.err
    token = re.search(r"AIRFLOW_NODE_JOIN_TOKEN=(\S+) ", result.out)[1]
    expires = parse_token(token).expires
    assert expires - time.time() <= 60
    listed = run_cli("join-token", "--root", root, "--list").out
    assert f"valid until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(expires))}" in listed, listed
    joined = join(run_cli, tmp_path, token)
    assert joined.code == 0, joined.err


def test_a_name_enrolled_already_is_refused_and_the_worker_keeps_its_key(master, tmp_path, run_cli):
    root, home, sshd = master
    token = mint(run_cli, root, sshd)
    assert join(run_cli, tmp_path, token).code == 0
    before = (home / ".ssh/authorized_keys").read_text()
    impostor = join(run_cli, tmp_path, token, "worker1", root=tmp_path / "impostor")
    assert impostor.code == 2 and len(impostor.err.strip().splitlines()) == 1, impostor.err
    assert "worker1 is enrolled already" in impostor.err and "--revoke worker1" in impostor.err
    assert not (tmp_path / "impostor").exists() and (home / ".ssh/authorized_keys").read_text() == before
    cat = ssh_as_worker(tmp_path / "worker1", sshd, "root@127.0.0.1", "cat", "/etc/airflow-node/cluster.toml")
    assert cat.returncode == 0 and "[secrets]" in cat.stdout


def test_a_worker_key_works_only_from_the_address_it_enrolled_from(master, tmp_path, run_cli):
    root, home, sshd = master
    assert join(run_cli, tmp_path, mint(run_cli, root, sshd)).code == 0
    line = next(line for line in (home / ".ssh/authorized_keys").read_text().splitlines() if "worker1@" in line)
    assert line.startswith('restrict,from="127.0.0.1",command="') and "expiry-time" not in line
    worker = tmp_path / "worker1"
    cat = ["root@127.0.0.1", "cat", "/etc/airflow-node/cluster.toml"]
    assert ssh_as_worker(worker, sshd, *cat).returncode == 0
    elsewhere = ssh_as_worker(worker, sshd, "-b", "127.0.0.2", *cat)  # the same key, another address
    assert elsewhere.returncode == 255 and "Permission denied" in elsewhere.stderr, elsewhere.stderr


def test_the_gate_gives_up_on_a_join_request_that_never_ends(master, tmp_path, run_cli):
    root, home, sshd = master
    token_key = tmp_path / "token_key"
    token_key.write_bytes(private_key_file(parse_token(mint(run_cli, root, sshd)).seed))
    token_key.chmod(0o600)
    (tmp_path / "worker1/etc/airflow-node/ssh").mkdir(parents=True)
    shutil.copy(root / "etc/ssh/ssh_host_ed25519_key.pub", tmp_path / "host_key.pub")
    known = tmp_path / "worker1/etc/airflow-node/ssh/known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} " + (tmp_path / "host_key.pub").read_text())
    before = (home / ".ssh/authorized_keys").read_text()
    argv = ["ssh", "-i", token_key, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}", "-o",
            "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", sshd.port, "root@127.0.0.1", "join"]  # fmt: skip
    client = subprocess.Popen(list(map(str, argv)), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # stdin stays open: a client that sends nothing and never ends
        assert client.wait(timeout=JOIN_REQUEST_WAIT + 15) == 2
    finally:
        client.kill()
        client.stdin.close()
    assert f"no complete join request within {JOIN_REQUEST_WAIT} seconds" in client.stderr.read().decode()
    assert (home / ".ssh/authorized_keys").read_text() == before


def test_join_token_gives_up_on_a_held_keys_lock_and_names_it(master, tmp_path, run_cli):
    root, home, sshd = master
    mint(run_cli, root, sshd)
    keys = home / ".ssh/authorized_keys"
    before = keys.read_text()
    lock = home / ".ssh/.airflow-node-keys.lock"
    with open(lock, "rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the airflow account may, for ever
        result = subprocess.run([TOOL_BIN / "airflow-node", "join-token", "--root", root, "--ssh-port", str(sshd.port)],
                                capture_output=True, text=True, timeout=KEYS_LOCK_WAIT + 20)  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(lock) in result.stderr and "AIRFLOW_NODE_JOIN_TOKEN" not in result.stdout + result.stderr
    assert keys.read_text() == before


def test_the_gate_says_while_its_master_upgrades_the_cluster(master, tmp_path, run_cli):
    """The other masters learn of an upgrade from the gate's `release` answer (their followers ask it)."""
    root, home, sshd = master
    assert join(run_cli, tmp_path, mint(run_cli, root, sshd)).code == 0
    worker = tmp_path / "worker1"

    def release() -> ReleaseAnswer:
        answer = ssh_as_worker(worker, sshd, "root@127.0.0.1", "release")
        assert answer.returncode == 0, answer.stderr
        return parse_release_answer(answer.stdout.encode(), "the gate")

    assert release().upgrading == ""
    marker = root / UPGRADE_MARKER.lstrip("/")
    marker.write_bytes(upgrade_marker("3.3.3"))  # as this process's upgrade would
    assert release().upgrading == "3.3.3"
    pid, start = marker.read_text().split()[1:]
    marker.write_text(f"3.3.3 {pid} {int(start) + 1}\n")  # another process of that pid: the upgrade died
    assert release().upgrading == ""
    marker.unlink()
    assert release().upgrading == ""
