"""The wheel carries the templates, so an installed package can render on a clean host."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent.parent


def test_wheel_contains_every_template_and_lock(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("airflow_nodes-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {
        "airflow_nodes/unit_templates/" + str(path.relative_to(REPO / "unit_templates"))
        for path in (REPO / "unit_templates").rglob("*.j2")
    }
    locks = {f"airflow_nodes/locks/{path.name}" for path in (REPO / "airflow_nodes/locks").glob("*.txt")}
    assert len(templates) >= 6 and len(locks) >= 2
    assert templates | locks <= names, (templates | locks) - names
