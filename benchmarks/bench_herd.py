"""Benchmark: N workers that joined through the gate start `airflow-node sync` in the same second
against one real sshd with its default settings (MaxStartups 10:30:100, on loopback).

Prints, for each N: the syncs that failed, the seconds until every worker holds the master's new
release, and the CPU seconds the master's sshd (its connections, the gate, rsync) spent. Goal (the
delivery issue): no failure at 100. Run as root (sshd, and the workers log in as root here).

    python benchmarks/bench_herd.py [--workers 10 50 100] [--files 1000] [--splay 0] [--dags-only]

The cron line's sync is `--splay 60` (DAGs, then the cluster file); the follower's, when the broker's
doorbell rings, is `--splay 10 --dags-only`. Each round the master publishes a new release first.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from airflow_nodes.cli import main as cli_main
from airflow_nodes.cluster import ClusterConfig, ClusterSecrets, dump_cluster

TOOL = Path(sys.executable).parent / "airflow-node"  # the gate's forced command runs it
STAND_IN = Path(__file__).resolve().parent.parent / "tests/fixtures/stand-in-airflow"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PER_TOKEN = 25  # workers one join token may enroll


def cli(*args: object) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main([str(arg) for arg in args])
    assert code == 0, (args, out.getvalue())
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sshd(root: Path, home: Path, directory: Path) -> tuple[subprocess.Popen, int]:
    """A stock sshd (no MaxStartups or penalty settings of ours) serving the master under root."""
    port = free_port()
    host_key = directory / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
    (root / "etc/ssh").mkdir(parents=True, exist_ok=True)
    shutil.copy(f"{host_key}.pub", root / "etc/ssh/ssh_host_ed25519_key.pub")
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {directory}/sshd.pid\n"
        f"AuthorizedKeysFile {home}/.ssh/authorized_keys\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stderr=open(directory / "sshd.log", "wb"))  # noqa: SIM115
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.05)
    raise RuntimeError("sshd did not start")


def children_cpu(pid: int) -> float:
    """CPU seconds of the children a process has reaped (sshd: its connections and what they ran)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime


def make_master(work: Path, files: int) -> tuple[Path, subprocess.Popen, int]:
    root, home = work / "master", work / "home"
    dags = root / "srv/airflow/dags"
    for index in range(files):
        directory = dags / f"team{index % 20}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"dag_{index}.py").write_text(f"DAG_ID = 'dag_{index}'\n")
    sshd, port = start_sshd(root, root / str(home).lstrip("/"), work)
    (root / "etc/localtime").symlink_to("/etc/localtime")
    cluster = ClusterConfig(
        airflow_version="3.3", master_host="127.0.0.1", broker_url="redis://127.0.0.1:1/0",
        db_url="postgresql://a:b@127.0.0.1:1/airflow", result_backend="db+postgresql://a:b@127.0.0.1:1/airflow",
        dags_source=f"ssh://root@127.0.0.1:{port}/srv/airflow/dags/", secrets=ClusterSecrets.generate(),
        airflow_user="root", airflow_home=str(home), sync_interval_minutes=5,
    )  # fmt: skip
    (root / "etc/airflow-node").mkdir(parents=True)
    (root / "etc/airflow-node/cluster.toml").write_text(dump_cluster(cluster))
    cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--init-system", "systemd",
        "--airflow-bin", STAND_IN, "--airflow-node-bin", TOOL)  # fmt: skip
    return root, sshd, port


def join_workers(work: Path, master: Path, port: int, count: int) -> list[Path]:
    roots: list[Path] = []
    token = ""
    for index in range(count):
        if index % PER_TOKEN == 0:
            minted = cli("join-token", "--root", master, "--ssh-port", port)
            token = re.search(r"AIRFLOW_NODE_JOIN_TOKEN=(\S+) ", minted).group(1)
        root = work / f"worker{index}"
        cli("init", "--role", "worker", "--root", root, "--airflow-version", "3.3.2", "--init-system", "supervisor",
            "--airflow-bin", STAND_IN, "--node-name", f"worker{index}", "--advertise-address", "127.0.0.2",
            "--airflow-node-bin", TOOL, "--join", token)  # fmt: skip
        roots.append(root)
    return roots


def holds(root: Path, home: Path, round_text: str) -> bool:
    """Whether a worker's published DAGs hold this round's file."""
    marker = root / str(home).lstrip("/") / "dags" / "ROUND.py"
    return marker.exists() and marker.read_text() == round_text


def herd(roots: list[Path], splay: int, dags_only: bool, sshd: subprocess.Popen) -> tuple[int, float, float, list[str]]:
    """Start a sync on every worker at once (the master's release: `release`, then rsync; then, unless
    dags_only, the cluster file: three connections); return (failed, seconds until all are done, master
    CPU seconds, a few failure lines)."""
    cpu = children_cpu(sshd.pid)
    started = time.monotonic()
    argv = [str(TOOL), "sync", "--quiet", "--splay", str(splay), *(["--dags-only"] if dags_only else [])]
    syncs = [subprocess.Popen([*argv, "--root", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for root in roots]  # fmt: skip
    errors = [process.communicate()[1].strip() for process in syncs]
    seconds = time.monotonic() - started
    failed = [error for process, error in zip(syncs, errors, strict=True) if process.returncode != 0]
    return len(failed), seconds, children_cpu(sshd.pid) - cpu, failed[:3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--splay", type=int, default=0, help="the syncs' --splay (the cron line uses 60)")
    parser.add_argument("--dags-only", action="store_true", help="DAGs only, as the follower syncs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: sshd, and the workers log in as root here")
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-herd-") as tmp:
        work = Path(tmp)
        master, sshd, port = make_master(work, args.files)
        try:
            roots = join_workers(work, master, port, max(args.workers))
            for index, count in enumerate(sorted(args.workers)):
                # a new release on the master each round: every worker has something to fetch
                round_text = f"ROUND = {index}\n"
                (master / "srv/airflow/dags/ROUND.py").write_text(round_text)
                cli("sync", "--root", master)
                failed, seconds, cpu, samples = herd(roots[:count], args.splay, args.dags_only, sshd)
                behind = sum(not holds(root, work / "home", round_text) for root in roots[:count])
                rows.append((count, failed, seconds, cpu, behind, samples))
        finally:
            sshd.terminate()
            sshd.wait(timeout=10)
    how = f"--splay {args.splay}{' --dags-only' if args.dags_only else ''}"
    print(f"{args.files} DAG files, one stock sshd on loopback, syncs through the gate, {how}")
    print(f"{'workers':>7} {'failed':>6} {'behind':>6} {'all done s':>10} {'master CPU s':>12}")
    for count, failed, seconds, cpu, behind, samples in rows:
        print(f"{count:>7} {failed:>6} {behind:>6} {seconds:>10.1f} {cpu:>12.1f}")
        for sample in samples:
            print(f"        {sample[-160:]}")
    return 0 if all(row[1] == row[4] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
