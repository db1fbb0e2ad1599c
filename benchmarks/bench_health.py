"""Whole-process wall time of `airflow-node health`: every target up, vs one target blackholed.

Starts real servers (redis-server with a password, a private PostgreSQL, flower, and a stand-in
web/api + scheduler health server), renders a master node under a temp root, and times
`python -m airflow_nodes health --root ROOT` as a new process each run.
Targets: all up < 400 ms (300 ms before health spoke to Redis through redis-py); one blackholed
< timeout + 10 %. Needs root (network namespace) for the second.

    python benchmarks/bench_health.py [--runs 10] [--timeout 2]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import (  # noqa: E402 - after the path set-up
    REDIS_PASSWORD,
    Blackhole,
    CeleryProcesses,
    PostgresServer,
    RedisServer,
    StubHttpServer,
    broker_url,
    render_node,
)

import airflow_nodes  # noqa: E402

HEALTHY_3 = {
    "metadatabase": {"status": "healthy"},
    "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": None},
    "triggerer": {"status": "healthy", "latest_triggerer_heartbeat": None},
    "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": None},
}


def timed(argv: list[str], runs: int) -> tuple[list[float], int]:
    times, code = [], -1
    for _ in range(runs):
        started = time.perf_counter()
        code = subprocess.run(argv, capture_output=True, check=False).returncode
        times.append(time.perf_counter() - started)
    return times, code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    # A wheel install compiles bytecode; an editable one does not, and with PYTHONDONTWRITEBYTECODE
    # (set on these machines) every start would recompile our modules. Measure the installed state.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(airflow_nodes.__file__).parent)], check=True)
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    redis = RedisServer(work, password=REDIS_PASSWORD)
    postgres = PostgresServer()
    celery = CeleryProcesses(work, redis.url())
    web = StubHttpServer({"/api/v2/monitor/health": (200, HEALTHY_3)})
    scheduler = StubHttpServer({"/health": (200, b"")})  # its own port: a cluster file may not share one
    try:
        up = render_node(
            work / "up", "master", broker=redis.url(), db=postgres.url(),
            web_port=web.port, flower_port=celery.port, scheduler_health_port=scheduler.port,
                flower_password=celery.password,
        )  # fmt: skip
        base = [sys.executable, "-m", "airflow_nodes", "health", "--timeout", str(args.timeout), "--root"]
        all_up, code = timed([*base, str(up), "--only", "redis,db,flower,web,scheduler"], args.runs)
        print(f"all targets up (redis, db, flower x2, web x4, scheduler; exit {code}), {args.runs} runs:")
        print(f"  median {statistics.median(all_up) * 1000:.0f} ms, min {min(all_up) * 1000:.0f} ms, "
              f"max {max(all_up) * 1000:.0f} ms; target < 400 ms; median/timeout = "
              f"{statistics.median(all_up) / args.timeout:.3f}")  # fmt: skip
        table = subprocess.run(
            [*base, str(up), "--only", "redis,db,flower,web,scheduler"], capture_output=True, text=True
        )
        print("  " + "\n  ".join(line for line in table.stdout.splitlines() if not line.startswith("OK")))
        if not Blackhole.available():
            print("blackholed: skipped (needs root and iproute2)")
            return
        blackhole = Blackhole()
        try:
            holed = render_node(
                work / "holed", "master", broker=broker_url(6379, REDIS_PASSWORD, host=blackhole.BLACKHOLE_IP),
                db=postgres.url(), web_port=web.port, flower_port=celery.port, scheduler_health_port=scheduler.port,
                flower_password=celery.password,
            )  # fmt: skip
            argv = ["ip", "netns", "exec", blackhole.name, *base, str(holed), "--only", "redis,db,flower,web,scheduler"]
            runs = max(3, args.runs // 3)
            slow, code = timed(argv, runs)
        finally:
            blackhole.remove()
        worst = max(slow)
        print(f"redis blackholed (run inside a network namespace; exit {code}), {runs} runs:")
        print(f"  median {statistics.median(slow):.3f} s, max {worst:.3f} s; timeout {args.timeout:.1f} s; "
              f"max/timeout = {worst / args.timeout:.3f} (target < 1.100)")  # fmt: skip
    finally:
        web.stop()
        scheduler.stop()
        celery.stop()
        postgres.remove()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
