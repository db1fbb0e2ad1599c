"""Start-up cost of `airflow-node init`, as whole processes, against a bare interpreter in the same run.

Target: init adds less than 150 ms over `python -c pass` (Airflow's own CLI needs ~2.7 s just to
print its version). Prints medians and the ratio; exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from airflow_nodes.cluster import dump_cluster  # noqa: E402

from conftest import make_cluster  # noqa: E402

TARGET_MS = 150.0


def median_ms(argv: list[str], runs: int, before=None) -> float:
    times = []
    for _ in range(runs):
        if before:
            before()
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    # pip compiles bytecode for everything it installs; uv and an editable install do not, and with
    # PYTHONDONTWRITEBYTECODE (set on these machines) every start would recompile our modules and
    # jinja2 and click (about 80 ms). Measure the installed state: ours and our dependencies compiled.
    import click
    import jinja2

    import airflow_nodes

    for package in (airflow_nodes, click, jinja2):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(package.__file__).parent)], check=True)
    script = Path(sys.executable).parent / "airflow-node"
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Path(tmp) / "cluster.toml"
        cluster.write_text(dump_cluster(make_cluster()))
        root = Path(tmp) / "root"
        init = [str(script), "init", "--role", "worker", "--config", str(cluster), "--airflow-version", "3.3.2",
                "--init-system", "systemd", "--airflow-node-bin", "/usr/local/bin/airflow-node",
                "--root", str(root)]  # fmt: skip
        bare = median_ms([sys.executable, "-c", "pass"], runs)
        dry_run = median_ms([*init, "--dry-run"], runs)
        fresh = median_ms(init, runs, before=lambda: shutil.rmtree(root, ignore_errors=True))
        bare_again = median_ms([sys.executable, "-c", "pass"], runs)
    bare = min(bare, bare_again)
    print(f"python -c pass            {bare:7.1f} ms")
    worst = 0.0
    for name, value in (("init --dry-run", dry_run), ("init --root (fresh dir)", fresh)):
        worst = max(worst, value - bare)
        print(f"{name:<25} {value:7.1f} ms  ratio {value / bare:4.2f}x  adds {value - bare:6.1f} ms")
    print(f"target: adds < {TARGET_MS:.0f} ms -> {'met' if worst < TARGET_MS else 'MISSED'}")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
