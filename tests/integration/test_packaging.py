"""The wheel carries the templates, so an installed package can render on a clean host."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent.parent


def test_wheel_contains_every_template(tmp_path):
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
    assert len(templates) >= 6
    assert templates <= names, templates - names
