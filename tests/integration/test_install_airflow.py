"""`airflow-node install-airflow`: real installs from the shipped locks, and the refusals around them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_nodes.detect import package_set_hash
from airflow_nodes.install import available_locks

from conftest import interpreter

pytestmark = pytest.mark.integration
# Installed venvs are kept between runs (and shared with the end-to-end test): an install from a
# warm uv cache takes seconds, a cold one a minute.
CACHE = Path(os.environ.get("AIRFLOW_NODES_TEST_CACHE", Path.home() / ".cache" / "airflow-nodes-tests"))
PYTHON = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def cached_venv(version: str, python: str = f"{sys.version_info[0]}.{sys.version_info[1]}") -> Path:
    """Where a lock's venv is kept; a changed lock gets a new place (its hash is in the name)."""
    lock = next(lock for lock in available_locks() if (lock.airflow_version, lock.python) == (version, python))
    return CACHE / f"airflow-{version}-py{python}-{lock.package_hash[:8]}" / "venv"


def airflow_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow_nodes", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("lock", available_locks(), ids=lambda lock: f"{lock.airflow_version}-py{lock.python}")
def test_each_shipped_lock_installs_and_runs_airflow(lock):
    python = interpreter(lock.python)
    if python is None:
        pytest.skip(f"no Python {lock.python} on this host (looked for /usr/bin/python{lock.python} and pyenv's)")
    venv = cached_venv(lock.airflow_version, lock.python)
    started = time.monotonic()
    first = airflow_node("install-airflow", "--version", lock.airflow_version, "--venv", venv, "--python", python)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    print(f"install-airflow {lock.airflow_version} on Python {lock.python}: {time.monotonic() - started:.1f}s")
    env = {**os.environ, "AIRFLOW_HOME": str(venv.parent / "home")}
    version = subprocess.run([venv / "bin" / "airflow", "version"], capture_output=True, text=True, env=env)
    assert version.stdout.strip().splitlines()[-1] == lock.airflow_version
    # the import that broke with celery 5.7
    imports = subprocess.run(
        [venv / "bin" / "python", "-c", "import airflow.providers.celery.executors.celery_executor_utils"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert imports.returncode == 0, imports.stderr[-2000:]
    again = airflow_node("install-airflow", "--version", lock.airflow_version, "--venv", venv, "--python", python)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_a_failed_install_leaves_the_previous_venv_working(tmp_path):
    venv = cached_venv("3.3.2")
    ready = airflow_node("install-airflow", "--version", "3.3.2", "--venv", venv, "--python", sys.executable)
    assert ready.returncode == 0, ready.stderr
    target = os.readlink(venv)
    wheelhouse = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheelhouse, "six"], check=True)
    # a wheelhouse that lacks almost everything: the offline install of 2.11.2 fails half-way
    failed = airflow_node("install-airflow", "--version", "2.11.2", "--venv", venv, "--python", sys.executable,
                          "--wheelhouse", wheelhouse, "--force")  # fmt: skip
    assert failed.returncode == 1
    assert "install failed" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert os.readlink(venv) == target
    assert not [p for p in venv.parent.glob("venv.releases/airflow-2.11.2-*")]
    version = subprocess.run([venv / "bin" / "airflow", "version"], capture_output=True, text=True,
                             env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "home")})  # fmt: skip
    assert version.stdout.strip().splitlines()[-1] == "3.3.2"


def test_a_venv_with_another_version_is_not_replaced_without_force(tmp_path):
    venv = cached_venv("3.3.2")
    assert airflow_node("install-airflow", "--venv", venv, "--python", sys.executable).returncode == 0
    result = airflow_node("install-airflow", "--version", "2.11.2", "--venv", venv, "--python", sys.executable)
    assert result.returncode == 2
    assert "--force" in result.stderr and "apache-airflow==3.3.2" in result.stderr


def tree(path: Path) -> list[str]:
    return sorted(str(p) for p in path.rglob("*")) if path.exists() else []


BAD_INPUT = [
    (["--version", "3.3.1"], "--version: no lock file for Airflow 3.3.1"),
    (["--version", "3.3.2", "--python", "/nonexistent/python"], "--python: cannot run"),
    (["--venv", "relative/venv"], "--venv"),
    (["--wheelhouse", "/nonexistent/wheels"], "--wheelhouse"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[m.split(":")[0] for _, m in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, args, message):
    venv = tmp_path / "venv"
    if "--venv" not in args:
        args = [*args, "--venv", venv]
    result = airflow_node("install-airflow", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == []


def test_unwritable_venv_path_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = airflow_node("install-airflow", "--venv", blocker / "venv")
    assert result.returncode == 2 and "--venv" in result.stderr
    assert tree(tmp_path) == [str(blocker)]


@pytest.mark.parametrize(
    "version,python,covered", [("3.3.2", "3.9", "3.10, 3.11, 3.12, 3.13"), ("2.11.2", "3.13", "3.10, 3.11, 3.12")]
)
def test_a_python_no_lock_covers_is_refused_naming_the_covered_ones(tmp_path, version, python, covered):
    other = interpreter(python)
    if other is None:
        pytest.skip(f"no Python {python} on this host (looked for /usr/bin/python{python} and pyenv's)")
    result = airflow_node("install-airflow", "--version", version, "--venv", tmp_path / "venv", "--python", other)
    assert result.returncode == 2, result.stderr
    assert f"--python: the Airflow {version} lock covers Python {covered}, not {python}" in result.stderr
    assert tree(tmp_path) == []


def test_package_set_hash_changes_with_one_package_and_ignores_order_and_spelling():
    base = ["apache-airflow==3.3.2", "celery==5.6.3", "Flask_Login==0.6.3"]
    assert package_set_hash(base) == package_set_hash(list(reversed(base)))
    assert package_set_hash(base) == package_set_hash(["apache-airflow==3.3.2", "celery==5.6.3", "flask-login==0.6.3"])
    assert package_set_hash(base) != package_set_hash(["apache-airflow==3.3.2", "celery==5.7.0", "Flask_Login==0.6.3"])
