"""`airflow-node sync` with hostile DAG files: a file that breaks the compiler, a setuid file."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_fixtures import dags_folder, published_revision, render_node, sync_now, write_revision

from airflow_nodes.errors import OperationError
from airflow_nodes.syncing import checks
from airflow_nodes.syncing.releases import (
    BuiltRelease,
    DagLayout,
    add_release,
    build_release,
    local_changes,
    prepare_work_dirs,
)

pytestmark = pytest.mark.integration
NOBODY = (65534, 65534)
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
DEEP_UNARY = "x = " + "-" * 200_000 + "1\n"  # MemoryError from compile()
DEEP_SUM = "x = 1" + " + 1" * 200_000 + "\n"  # RecursionError from compile()
BIG_LITERAL = "x = [" + "1," * 1_000_000 + "]\n"  # 2 MB that needs ~700 MB and seconds to compile


@pytest.fixture
def node(tmp_path, run_cli):
    root = render_node(tmp_path, run_cli, "/srv/dags")
    source = root / "srv/dags"
    write_revision(source, 1)
    return root, source


def state(root: Path) -> dict:
    return json.loads((root / "var/lib/airflow-node/sync-state.json").read_text())


def test_a_file_that_breaks_the_compiler_is_a_warning_naming_it_and_the_rest_is_published(node):
    root, source = node
    (source / "team0/minus.py").write_text(f"REVISION = 1\n{DEEP_UNARY}")
    (source / "team1/sum.py").write_text(f"REVISION = 1\n{DEEP_SUM}")
    result = sync_now(root, validate="warn")
    assert result.status == "published" and published_revision(root) == 1
    warnings = "\n".join(result.dags.warnings)
    assert "team0/minus.py:?: needs more than" in warnings
    assert "team1/sum.py:?: nested too deeply to compile" in warnings
    assert (dags_folder(root) / "team0/minus.py").exists()


def test_a_file_that_breaks_the_compiler_is_refused_in_one_line_and_the_state_records_it(node):
    root, source = node
    sync_now(root)
    write_revision(source, 2)
    (source / "team0/minus.py").write_text(f"REVISION = 2\n{DEEP_UNARY}")
    with pytest.raises(OperationError, match=r"team0/minus.py:\?: needs more than .*does not compile") as caught:
        sync_now(root, validate="refuse")
    assert "\n" not in str(caught.value)
    assert published_revision(root) == 1
    assert "team0/minus.py" in state(root)["last_error"]
    assert sync_now(root, validate="off").status == "published" and published_revision(root) == 2


def test_names_and_messages_from_the_tree_are_printable_on_one_line(node):
    root, source = node
    (source / "team0/evil\n\x1b[31mred\udcff.py").write_text("def nope(:\n")
    (source / "team0/bell.py").write_text("x = '\x07\n")
    result = sync_now(root, validate="warn")
    warnings = result.dags.warnings
    assert any("team0/evil\\n\\x1b[31mred\\udcff.py:1:" in warning for warning in warnings), warnings
    assert all(warning.isprintable() for warning in warnings), warnings


def test_a_file_needing_more_than_the_compile_memory_is_a_warning(node, monkeypatch):
    root, source = node
    monkeypatch.setattr(checks, "COMPILE_MEMORY", 256 << 20)
    (source / "team0/big.py").write_text(BIG_LITERAL)
    result = sync_now(root, validate="warn")
    assert result.status == "published"
    assert any("team0/big.py:?: needs more than 256 MiB to compile" in w for w in result.dags.warnings)


def test_a_file_that_compiles_too_long_is_named_and_the_files_after_it_are_still_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "COMPILE_SECONDS", 1)
    files = {"a_good.py": "x = 1\n", "b_slow.py": BIG_LITERAL, "c_broken.py": "def nope(:\n", "d_minus.py": DEEP_UNARY}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    built = BuiltRelease("r", tmp_path, {}, tuple(files), 0, ())
    problems = checks.invalid_python_files(built)
    assert len(problems) == 3, problems
    assert problems[0] == "b_slow.py:?: takes more than 1 s to compile"
    assert problems[1].startswith("c_broken.py:1: ")
    assert problems[2].startswith("d_minus.py:?: needs more than")


def test_a_compiler_that_cannot_run_is_an_operation_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(OperationError, match="cannot compile DAG files"):
        checks.invalid_python_files(BuiltRelease("r", tmp_path, {}, ("a.py",), 0, ()))


# --- setuid, setgid and sticky bits never reach a release, not even for a moment -------------------------

_chmods: list[tuple[object, int]] | None = None


def _record_chmod(event: str, args: tuple) -> None:
    if _chmods is not None and event == "os.chmod":
        _chmods.append((args[0], args[1]))


sys.addaudithook(_record_chmod)  # audit hooks cannot be removed: it records only inside `special_chmods`


@contextlib.contextmanager
def special_chmods() -> Iterator[list[str]]:
    """Yield a list that ends up holding every os.chmod or os.fchmod this process made inside the block
    that set a setuid, setgid or sticky bit (the moment shutil.copy2 gives a root-owned copy the bit)."""
    global _chmods
    _chmods, found = [], []
    try:
        yield found
    finally:
        found += [f"{path} {oct(mode)}" for path, mode in _chmods if mode & SPECIAL_BITS]
        _chmods = None


def special_modes(tree: Path) -> list[str]:
    found = []
    for path in [tree, *tree.rglob("*")]:
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & SPECIAL_BITS:
            found.append(f"{path.relative_to(tree)} {oct(info.st_mode)}")
    return found


def plant_special_files(tree: Path, name: str, owner: tuple[int, int] | None = None) -> None:
    """Add name.py (setuid) and name_dir/ (setgid, sticky) with g.py (setgid) to tree, owned by owner."""
    (tree / f"{name}_dir").mkdir()
    for path, text in ((tree / f"{name}.py", "x = 1\n"), (tree / f"{name}_dir/g.py", "x = 2\n")):
        path.write_text(text)
    for path, mode in ((f"{name}.py", 0o4755), (f"{name}_dir/g.py", 0o2755), (f"{name}_dir", 0o3775)):
        if owner is not None:  # as the transfer, run as the airflow user, leaves the mirror
            os.chown(tree / path, *owner)
        os.chmod(tree / path, mode)


def test_setuid_setgid_and_sticky_bits_are_not_published_by_a_full_or_incremental_build(node):
    root, source = node
    source.chmod(0o1777)
    plant_special_files(source, "first")
    with special_chmods() as full:
        sync_now(root)  # the first release: a full build
    plant_special_files(source, "second")
    (source / "team0/dag_0.py").write_text("REVISION = 1\nDAG_ID = 'x'\n")
    os.chmod(source / "team0/dag_0.py", 0o6755)
    with special_chmods() as incremental:
        result = sync_now(root)  # then a release built from the change list
    assert result.dags.changed_files == 3
    tree = Path(os.path.realpath(dags_folder(root)))
    assert special_modes(tree) == []
    assert stat.S_IMODE((tree / "first.py").lstat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "second_dir").lstat().st_mode) == 0o755  # no group write: root's alone
    assert full == incremental == []


def test_release_files_have_their_final_owner_and_mode_from_the_start(tmp_path):
    layout = DagLayout(tmp_path, tmp_path / "dags")
    prepare_work_dirs(layout, NOBODY)
    assert stat.S_IMODE(layout.staging.lstat().st_mode) == 0o700  # nobody else reaches a release being built
    plant_special_files(layout.mirror, "first", NOBODY)
    with special_chmods() as full:
        current = add_release(layout, build_release(layout, None, None, NOBODY), NOBODY)
    prepare_work_dirs(layout, NOBODY)
    plant_special_files(layout.mirror, "second", NOBODY)
    with special_chmods() as incremental:
        built = build_release(layout, current, local_changes(layout.mirror, current.path), NOBODY)
    assert sorted(built.changed) == ["second.py", "second_dir/g.py"]
    for tree in (current.path, built.path):
        assert special_modes(tree) == []
        assert {(p.lstat().st_uid, p.lstat().st_gid) for p in [tree, *tree.rglob("*")]} == {NOBODY}
    assert full == incremental == []


def test_a_release_of_the_airflow_accounts_is_rebuilt_never_built_through(node, tmp_path):
    """Before 0.4 releases were the airflow account's: it could plant a directory link in the current
    release, and root's next incremental build wrote or deleted through it. Now a release of another
    account's is never built from: the next sync builds the whole tree anew and replaces it."""
    root, source = node
    sync_now(root)
    current = Path(os.path.realpath(dags_folder(root)))
    outside = tmp_path / "outside"  # stands in for /etc
    outside.mkdir()
    (outside / "dag_0.py").write_text("root's own file\n")
    for part in [current, *current.rglob("*")]:  # the account's release, as before 0.4
        os.chown(part, *NOBODY, follow_symlinks=False)
    (current / "team0").rename(current / "team0.old")
    (current / "team0").symlink_to(outside)  # what the account plants
    (source / "team0/ld.so.preload").write_text("/tmp/evil.so\n")  # a change in that directory
    (source / "team0/dag_0.py").unlink()  # and a deletion
    result = sync_now(root)
    assert result.dags.status == "published"
    assert sorted(p.name for p in outside.iterdir()) == ["dag_0.py"]  # nothing written or deleted there
    published = Path(os.path.realpath(dags_folder(root)))
    assert (published / "team0").is_dir() and not (published / "team0").is_symlink()
    assert (published / "team0/ld.so.preload").exists() and not (published / "team0/dag_0.py").exists()
    assert {p.lstat().st_uid for p in [published, *published.rglob("*")]} == {os.geteuid()}


def test_a_published_release_is_read_only_to_the_account_that_reads_it():
    with tempfile.TemporaryDirectory(prefix="airflow-node-test-") as base:  # pytest's tmp_path is 0700
        os.chmod(base, 0o755)
        check_release_as_nobody(Path(base))


def check_release_as_nobody(tmp_path: Path) -> None:
    layout = DagLayout(tmp_path, tmp_path / "dags")
    prepare_work_dirs(layout, None)
    (layout.mirror / "team").mkdir()
    (layout.mirror / "team/dag.py").write_text("X = 1\n")
    os.chmod(layout.mirror / "team/dag.py", 0o600)  # an author's private file: still readable by the group
    readable = (0, NOBODY[1])  # root's, read by the airflow group (nobody's here)
    release = add_release(layout, build_release(layout, None, None, readable), readable)
    probe = (
        "import os, sys\n"
        "release = sys.argv[1]\n"
        "print(open(release + '/team/dag.py').read().strip())\n"
        "for attempt in (lambda: open(release + '/team/dag.py', 'a'), lambda: os.symlink('/etc', release + '/x'),\n"
        "                lambda: os.rename(release + '/team', release + '/moved')):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('allowed')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    as_nobody = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", probe, release.path], capture_output=True, text=True, user=NOBODY[0],
        group=NOBODY[1], extra_groups=[], check=True, cwd="/",
    )  # fmt: skip
    assert as_nobody.stdout.split("\n")[:4] == ["X = 1", "refused", "refused", "refused"], as_nobody


def test_release_directories_an_older_install_left_to_the_airflow_account_are_taken_back(tmp_path):
    """Before 0.3 /var/lib/airflow-node was the airflow account's: it could own dags/ and swap releases/
    for a link while a sync ran, and pruning would then delete wherever the link led."""
    layout = DagLayout(tmp_path, tmp_path / "dags")
    for directory in (layout.base, layout.releases, layout.manifests):
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, *NOBODY)
        os.chmod(directory, 0o775)
    prepare_work_dirs(layout, None)
    for directory in (layout.base.parent, layout.base, layout.releases, layout.manifests):
        info = directory.lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o755), directory
