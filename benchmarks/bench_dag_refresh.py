"""What a 30 s DAG refresh interval costs: Airflow's own look for new DAG files, on 10,000 files.

Each refresh, the dag-processor (3.x; the scheduler's file processor on 2.x) lists the DAG folder with
`airflow.utils.file.list_py_file_paths` in safe mode, which opens every .py file to look for "airflow"
and "dag". airflow-node sets that interval to 30 s instead of Airflow's 300 s so a synced DAG shows
within a minute. This prints one listing's time (median of --rounds) through the published symlink,
as a share of the 30 s interval (the share of one core the shorter interval costs) and against a bare
os.walk of the same tree.

    python benchmarks/bench_dag_refresh.py --venv /opt/airflow-venv [--files 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from airflow_nodes import defaults

LISTING = """
import inspect, json, sys, time
from airflow.utils.file import list_py_file_paths
# 2.x adds Airflow's example DAGs unless told not to (load_examples = False in our airflow.cfg)
options = {"include_examples": False} if "include_examples" in inspect.signature(list_py_file_paths).parameters else {}
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    found = list_py_file_paths(sys.argv[1], safe_mode=True, **options)
    times.append(time.perf_counter() - started)
print(json.dumps({"files": len(found), "times": times}))
"""


def make_tree(release: Path, files: int) -> None:
    for index in range(files):
        directory = release / f"team{index % 100}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"dag_{index}.py").write_text(
            f"from airflow.sdk import DAG\n\nwith DAG('dag_{index}', schedule=None):\n    pass\n" + "# padding\n" * 40
        )


def bare_walk(folder: Path, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        count = sum(len(names) for _, _, names in os.walk(folder, followlinks=True))
        times.append(time.perf_counter() - started)
        assert count
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, required=True, help="an Airflow venv (install-airflow)")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        release, folder = Path(work, "releases", "r1"), Path(work, "dags")
        make_tree(release, args.files)
        folder.symlink_to(release)  # as a node's dags_folder: a link to the published release
        env = {**os.environ, "AIRFLOW_HOME": str(Path(work, "home"))}
        result = subprocess.run(
            [args.venv / "bin" / "python", "-c", LISTING, f"{folder}/", str(args.rounds)],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        listed = json.loads(result.stdout.strip().splitlines()[-1])
        assert listed["files"] == args.files, listed["files"]
        listing = statistics.median(listed["times"])
        walk = bare_walk(folder, args.rounds)
    interval = defaults.DAG_REFRESH_INTERVAL
    print(f"list_py_file_paths, {args.files} files, safe mode: {listing:.3f}s (median of {args.rounds})")
    print(f"  share of one core at a {interval} s interval: {listing / interval:.2%} (at Airflow's 300 s: "
          f"{listing / 300:.2%})")  # fmt: skip
    print(f"  against a bare os.walk of the tree ({walk:.3f}s): {listing / walk:.1f}x")


if __name__ == "__main__":
    main()
