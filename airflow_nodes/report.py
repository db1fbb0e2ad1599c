"""Formatting results for people: plain functions from values to text."""

from __future__ import annotations

from airflow_nodes.apply import CREATE, EDITED, FOREIGN, PERMISSIONS, UNCHANGED, UPDATE, ApplyResult
from airflow_nodes.context import NodeContext
from airflow_nodes.init import InitOutcome
from airflow_nodes.node import under_root

_LABELS = {
    CREATE: "create",
    UPDATE: "update",
    PERMISSIONS: "fix mode",
    UNCHANGED: "unchanged",
    EDITED: "CONFLICT (edited since we wrote it)",
    FOREIGN: "CONFLICT (exists, not written by airflow-node)",
}


def format_preview(outcome: InitOutcome, show_diff: bool) -> str:
    """Return what init found and plans: the node, each file's status, commands, and optional diffs."""
    prev, node = outcome.preview, outcome.node
    ctx = NodeContext(outcome.cluster, node)
    daemons = ", ".join(d.name for d in ctx.daemons)
    lines = [
        f"{node.role} node {node.node_name!r} of cluster {outcome.cluster.name!r}: "
        f"Airflow {node.airflow_version}, {node.init_system} ({daemons})",
        *(f"note: {note}" for note in outcome.notes),
    ]
    for planned_dir in prev.missing_dirs:
        lines.append(f"  mkdir      {under_root(prev.root, planned_dir.path)}")
    for change in prev.changes:
        lines.append(f"  {_LABELS[change.status]:<10} {under_root(prev.root, change.file.path)}")
    if prev.nothing_to_do:
        lines.append("Nothing to change: this node already matches.")
        return "\n".join(lines)
    verb = "would run" if show_diff or not prev.real_system else "will run"
    for command in prev.commands:
        lines.append(f"  {verb}: {' '.join(command.argv)}   # {command.reason}")
    if show_diff:
        lines += [prev.diff(c).rstrip("\n") for c in prev.changes if c.writes]
        lines.append("Dry run: nothing was changed.")
    return "\n".join(lines)


def format_apply(result: ApplyResult) -> str:
    lines = [f"wrote {len(result.written)} file(s)"]
    lines += [f"kept your edited file as {backup}" for backup in result.backups]
    lines += [f"ran: {' '.join(c.argv)}" for c in result.ran]
    if result.skipped:
        lines.append("not run under --root (run them on the real host):")
        lines += [f"  {' '.join(c.argv)}" for c in result.skipped]
    if result.ownership_skipped:
        lines.append("file owners were not set (not root, or under --root)")
    return "\n".join(lines)
