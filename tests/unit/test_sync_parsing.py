"""Pure parts of sync: DAG source specs, rsync's itemized output, tree revisions, link safety."""

from __future__ import annotations

import pytest

from airflow_nodes.dagsource import GIT, PATH, SSH, parse_dags_source
from airflow_nodes.errors import UserError
from airflow_nodes.syncing.changes import Change, parse_itemized
from airflow_nodes.syncing.releases import FILE, _link_is_safe, tree_revision


@pytest.mark.parametrize(
    ("spec", "kind", "fields"),
    [
        ("airflow@10.0.0.1:/srv/airflow/dags/", SSH, {"user": "airflow", "host": "10.0.0.1", "port": None}),
        ("ssh://airflow@master:2222/srv/dags", SSH, {"host": "master", "port": 2222, "path": "/srv/dags"}),
        ("/mnt/nfs/dags", PATH, {"path": "/mnt/nfs/dags"}),
        ("file:///mnt/nfs/dags", PATH, {"path": "/mnt/nfs/dags"}),
        ("git+https://example.com/dags#release", GIT, {"url": "https://example.com/dags", "ref": "release"}),
        ("git@github.com:org/dags.git", GIT, {"url": "git@github.com:org/dags.git", "ref": "HEAD"}),
    ],
)
def test_dag_source_specs_are_recognised(spec, kind, fields):
    parsed = parse_dags_source(spec)
    assert parsed.kind == kind
    assert {key: getattr(parsed, key) for key in fields} == fields


def test_an_unknown_spec_names_the_key():
    with pytest.raises(UserError, match=r"^dags.source: 'relative/dir' is not a DAG source"):
        parse_dags_source("relative/dir")


def test_itemized_output_gives_changes_and_deletions_but_not_the_top_dir():
    output = ".d..t...... ./\n>f.st...... team1/dag.py\ncd+++++++++ new/\n*deleting   old dir/x.py\n"
    assert parse_itemized(output) == (
        Change("team1/dag.py", False), Change("new", False), Change("old dir/x.py", True),
    )  # fmt: skip


def test_tree_revision_depends_on_content_and_paths_not_order():
    a = {"a.py": (FILE, "1"), "b.py": (FILE, "2")}
    assert tree_revision(a) == tree_revision(dict(reversed(list(a.items()))))
    assert tree_revision(a) != tree_revision({"a.py": (FILE, "1"), "c.py": (FILE, "2")})


@pytest.mark.parametrize(
    ("where", "target", "safe"),
    [("x.py", "y.py", True), ("d/x.py", "../y.py", True), ("d/x.py", "../../y", False), ("x", "/etc/passwd", False)],
)
def test_links_that_leave_the_tree_are_unsafe(where, target, safe):
    assert _link_is_safe(where, target) is safe
