"""Formatting results for people: plain functions from values to text.

Every line stays one line: a path, a note or a warning holding a control character or a line break
(a file name found on disk, a message quoting a file) shows it escaped (sanitise.printable).
"""

from __future__ import annotations

from airflow_nodes.apply import (
    CREATE,
    EDITED,
    FOREIGN,
    FORGET,
    KEEP_EDITED,
    MOVE_ASIDE,
    PERMISSIONS,
    REMOVE,
    UNCHANGED,
    UPDATE,
    ApplyResult,
    Preview,
)
from airflow_nodes.context import NodeContext
from airflow_nodes.init import InitOutcome
from airflow_nodes.sanitise import printable, printable_lines
from airflow_nodes.uninstall import UninstallOutcome

_LABELS = {
    CREATE: "create",
    UPDATE: "update",
    PERMISSIONS: "fix mode",
    UNCHANGED: "unchanged",
    EDITED: "CONFLICT (edited since we wrote it)",
    FOREIGN: "CONFLICT (exists, not written by airflow-node)",
    REMOVE: "remove",
    MOVE_ASIDE: "remove (edited since we wrote it: kept as a backup)",
    KEEP_EDITED: "keep (no longer planned, but edited since we wrote it; --force moves it aside)",
    FORGET: "forget (no longer planned, already gone)",
}


def format_preview(outcome: InitOutcome, show_diff: bool) -> str:
    """Return what init found and plans: the node, each file's status, commands, and optional diffs."""
    node = outcome.node
    ctx = NodeContext(outcome.cluster, node)
    daemons = ", ".join(d.name for d in ctx.daemons)
    header = [
        f"{node.role} node {node.node_name!r} of cluster {outcome.cluster.name!r}: "
        f"Airflow {node.airflow_version}, {node.init_system} ({daemons})",
        *(f"note: {note}" for note in outcome.notes),
    ]
    return "\n".join([*map(printable, header), format_changes(outcome.preview, show_diff)])


def format_changes(prev: Preview, show_diff: bool) -> str:
    """Return a preview's directories, files added, changed and removed, and the commands around them."""
    lines = [f"  mkdir      {prev.target.path(d.path)}" for d in prev.missing_dirs]
    lines += [f"  fix dir    {prev.target.path(d.path)} ({d.mode:o} {d.owner}:{d.group})" for d in prev.wrong_dirs]
    lines += [f"  {_LABELS[c.status]:<10} {prev.target.path(c.file.path)}" for c in prev.changes]
    lines += [f"  {_LABELS[r.status]:<10} {prev.target.path(r.path)}" for r in prev.removals]
    lines += [f"  clean up   {path} (left by an interrupted run)" for path in prev.leftovers]
    if prev.nothing_to_do:
        lines.append("Nothing to change: this node already matches.")
        return "\n".join(map(printable, lines))
    verb = "would run" if show_diff or not prev.real_system else "will run"
    for command in prev.commands:
        lines.append(f"  {verb}: {command.text}   # {command.reason}")
    lines = [printable(line) for line in lines]
    if show_diff:  # a diff is many lines: of its text, only the line breaks act
        lines += [printable_lines(prev.diff(c).rstrip("\n")) for c in prev.changes if c.writes]
        lines += [printable_lines(prev.diff(r).rstrip("\n")) for r in prev.removals if r.removes]
        lines.append("Dry run: nothing was changed.")
    return "\n".join(lines)


def format_apply(result: ApplyResult) -> str:
    """Return what an apply did: files written and removed, backups kept, commands run or left to run."""
    lines = [f"wrote {len(result.written)} file(s)"]
    lines += [f"warning: {warning}" for warning in result.warnings]
    if result.removed:
        lines.append(f"removed what is no longer planned: {', '.join(result.removed)}")
    lines += [f"kept your edited file as {backup}" for backup in result.backups]
    lines += [f"kept {path}: no longer planned, but edited since we wrote it (--force moves it aside)"
              for path in result.kept]  # fmt: skip
    lines += [f"ran: {c.text}" for c in result.ran]
    if result.skipped:
        lines.append("not run under --root (run them on the real host):")
        lines += [f"  {c.text}" for c in result.skipped]
    if result.ownership_skipped:
        lines.append("file owners were not set (not root, or under --root)")
    return "\n".join(map(printable, lines))


def format_uninstall(outcome: UninstallOutcome) -> str:
    """Given what uninstall did, return the applied changes, what the master said, what was kept."""
    lines = [format_apply(outcome.applied), *([outcome.left] if outcome.left else [])]
    if outcome.kept:
        lines.append(f"kept {printable(outcome.kept)} (holds the cluster secrets; --purge removes it)")
    if outcome.kept_database:
        lines.append(f"kept the {outcome.kept_database} (holds the cluster's metadata; --purge drops it); the "
                     "distribution's redis-server and postgresql packages stay installed")  # fmt: skip
    return "\n".join(lines)
