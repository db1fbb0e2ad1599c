"""A full disk (a tiny tmpfs) is one line and leaves nothing behind: no directories, no temp files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import snapshot, worker_args

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


@pytest.fixture
def tiny_disk(tmp_path):
    """Mount a tmpfs of `pages` 4 KiB pages at a fresh directory; unmount it afterwards."""
    mounts = []

    def mount(where: Path, pages: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4}k,mode=0755", "tmpfs", where], check=True)
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", where], check=False)


def fill(directory: Path) -> None:
    """Use up every free byte of the file system that holds directory."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)


def test_init_on_a_full_disk_is_one_line_and_leaves_the_tree_as_it_was(run_cli, tmp_path, cluster_file, tiny_disk):
    root = tiny_disk(tmp_path / "node", pages=3)  # room for three files of the seven init writes
    before = snapshot(root)
    result = run_cli(*worker_args(root, cluster_file))
    assert result.code == 1, (result.out, result.err)
    assert len(result.err.strip().splitlines()) == 1 and "No space left on device" in result.err
    assert "nothing was changed" in result.err
    assert snapshot(root) == before  # no directory, no temp file, no half-written file


def test_sync_state_on_a_full_disk_is_one_line(run_cli, tmp_path, tiny_disk):
    root = tmp_path / "node"
    (root / "srv/dags").mkdir(parents=True)
    (root / "srv/dags/a.py").write_text("x = 1\n")
    result = run_cli("init", "--role", "master", "--root", root, "--airflow-version", "3.3.2", "--master-host", "m",
                     "--broker-url", "redis://m:6379/0", "--db-url", "postgresql://a@m/db", "--dags-source",
                     "/srv/dags", "--airflow-node-bin", "/usr/local/bin/airflow-node")  # fmt: skip
    assert result.code == 0, result.err
    state = tiny_disk(root / "var/lib/airflow-node", pages=64)
    assert run_cli("sync", "--root", root, "--dags-only").code == 0
    fill(state)
    result = run_cli("sync", "--root", root, "--dags-only")
    assert result.code == 1, (result.out, result.err)
    assert len(result.err.strip().splitlines()) == 1 and "sync-state.json" in result.err
    assert "Traceback" not in result.err
