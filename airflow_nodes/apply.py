"""Applying a Plan: the one module that changes the system, always under an injectable root.

The contract:
- preview() only reads: it compares the plan with the disk and with the manifest of what we
  wrote last time, so a file someone edited since is recognised.
- apply() writes every changed file to a temp file beside its target (created with its final
  mode), then renames them all into place. If anything fails, every rename done so far is
  undone and new files and directories are removed: the previous state stays.
- Under a root other than "/", commands that need the real system (useradd, systemctl,
  supervisorctl) and ownership changes are skipped and listed instead.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import MANIFEST_FILE, under_root
from airflow_nodes.plan import Command, Plan, PlannedDir, PlannedFile
from airflow_nodes.redaction import redact

CREATE, UPDATE, PERMISSIONS, UNCHANGED = "create", "update", "permissions", "unchanged"
EDITED, FOREIGN = "edited", "foreign"
BACKUP_SUFFIX = ".airflow-node-backup"

Runner = Callable[[Sequence[str]], None]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What we wrote last time: path -> sha256 of the content, and the directories we created."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        data = {"files": dict(sorted(self.files.items())), "dirs": sorted(self.dirs)}
        return (json.dumps(data, indent=2) + "\n").encode()


def read_manifest(root: Path) -> Manifest:
    path = under_root(root, MANIFEST_FILE)
    try:
        data = json.loads(path.read_text())
        return Manifest(dict(data["files"]), tuple(data["dirs"]))
    except FileNotFoundError:
        return Manifest()
    except (ValueError, KeyError, TypeError, OSError):
        raise UserError(f"{path}: the manifest of written files is corrupt; fix or remove it") from None


@dataclass(frozen=True)
class FileChange:
    file: PlannedFile
    status: str
    old: bytes | None

    @property
    def writes(self) -> bool:
        return self.status != UNCHANGED


@dataclass(frozen=True)
class Preview:
    plan: Plan
    root: Path
    manifest: Manifest
    changes: tuple[FileChange, ...]
    missing_dirs: tuple[PlannedDir, ...]
    missing_users: tuple[str, ...]

    @property
    def real_system(self) -> bool:
        return self.root == Path("/")

    @property
    def conflicts(self) -> list[FileChange]:
        return [c for c in self.changes if c.status in (EDITED, FOREIGN)]

    @property
    def changed_paths(self) -> set[str]:
        return {c.file.path for c in self.changes if c.writes}

    @property
    def commands(self) -> list[Command]:
        user_commands = [
            Command(
                (
                    "useradd",
                    "--system",
                    "--user-group",
                    "--home-dir",
                    user.home,
                    "--shell",
                    user.shell,
                    user.name,
                ),
                f"system user {user.name} for the Airflow daemons",
            )
            for user in self.plan.users
            if user.name in self.missing_users
        ]
        return user_commands + self.plan.commands_after(self.changed_paths)

    @property
    def nothing_to_do(self) -> bool:
        # under --root, a missing user is only listed (never created), so it is no pending change
        users_pending = self.missing_users and self.real_system
        return not self.changed_paths and not self.missing_dirs and not users_pending

    def diff(self, change: FileChange) -> str:
        """Return a unified diff of a change, with secrets redacted."""
        import difflib  # only --dry-run needs it; keep it off the start-up path

        old = (change.old or b"").decode(errors="replace").splitlines(keepends=True)
        new = change.file.content.decode().splitlines(keepends=True)
        label = change.file.path
        text = "".join(difflib.unified_diff(old, new, f"{label} (on disk)", f"{label} (planned)"))
        return redact(text, self.plan.secrets) if change.file.secret else text


def check_root(root: Path) -> None:
    """Raise UserError unless root is (or can be created as) a writable directory."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--root: {root} is not a directory")
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--root: {root} is not writable")


def _user_exists(root: Path, name: str) -> bool:
    """Whether the user exists on the system under root (its etc/passwd; the real database for "/")."""
    if root == Path("/"):
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False
    try:
        lines = under_root(root, "/etc/passwd").read_text().splitlines()
    except OSError:
        return False
    return any(line.split(":", 1)[0] == name for line in lines)


def preview(plan: Plan, root: Path) -> Preview:
    """Given a plan and a root directory, return how the disk differs from the plan. Reads only."""
    check_root(root)
    manifest = read_manifest(root)
    changes = []
    for planned in plan.files:
        target = under_root(root, planned.path)
        if target.is_dir():
            raise UserError(f"{target}: is a directory where airflow-node writes a file")
        try:
            old = target.read_bytes()
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise UserError(f"{target}: cannot read it ({exc.strerror})") from None
        if old is None:
            status = CREATE
        elif old == planned.content:
            # a secret file left world-readable (say, copied by hand) is rewritten with its mode
            status = UNCHANGED if target.stat().st_mode & 0o7777 == planned.mode else PERMISSIONS
        elif planned.path not in manifest.files:
            status = FOREIGN
        elif manifest.files[planned.path] != sha256(old):
            status = EDITED
        else:
            status = UPDATE
        changes.append(FileChange(planned, status, old))
    wanted_dirs = list(plan.dirs)
    for planned in plan.files:  # parents of our files, e.g. /etc/cron.d on a minimal root
        wanted_dirs.append(PlannedDir(str(Path(planned.path).parent), 0o755))
    missing: dict[str, PlannedDir] = {}
    for planned_dir in wanted_dirs:
        for ancestor in [*reversed(Path(planned_dir.path).parents), Path(planned_dir.path)]:
            key = str(ancestor)
            if key not in missing and not under_root(root, key).exists():
                missing[key] = planned_dir if key == planned_dir.path else PlannedDir(key, 0o755)
    missing.pop("/", None)  # the root itself is created, but never ours to remove
    missing_users = [user.name for user in plan.users if not _user_exists(root, user.name)]
    return Preview(plan, root, manifest, tuple(changes), tuple(missing.values()), tuple(missing_users))


def run_command(argv: Sequence[str]) -> None:
    """Run a system command; raise OperationError with the tail of its output if it fails."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise OperationError(f"{argv[0]}: command not found") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise OperationError(f"{' '.join(argv)} failed (exit {result.returncode}): {tail[0]}")


@dataclass
class ApplyResult:
    written: list[str]
    backups: list[str]
    ran: list[Command]
    skipped: list[Command]
    ownership_skipped: bool


def _ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


class _Transaction:
    """Renames done so far, so a failure can put everything back."""

    def __init__(self) -> None:
        self.created_dirs: list[Path] = []
        self.temps: list[Path] = []
        self.replaced: list[tuple[Path, Path | None]] = []  # (target, saved copy of the old file or None)

    def rollback(self) -> None:
        for target, saved in reversed(self.replaced):
            if saved is None:
                target.unlink(missing_ok=True)
            elif target.exists() and os.path.samefile(saved, target):
                saved.unlink()  # never replaced; rename() between two links of one file does nothing
            else:
                os.replace(saved, target)
        for temp in self.temps:
            temp.unlink(missing_ok=True)
        for directory in reversed(self.created_dirs):
            with contextlib.suppress(OSError):  # not empty: something else was put there
                directory.rmdir()

    def commit(self, keep_as_backup: set[Path]) -> list[str]:
        """Drop the saved old files, except those kept beside their target as a backup."""
        backups = []
        for target, saved in self.replaced:
            if saved is None:
                continue
            if target in keep_as_backup:
                backup = target.with_name(target.name + BACKUP_SUFFIX)
                os.replace(saved, backup)
                backups.append(str(backup))
            else:
                saved.unlink(missing_ok=True)
        return backups


def _write_temp(target: Path, content: bytes, mode: int, ids: tuple[int, int] | None) -> Path:
    """Write content to a new temp file beside target, with its final mode and owner before any byte."""
    for attempt in range(100):
        temp = target.with_name(f".{target.name}.airflow-node-tmp{os.getpid()}-{attempt}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o600)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise OperationError(f"{target}: cannot create a temp file beside it")
    try:
        if ids is not None:
            os.fchown(fd, *ids)
        os.fchmod(fd, mode)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return temp


def apply(prev: Preview, force: bool = False, runner: Runner = run_command) -> ApplyResult:
    """Apply a previewed plan atomically. Raise UserError on conflicts (unless force), leaving disk as is."""
    if prev.conflicts and not force:
        names = ", ".join(str(under_root(prev.root, c.file.path)) for c in prev.conflicts)
        raise UserError(f"{names}: changed since airflow-node wrote it (or not ours); keep it, or re-run with --force")
    real = prev.real_system
    for command in prev.commands:
        if real and command.argv[0] == "useradd":
            runner(command.argv)
    set_owner = real and os.geteuid() == 0

    tx = _Transaction()
    result = ApplyResult([], [], [], [], ownership_skipped=not set_owner)
    manifest_files = dict(prev.manifest.files)
    try:
        if not prev.root.exists():
            prev.root.mkdir(parents=True)
            tx.created_dirs.append(prev.root)
        for planned_dir in prev.missing_dirs:
            path = under_root(prev.root, planned_dir.path)
            path.mkdir(mode=planned_dir.mode)
            tx.created_dirs.append(path)
            os.chmod(path, planned_dir.mode)  # mkdir's mode is filtered by the umask
            if set_owner:
                os.chown(path, *_ids(planned_dir.owner, planned_dir.group))
        staged = []
        for change in prev.changes:
            manifest_files[change.file.path] = sha256(change.file.content)
            if not change.writes:
                continue
            target = under_root(prev.root, change.file.path)
            ids = _ids(change.file.owner, change.file.group) if set_owner else None
            temp = _write_temp(target, change.file.content, change.file.mode, ids)
            tx.temps.append(temp)
            staged.append((change, target, temp))
        created = set(prev.manifest.dirs) | {d.path for d in prev.missing_dirs}
        manifest = Manifest(manifest_files, tuple(sorted(created)))
        manifest_target = under_root(prev.root, MANIFEST_FILE)
        manifest_temp = _write_temp(manifest_target, manifest.to_bytes(), 0o644, None)
        tx.temps.append(manifest_temp)
        staged.append((None, manifest_target, manifest_temp))

        for change, target, temp in staged:
            saved = None
            if target.exists():
                saved = target.with_name(f".{target.name}.airflow-node-old{os.getpid()}")
                os.link(target, saved)
            tx.replaced.append((target, saved))
            os.replace(temp, target)
            tx.temps.remove(temp)
            if change is not None:
                result.written.append(str(target))
    except OSError as exc:
        tx.rollback()
        where = exc.filename or prev.root
        raise OperationError(f"{where}: {exc.strerror}; nothing was changed") from None
    except BaseException:
        tx.rollback()
        raise
    result.backups = tx.commit({under_root(prev.root, c.file.path) for c in prev.conflicts})

    for command in prev.commands:
        if command.argv[0] == "useradd":
            (result.ran if real else result.skipped).append(command)
        elif real:
            runner(command.argv)
            result.ran.append(command)
        else:
            result.skipped.append(command)
    return result
