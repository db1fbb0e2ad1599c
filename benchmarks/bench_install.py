"""Install time of `airflow-node install-airflow` (uv and pip, cold and warm caches) against a plain,
unpinned `pip install "apache-airflow[celery,postgres,redis]==VERSION"` of the same version, in one run.

Needs network access to PyPI; takes several minutes. Prints seconds and ratios to the plain install.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", default="3.3.2")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    uv = shutil.which("uv")
    if uv is None:
        print("uv is not installed: pip install uv")
        return 2
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # a PATH without uv, so install-airflow falls back to pip
        no_uv = work / "bin"
        no_uv.mkdir()
        base_env = {**os.environ, "UV_CACHE_DIR": str(work / "uv-cache")}
        pip_env = {**base_env, "PATH": f"{no_uv}:/usr/local/bin:/usr/bin:/bin"}
        install = [sys.executable, "-m", "airflow_nodes", "install-airflow", "--version", args.version,
                   "--python", args.python, "--venv"]  # fmt: skip
        results["install-airflow, uv, cold cache"] = timed([*install, str(work / "uv-cold")], base_env)
        results["install-airflow, uv, warm cache"] = timed([*install, str(work / "uv-warm")], base_env)
        results["install-airflow, pip, first"] = timed([*install, str(work / "pip-1")], pip_env)
        results["install-airflow, pip, second"] = timed([*install, str(work / "pip-2")], pip_env)
        plain = work / "plain"
        subprocess.run([args.python, "-m", "venv", str(plain)], check=True)
        results["plain unpinned pip install"] = timed(
            [str(plain / "bin" / "pip"), "install", "-q", f"apache-airflow[celery,postgres,redis]=={args.version}"],
            base_env,
        )
        celery = subprocess.run([str(plain / "bin" / "python"), "-c", "import celery; print(celery.__version__)"],
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
    plain_time = results["plain unpinned pip install"]
    for name, seconds in results.items():
        print(f"{name:<36} {seconds:7.1f} s   {seconds / plain_time:5.2f}x of plain pip")
    print(f"the plain install picked celery {celery} (the lock pins 5.6.3: 5.7 breaks the celery provider)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
