"""rsync into the mirror, shared by the ssh and local-path sources."""

from __future__ import annotations

from pathlib import Path

from airflow_nodes.syncing.changes import ITEMIZE_FORMAT, Fetched, parse_itemized
from airflow_nodes.syncing.commands import TransferRunner

RSYNC_OK = (0, 24)  # 24: some source files vanished during the transfer; the next run catches up


def rsync_into_mirror(
    runner: TransferRunner, source: str, mirror: Path, what: str, rsh: list[str] | None = None
) -> Fetched:
    """Mirror source/ into mirror/ with rsync; return the itemized changes. Raise OperationError."""
    argv = [
        "rsync", "--archive", "--delete", "--safe-links",  # symlinks out of the tree are not copied
        "--exclude=/.git", "--timeout=120", ITEMIZE_FORMAT,
    ]  # fmt: skip
    if rsh is not None:
        import shlex

        argv += ["--rsh", shlex.join(rsh)]
    result = runner.run([*argv, "--", source.rstrip("/") + "/", f"{mirror}/"], what, ok_codes=RSYNC_OK)
    return Fetched(parse_itemized(result.stdout.decode(errors="surrogateescape")))
