"""Benchmark `airflow-node sync` against plain `rsync -a` on a tree of 10,000 small DAG files.

Prints, for the first sync, a no-change sync and a one-file change: our time, plain rsync's time on
the same tree in the same run, their ratio, and what the new release wrote (new inodes and bytes).
Targets (the sync issue): one-file change within 2x of rsync; no-change under 1 s; bytes ~ the change.

    python benchmarks/bench_sync.py [--files 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from airflow_nodes.cli import main as cli_main
from airflow_nodes.cluster import ClusterConfig, ClusterSecrets, dump_cluster
from airflow_nodes.sync import SyncRequest, sync
from airflow_nodes.target import Target


def make_tree(source: Path, files: int) -> None:
    for index in range(files):
        directory = source / f"team{index % 100}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"dag_{index}.py").write_text(f"from airflow import DAG\n\nDAG_ID = 'dag_{index}'\n" * 4)


def render_worker(workdir: Path, source: str) -> Path:
    root = workdir / "root"
    cluster = ClusterConfig(
        airflow_version="3.3", master_host="10.0.0.1", broker_url="redis://10.0.0.1:6379/0",
        db_url="postgresql://a:b@10.0.0.1/airflow", result_backend="db+postgresql://a:b@10.0.0.1/airflow",
        dags_source=source, secrets=ClusterSecrets.generate(), airflow_user="root",
    )  # fmt: skip
    cluster_file = workdir / "cluster.toml"
    cluster_file.write_text(dump_cluster(cluster))
    args = ["init", "--role", "worker", "--root", str(root), "--airflow-version", "3.3.2", "--config",
            str(cluster_file), "--init-system", "supervisor", "--airflow-bin", "/usr/bin/true",
            "--airflow-node-bin", "/usr/local/bin/airflow-node", "--node-name", "bench"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(args) == 0
    return root


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def plain_rsync(source: Path, target: Path) -> None:
    subprocess.run(["rsync", "-a", "--delete", f"{source}/", f"{target}/"], check=True)


def new_inodes(release: Path) -> tuple[int, int]:
    """(inodes only this release holds, their bytes): files with one link are not shared."""
    count = size = 0
    for dirpath, _, filenames in os.walk(release):
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if info.st_nlink == 1:
                count += 1
                size += info.st_size
    return count, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        workdir = Path(tmp)
        root = render_worker(workdir, "/srv/dags")
        source = root / "srv/dags"
        make_tree(source, args.files)
        plain = workdir / "plain"
        request = SyncRequest(target=Target.at(root), dags_only=True)
        dags = root / "opt/airflow/dags"
        rows = []
        with contextlib.redirect_stderr(io.StringIO()):  # the one-line run log
            ours, _ = timed(lambda: sync(request))
            theirs, _ = timed(lambda: plain_rsync(source, plain))
            rows.append(("first sync", ours, theirs, new_inodes(Path(os.path.realpath(dags)))))
            ours, result = timed(lambda: sync(request))
            assert result.status == "unchanged"
            theirs, _ = timed(lambda: plain_rsync(source, plain))
            rows.append(("no-change sync", ours, theirs, (0, 0)))
            changed = source / "team7/dag_7.py"
            changed.write_text(changed.read_text() + "# one more line\n")
            ours, result = timed(lambda: sync(request))
            assert result.status == "published" and result.dags.changed_files == 1
            changed.write_text(changed.read_text() + "# and another\n")
            theirs, _ = timed(lambda: plain_rsync(source, plain))
            rows.append(("one-file change", ours, theirs, new_inodes(Path(os.path.realpath(dags)))))
    print(f"{args.files} DAG files; times in seconds")
    print(f"{'case':<16} {'sync':>7} {'rsync -a':>9} {'ratio':>6}  new release: inodes, bytes")
    for name, ours, theirs, (inodes, size) in rows:
        print(f"{name:<16} {ours:7.3f} {theirs:9.3f} {ours / theirs:6.2f}  {inodes:>6} {size:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
