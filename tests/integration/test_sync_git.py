"""Sync from a git repository (a local bare repo): publish a commit, skip an unchanged ref, follow a branch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sync_fixtures import (
    NO_HOST_CHECK,
    dags_folder,
    free_port,
    published_revision,
    render_node,
    sync_now,
    write_revision,
)

from airflow_nodes.errors import OperationError

pytestmark = pytest.mark.integration
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


def commit_revision(work: Path, revision: int) -> None:
    for path in work.iterdir():
        if path.name != ".git":
            subprocess.run(["rm", "-rf", str(path)], check=True)
    write_revision(work / "tmp", revision)
    for path in (work / "tmp").iterdir():
        path.rename(work / path.name)
    (work / "tmp").rmdir()
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"revision {revision}")
    git(work, "push", "-q", "origin", "HEAD:main")


@pytest.fixture
def repo(tmp_path):
    bare = tmp_path / "dags.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    commit_revision(work, 1)
    return bare, work


def test_a_git_source_publishes_commits_without_dot_git_and_skips_an_unchanged_ref(tmp_path, run_cli, repo):
    bare, work = repo
    root = render_node(tmp_path, run_cli, f"git+file://{bare}#main")
    result = sync_now(root)
    assert result.status == "published" and published_revision(root) == 1
    assert not (dags_folder(root) / ".git").exists()
    assert result.dags.source_revision == git(work, "rev-parse", "HEAD").strip()
    assert sync_now(root).status == "unchanged"
    commit_revision(work, 2)
    result = sync_now(root)
    assert result.status == "published" and published_revision(root) == 2
    assert result.dags.source_revision == git(work, "rev-parse", "HEAD").strip()


def test_an_unknown_branch_is_a_clear_failure(tmp_path, run_cli, repo):
    bare, _ = repo
    root = render_node(tmp_path, run_cli, f"git+file://{bare}#nope")
    with pytest.raises(OperationError, match="no such branch or tag"):
        sync_now(root)


def test_an_unreachable_git_host_is_reported_by_what_ssh_said(tmp_path, run_cli, repo):
    bare, _ = repo
    root = render_node(tmp_path, run_cli, f"git+file://{bare}#main")
    sync_now(root)
    root = render_node(tmp_path, run_cli, f"git+ssh://git@127.0.0.1:{free_port()}/dags.git#main")
    with pytest.raises(OperationError) as failure:
        sync_now(root, ssh_extra=NO_HOST_CHECK)
    assert str(failure.value).endswith("Connection refused (exit 128); the published DAGs are unchanged")
    assert published_revision(root) == 1
