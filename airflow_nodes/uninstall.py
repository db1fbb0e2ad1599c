"""`airflow-node uninstall`: remove exactly what init installed, and nothing a person changed."""

from __future__ import annotations

from pathlib import Path

from airflow_nodes.apply import read_manifest, run_command, sha256
from airflow_nodes.context import load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.initsystems import get_init_system
from airflow_nodes.node import CLUSTER_FILE, MANIFEST_FILE, under_root


def uninstall(root: Path, purge: bool = False, force: bool = False) -> str:
    """Stop the role, then delete the files in the manifest whose content is still ours.

    The cluster file is kept unless purge: it holds the Fernet key, without which encrypted
    connections and variables in the metadata DB cannot be read.
    """
    manifest = read_manifest(root)
    if not manifest.files:
        raise UserError(f"{under_root(root, MANIFEST_FILE)}: nothing was installed here by airflow-node")
    lines = []
    try:
        ctx = load_context(root)
    except UserError:
        ctx = None
    if ctx and root == Path("/"):
        init_system = get_init_system(ctx.node.init_system)
        for argv in init_system.control_argv(ctx, "stop"):
            try:
                run_command(argv)
            except OperationError as exc:
                lines.append(f"warning: {exc}")
    kept = []
    for path, digest in sorted(manifest.files.items()):
        target = under_root(root, path)
        if path == CLUSTER_FILE and not purge:
            kept.append(f"{target} (holds the cluster secrets; --purge removes it)")
            continue
        try:
            ours = sha256(target.read_bytes()) == digest
        except FileNotFoundError:
            continue
        if not ours and not force:
            kept.append(f"{target} (edited since we wrote it; --force removes it)")
            continue
        target.unlink()
        lines.append(f"removed {target}")
    under_root(root, MANIFEST_FILE).unlink(missing_ok=True)
    for directory in sorted(manifest.dirs, key=len, reverse=True):
        path = under_root(root, directory)
        try:
            path.rmdir()
            lines.append(f"removed {path}/")
        except OSError:
            pass  # not empty: data (DAGs, logs) or files we keep
    if ctx and root == Path("/") and ctx.node.init_system == "systemd":
        run_command(("systemctl", "daemon-reload"))
    elif ctx and root == Path("/"):
        for argv in (("reread",), ("update", ctx.role_name)):
            run_command(("supervisorctl", "-c", ctx.node.supervisord_conf, *argv))
    lines += [f"kept {item}" for item in kept]
    return "\n".join(lines)
