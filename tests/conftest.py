"""Shared test helpers: run the CLI in-process, render nodes, and snapshot trees."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_nodes.cli import main
from airflow_nodes.cluster import ClusterConfig, ClusterSecrets, dump_cluster

# Fixed secrets so rendered trees are reproducible (golden files).
FIXED_SECRETS = ClusterSecrets(
    fernet_key="q1Vn0xX9cDhS6z3m3sQbQx0fW8dD9n0bWZ0eC3b7m0Y=",
    secret_key="test-secret-key-0123456789abcdef",
    jwt_secret="test-jwt-secret-0123456789abcdefghij",
    flower_password="test-flower-password-0123",
)
# A password full of the characters that break config formats (URL-quoted in the URLs).
NASTY_PASSWORD = "p%s@:%(x)s$HOME%"
NASTY_QUOTED = "p%25s%40%3A%25%28x%29s%24HOME%25"


def make_cluster(version: str = "3.3", **overrides: object) -> ClusterConfig:
    values: dict[str, object] = dict(
        airflow_version=version,
        master_host="10.20.0.1",
        broker_url=f"redis://:{NASTY_QUOTED}@10.20.0.1:6379/0",
        db_url=f"postgresql://airflow:{NASTY_QUOTED}@10.20.0.1:5432/airflow",
        result_backend=f"db+postgresql://airflow:{NASTY_QUOTED}@10.20.0.1:5432/airflow",
        dags_source="airflow@10.20.0.1:/srv/airflow/dags/",
        secrets=FIXED_SECRETS,
    )
    values.update(overrides)
    return ClusterConfig(**values)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run `airflow-node ARGS` in-process; return exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cluster_file(tmp_path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(dump_cluster(make_cluster()))
    return path


def worker_args(root: Path, cluster: Path, version: str = "3.3.2", init_system: str = "supervisor") -> list[str]:
    return [
        "init", "--role", "worker", "--root", root, "--airflow-version", version, "--config", cluster,
        "--init-system", init_system, "--node-name", "worker1", "-c", "4", "--queues", "default,etl",
        "--airflow-node-bin", "/usr/local/bin/airflow-node",
    ]  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under root with its mode and content (files) or target (symlinks)."""
    result: dict[str, tuple[int, bytes | str]] = {}
    if not root.exists():
        return result
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                result[rel] = (info.st_mode, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                result[rel] = (info.st_mode, "")
            else:
                result[rel] = (info.st_mode, path.read_bytes())
    return result


@pytest.fixture(scope="session")
def make_venv(tmp_path_factory):
    """A real venv with fake distribution metadata, as pip would leave it."""

    def make(python: str = sys.executable, root: Path | None = None, **distributions: str) -> Path:
        """Given a root (a node under --root), the venv goes into its tree and its node path is returned."""
        venv = tmp_path_factory.mktemp("venv")
        if root is not None:
            venv = root / venv.relative_to("/")
            venv.mkdir(parents=True)
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        for name, version in distributions.items():
            dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
            dist.mkdir()
            (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        airflow = venv / "bin" / "airflow"
        airflow.write_text(f"#!{venv}/bin/python\nimport sys\nsys.exit(0)\n")
        airflow.chmod(0o755)
        return venv if root is None else Path("/") / venv.relative_to(root)

    return make


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll condition until it returns something truthy and return that; at the deadline raise
    AssertionError naming `what` and the last value. Tests wait on conditions, never on fixed sleeps."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def interpreter(python: str) -> str | None:
    """An interpreter of Python `python` ("3.12") on this machine: this one, the system's, or pyenv's."""
    if python == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return sys.executable
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{python}.*/bin/python3"))
    candidates = [Path(f"/usr/bin/python{python}"), *pyenv]
    return next((str(path) for path in candidates if path.exists()), None)
