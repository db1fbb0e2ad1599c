"""`airflow-node sync` from a local directory: atomic publish, no-change path, guards, lock, state."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sync_fixtures import (
    dags_folder,
    published_revision,
    read_published_tree,
    render_node,
    sync_now,
    wait_for,
    write_revision,
)

from airflow_nodes.context import load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.sync import splay_of
from airflow_nodes.syncing.lock import sync_lock
from airflow_nodes.syncing.releases import DagLayout, build_release, unpublished
from airflow_nodes.target import Target

pytestmark = pytest.mark.integration
STATE_KEYS = {"dag_revision", "source_revision", "config_hash", "cluster_file_hash", "last_success",
              "last_attempt", "last_error"}  # fmt: skip


@pytest.fixture
def node(tmp_path, run_cli):
    root = render_node(tmp_path, run_cli, "/srv/dags")
    source = root / "srv/dags"
    write_revision(source, 1)
    return root, source


def releases(root: Path) -> list[str]:
    return sorted(os.listdir(root / "var/lib/airflow-node/dags/releases"))


def test_first_sync_replaces_inits_empty_dir_with_a_symlink_to_a_complete_release(node):
    root, _ = node
    assert dags_folder(root).is_dir() and not dags_folder(root).is_symlink()
    result = sync_now(root)
    assert result.status == "published"
    assert dags_folder(root).is_symlink()
    assert published_revision(root) == 1
    assert len(list(Path(os.path.realpath(dags_folder(root))).rglob("*.py"))) == 20


def test_no_change_makes_no_release_and_keeps_the_link(node):
    root, _ = node
    sync_now(root)
    link = os.readlink(dags_folder(root))
    result = sync_now(root)
    assert result.status == "unchanged"
    assert os.readlink(dags_folder(root)) == link and len(releases(root)) == 1


def test_a_changed_file_makes_a_release_sharing_unchanged_files_by_hard_link(node):
    root, source = node
    first = sync_now(root).dags.revision
    old = Path(os.path.realpath(dags_folder(root)))
    (source / "team1/dag_1.py").write_text("REVISION = 1\nDAG_ID = 'changed'\n")
    result = sync_now(root)
    assert result.status == "published" and result.dags.changed_files == 1 and result.dags.revision != first
    new = Path(os.path.realpath(dags_folder(root)))
    assert (new / "team0/dag_0.py").stat().st_ino == (old / "team0/dag_0.py").stat().st_ino
    assert (new / "team1/dag_1.py").stat().st_ino != (old / "team1/dag_1.py").stat().st_ino
    assert (old / "team1/dag_1.py").read_text().endswith("'dag_1'\n"), "the old release was modified"


def test_deleted_and_new_directories_are_published(node):
    root, source = node
    sync_now(root)
    for path in (source / "team2").iterdir():
        path.unlink()
    (source / "team2").rmdir()
    (source / "new/deep").mkdir(parents=True)
    (source / "new/deep/dag_x.py").write_text("REVISION = 1\n")
    sync_now(root)
    tree = Path(os.path.realpath(dags_folder(root)))
    assert not (tree / "team2").exists() and (tree / "new/deep/dag_x.py").read_text() == "REVISION = 1\n"
    full = sync_now(root, dags_only=True)  # the incremental tree equals a rebuild from scratch
    assert full.status == "unchanged"


def test_a_reverted_source_reuses_the_earlier_release(node):
    root, source = node
    first = sync_now(root).dags.revision
    write_revision(source, 2)
    sync_now(root)
    write_revision(source, 1)
    result = sync_now(root)
    assert result.dags.revision == first and len(releases(root)) == 2 and published_revision(root) == 1


def test_only_the_newest_releases_are_kept(node):
    root, source = node
    for revision in range(1, 6):
        write_revision(source, revision)
        sync_now(root, keep_releases=2)
    assert len(releases(root)) == 5  # all younger than --keep-days: runs may still be pinned to them
    sync_now(root, keep_releases=2, keep_days=0)
    assert len(releases(root)) == 2 and published_revision(root) == 5


def test_a_non_empty_real_dags_directory_is_refused(node):
    root, _ = node
    (dags_folder(root) / "precious.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="directory with files in it"):
        sync_now(root)
    assert (dags_folder(root) / "precious.py").exists()


def test_empty_source_is_refused_unless_forced(node):
    root, source = node
    sync_now(root)
    write_revision(source, 2, files=0)
    (source / "REVISION").unlink()
    with pytest.raises(OperationError, match="the DAG source is empty"):
        sync_now(root)
    assert published_revision(root) == 1
    with pytest.raises(OperationError, match="empty"):  # the mirror is ahead, but still not published
        sync_now(root)
    sync_now(root, force=True)
    assert not any(Path(os.path.realpath(dags_folder(root))).rglob("*.py"))


def test_mass_delete_is_refused_unless_forced_and_state_records_the_error(node):
    root, source = node
    sync_now(root)
    write_revision(source, 2, files=5)
    with pytest.raises(OperationError, match=r"would delete 15 of 21 DAG files"):
        sync_now(root)
    assert published_revision(root) == 1
    state = json.loads((root / "var/lib/airflow-node/sync-state.json").read_text())
    assert set(state) == STATE_KEYS and "would delete" in state["last_error"]
    sync_now(root, max_delete_ratio=0.9)
    assert published_revision(root) == 2


def test_validate_refuse_keeps_the_old_tree_and_warn_publishes(node):
    root, source = node
    sync_now(root)
    (source / "team0/broken.py").write_text("def nope(:\n")
    with pytest.raises(OperationError, match=r"team0/broken.py:1: .*does not compile"):
        sync_now(root, validate="refuse")
    assert not (dags_folder(root) / "team0/broken.py").exists()
    result = sync_now(root, validate="warn")
    assert result.dags.warnings and (dags_folder(root) / "team0/broken.py").exists()


def test_symlinks_pointing_outside_the_tree_are_not_published(node):
    root, source = node
    (source / "escape.py").symlink_to("/etc/passwd")
    (source / "team0/up.py").symlink_to("../../../../etc/hostname")
    (source / "team0/inside.py").symlink_to("dag_0.py")
    sync_now(root)
    tree = dags_folder(root)
    assert not (tree / "escape.py").is_symlink() and not (tree / "team0/up.py").is_symlink()
    assert (tree / "team0/inside.py").is_symlink()


def test_state_file_has_the_health_contract_and_status_prints_it(node, run_cli):
    root, _ = node
    result = run_cli("sync", "--root", root, "--dags-only")
    assert result.code == 0, result.err
    state = json.loads((root / "var/lib/airflow-node/sync-state.json").read_text())
    assert set(state) == STATE_KEYS
    assert state["dag_revision"] and state["last_error"] is None and state["last_success"].endswith("+00:00")
    status = run_cli("sync", "--root", root, "--status")
    assert state["dag_revision"] in status.out


def test_cli_errors_are_one_line_with_exit_codes(node, run_cli):
    root, source = node
    (dags_folder(root) / "x.py").write_text("")
    result = run_cli("sync", "--root", root, "--dags-only")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    (dags_folder(root) / "x.py").unlink()
    os.rename(source, source.with_name("gone"))
    result = run_cli("sync", "--root", root, "--dags-only", "--quiet")
    assert result.code == 1 and "the DAG source directory is missing" in result.err.splitlines()[-1]


def test_a_second_sync_while_one_runs_exits_cleanly(node, run_cli):
    root, _ = node
    with sync_lock(root / "var/lib/airflow-node/sync.lock", 0) as holder:
        assert holder is None
        result = run_cli("sync", "--root", root, "--dags-only", "--wait", "0.2")
    assert result.code == 0 and "another sync is running" in result.out


def test_two_concurrent_syncs_both_succeed_and_publish_one_complete_tree(node):
    root, source = node
    write_revision(source, 7, files=400)
    argv = [sys.executable, "-m", "airflow_nodes", "sync", "--root", str(root), "--dags-only", "--wait", "30"]
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert sorted(o[0].decode().split()[1] for o in outputs) == ["published", "unchanged"]
    assert published_revision(root) == 7 and len(releases(root)) == 1


def _rsync_children() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if name == "rsync" and int(fields[1]) == os.getpid():
                pids.append(int(entry))
    return pids


def test_a_transfer_killed_half_way_leaves_the_published_tree_whole(node):
    root, source = node
    sync_now(root)
    write_revision(source, 2)
    with open(source / "big.bin", "wb") as big:
        big.truncate(1 << 30)  # sparse: instant to make, slow enough to copy
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(error=_sync_error(root)))
    thread.start()
    mirror = root / "var/lib/airflow-node/dags/mirror"
    wait_for(lambda: any(p.name.startswith(".big.bin.") and p.stat().st_size > 1 << 20
                         for p in mirror.iterdir()), 30, "rsync half-way through big.bin")  # fmt: skip
    for pid in _rsync_children():
        os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert "killed by signal 9" in str(outcome["error"]) and "published DAGs are unchanged" in str(outcome["error"])
    assert published_revision(root) == 1
    (source / "big.bin").unlink()
    sync_now(root)  # the next run recovers and publishes the whole of revision 2
    assert published_revision(root) == 2


def _sync_error(root: Path) -> Exception | None:
    try:
        sync_now(root)
    except OperationError as exc:
        return exc
    return None


def test_a_reader_never_sees_a_mixed_or_partial_tree_during_many_syncs(node):
    root, source = node
    write_revision(source, 1, files=21)
    sync_now(root)
    seen: set[int] = set()
    problems: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                revision, files = read_published_tree(root)
                if files != 20 + revision % 3:
                    problems.append(f"revision {revision} has {files} files")
                seen.add(revision)
            except (AssertionError, OSError, ValueError) as exc:
                problems.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for revision in range(2, 32):
            write_revision(source, revision, files=20 + revision % 3)
            sync_now(root, keep_releases=100)
            time.sleep(0)  # let the reader run between flips
    finally:
        done.set()
        thread.join(30)
    assert not problems, problems[:5]
    assert len(seen) > 3, f"the reader saw only {sorted(seen)}"


# any byte but / and NUL may be in a file name: rsync lists such names escaped (\#ooo)
ODD_NAMES = ["données.py", "new\nline.py", "tab\tname.py", "back\\#101slash.py", os.fsdecode(b"latin1-\xe9.py")]


def test_every_file_name_is_published_by_a_later_sync_too(node):
    root, source = node
    sync_now(root)  # the first release copies the whole mirror; later ones follow rsync's change list
    for index, name in enumerate(ODD_NAMES):
        (source / "team0" / name).write_text(f"N = {index}\n")
    result = sync_now(root)
    published = dags_folder(root).resolve() / "team0"
    for index, name in enumerate(ODD_NAMES):
        assert (published / name).read_text() == f"N = {index}\n", name
    (source / "team0" / ODD_NAMES[0]).unlink()  # and a deletion of one is published too
    sync_now(root)
    assert not (dags_folder(root).resolve() / "team0" / ODD_NAMES[0]).exists()
    assert result.dags.changed_files == len(ODD_NAMES)


def test_what_the_release_lacks_is_said_aloud_never_dropped(node, tmp_path):
    root, source = node
    os.mkfifo(source / "team0" / "pipe.py")  # no DAG file: reported, not published
    result = sync_now(root)
    assert "not published: team0/pipe.py is not a file, directory or link" in result.dags.warnings
    layout = DagLayout(root, dags_folder(root))
    built = build_release(layout, None, None, None)
    partial = dataclasses.replace(built, manifest={k: v for k, v in built.manifest.items() if k != "REVISION"})
    assert unpublished(layout.mirror, partial) == (["REVISION"], ["team0/pipe.py"])


def test_a_splayed_sync_first_waits_this_nodes_own_fixed_share(node):
    root, _ = node
    name = load_context(Target.at(root)).node.node_name
    wait = splay_of(name, 2.0)
    assert 0 <= wait < 2.0 and splay_of(name, 2.0) == wait  # the same share on every run
    started = time.monotonic()
    sync_now(root, splay=2.0)
    assert time.monotonic() - started >= wait
    # a hundred workers whose cron fires in the same second start spread over the minute
    assert len({int(splay_of(f"worker{i}", 60) // 6) for i in range(100)}) == 10
