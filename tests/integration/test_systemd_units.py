"""Generated systemd units: `systemd-analyze verify` passes and every service scores <= 4.0 on security."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_nodes.cluster import dump_cluster

from conftest import make_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"),
]
STAND_IN = Path(__file__).parent.parent / "fixtures" / "stand-in-airflow"
TOOL = Path(sys.executable).parent / "airflow-node"  # the follower's ExecStart must exist for `verify`
NODES = [(v, r) for v in ("2.11.2", "3.3.2") for r in ("master", "worker")]


def render_units(run_cli, tmp_path: Path, version: str, role: str) -> list[Path]:
    root = tmp_path / "root"
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(make_cluster(version.rsplit(".", 1)[0])))
    args = ["init", "--role", role, "--root", root, "--airflow-version", version, "--init-system", "systemd",
            "--airflow-bin", STAND_IN, "--airflow-node-bin", TOOL]  # fmt: skip
    if role == "worker":
        args += ["--config", cluster_file]
    elif not (root / "etc/airflow-node/cluster.toml").exists():
        (root / "etc/airflow-node").mkdir(parents=True)
        shutil.copy(cluster_file, root / "etc/airflow-node/cluster.toml")
    assert run_cli(*args).code == 0
    return sorted((root / "etc/systemd/system").iterdir())


def verify(units: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", *map(str, units)], capture_output=True, text=True
    )


@pytest.mark.parametrize("version,role", NODES)
def test_systemd_analyze_verify_passes_without_warnings(run_cli, tmp_path, version, role):
    units = render_units(run_cli, tmp_path, version, role)
    result = verify(units)
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and other mistakes; it only warns about them
    ours = [line for line in result.stderr.splitlines() if "airflow-" in line]
    assert ours == []


def test_a_master_upgraded_from_2_11_to_3_3_has_only_3_x_units_and_they_verify(run_cli, tmp_path):
    render_units(run_cli, tmp_path, "2.11.2", "master")
    units = render_units(run_cli, tmp_path, "3.3.2", "master")  # the same root, converged to 3.3
    assert "airflow-webserver.service" not in {u.name for u in units}
    assert {"airflow-api-server.service", "airflow-dag-processor.service"} <= {u.name for u in units}
    result = verify(units)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "airflow-" in line] == []


def test_verify_catches_a_broken_unit(run_cli, tmp_path):
    """The check above can fail: a unit with a missing executable and an unknown key is reported."""
    units = render_units(run_cli, tmp_path, "3.3.2", "worker")
    service = next(u for u in units if u.name == "airflow-worker.service")
    service.write_text(service.read_text().replace(str(STAND_IN), "/nonexistent/airflow") + "Bogus=1\n")
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no", str(service)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and "airflow-worker.service" in result.stderr


@pytest.mark.parametrize("version,role", NODES)
def test_every_service_scores_at_most_4_on_systemd_security(run_cli, tmp_path, version, role):
    units = render_units(run_cli, tmp_path, version, role)
    services = [u for u in units if u.suffix == ".service"]
    assert services
    for service in services:
        result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(service)],
                                capture_output=True, text=True)  # fmt: skip
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= 4.0, f"{service.name}: {match.group(1)}"
