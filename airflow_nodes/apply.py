"""Applying a Plan: the one module that changes the system, always under an injectable root.

The contract:
- preview() only reads: it compares the plan with the disk and with the manifest of what we
  wrote last time, so a file someone edited since is recognised. The difference has three parts,
  as supervisor's own reload plan does: files added, files changed, and files removed (in the
  manifest, no longer planned), each removal with the commands that take it out of service.
- apply() writes every changed file to a temp file beside its target (created with its final
  mode), then renames them all into place. If anything fails, every rename done so far is
  undone and new files and directories are removed: the previous state stays.
- On a Target that is not the real system, commands that need it (useradd, systemctl,
  supervisorctl) and ownership changes are skipped and listed instead.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from airflow_nodes import statefile
from airflow_nodes.atomicfile import fsync_directory, write_atomically, write_temp_beside
from airflow_nodes.digest import sha256
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import MANIFEST_FILE, STATE_DIR
from airflow_nodes.plan import Command, Plan, PlannedDir, PlannedFile
from airflow_nodes.redaction import redact, redact_secret_values, secret_values_in
from airflow_nodes.target import Target, check_creatable_dir

CREATE, UPDATE, PERMISSIONS, UNCHANGED = "create", "update", "permissions", "unchanged"
EDITED, FOREIGN = "edited", "foreign"
# what happens to a file we wrote that the plan no longer has
REMOVE, MOVE_ASIDE, KEEP_EDITED, FORGET = "remove", "move aside", "keep edited", "forget"
BACKUP_SUFFIX = ".airflow-node-backup"
NODE_LOCK_WAIT = 120.0  # seconds init or admit waits for the other (an apply takes seconds)
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Manifest:
    """What we wrote last time: path -> sha256 of the content, and the directories we created."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        data = {"files": dict(sorted(self.files.items())), "dirs": sorted(self.dirs)}
        return (json.dumps(data, indent=2) + "\n").encode()


def read_manifest(target: Target) -> Manifest:
    """Return what we wrote last time. Raise UserError if the manifest is not exactly what we write:
    its paths are acted on as root, so each must be absolute, normalised and a sha256 must be a sha256."""
    path = target.path(MANIFEST_FILE)
    corrupt = UserError(f"{path}: the manifest of written files is corrupt; fix or remove it")
    try:
        data = statefile.load_json(path)
    except UserError:
        raise corrupt from None
    if data is None:
        return Manifest()
    try:
        files, dirs = dict(data["files"]), tuple(data["dirs"])
    except (ValueError, KeyError, TypeError):
        raise corrupt from None
    for name in [*files, *dirs]:
        if not isinstance(name, str) or not name.startswith("/") or str(PurePosixPath(name)) != name or "/.." in name:
            raise corrupt
    if not all(isinstance(d, str) and _DIGEST_RE.match(d) for d in files.values()):
        raise corrupt
    return Manifest(files, dirs)


@dataclass(frozen=True)
class FileChange:
    file: PlannedFile
    status: str
    old: bytes | None
    keeps_backup: bool = False  # the old file holds a secret the new one does not: never lose it

    @property
    def writes(self) -> bool:
        return self.status != UNCHANGED


@dataclass(frozen=True)
class Removal:
    """A file we wrote that the plan no longer has, and what happens to it."""

    path: str
    status: str  # REMOVE, MOVE_ASIDE (edited with --force, or the only copy of a secret), KEEP_EDITED, FORGET
    old: bytes | None

    @property
    def removes(self) -> bool:
        return self.status in (REMOVE, MOVE_ASIDE)


@dataclass(frozen=True)
class Preview:
    plan: Plan
    target: Target
    manifest: Manifest
    changes: tuple[FileChange, ...]
    removals: tuple[Removal, ...]
    missing_dirs: tuple[PlannedDir, ...]
    wrong_dirs: tuple[PlannedDir, ...]  # exist with another mode (or owner, where we set owners)
    orphan_dirs: tuple[str, ...]  # directories we created that nothing planned needs; removed if empty
    missing_users: tuple[str, ...]
    leftovers: tuple[str, ...] = ()  # temp files of a killed run, removed by apply
    force: bool = False

    @property
    def real_system(self) -> bool:
        return self.target.real_system

    @property
    def conflicts(self) -> list[FileChange]:
        return [c for c in self.changes if c.status in (EDITED, FOREIGN)]

    @property
    def changed_paths(self) -> set[str]:
        return {c.file.path for c in self.changes if c.writes}

    @property
    def removed_paths(self) -> list[str]:
        return [r.path for r in self.removals if r.removes]

    @property
    def user_commands(self) -> list[Command]:
        return [
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
                f"system user {user.name} ({user.purpose})",
            )
            for user in self.plan.users
            if user.name in self.missing_users
        ]

    @property
    def stop_commands(self) -> list[Command]:
        """Run before any file changes: they need the files that are about to go."""
        return self.plan.retire_commands(self.removed_paths)[0]

    @property
    def after_commands(self) -> list[Command]:
        """Run once every file is in place: the init system forgets what is gone, reloads what changed."""
        after = self.plan.retire_commands(self.removed_paths)[1]
        return after + [
            c for c in self.plan.commands_after(self.changed_paths) if c.argv not in {a.argv for a in after}
        ]

    @property
    def commands(self) -> list[Command]:
        return self.user_commands + self.stop_commands + self.after_commands + list(self.plan.final_commands)

    @property
    def nothing_to_do(self) -> bool:
        # under --root, a missing user is only listed (never created), so it is no pending change
        users_pending = self.missing_users and self.real_system
        forgotten = any(r.status == FORGET for r in self.removals)
        pending = self.changed_paths or self.removed_paths or self.missing_dirs or self.wrong_dirs or self.leftovers
        return not (pending or users_pending or forgotten or self.plan.final_commands)

    def diff(self, change: FileChange | Removal) -> str:
        """Return a unified diff of a change or a removal, with secrets redacted."""
        import difflib  # only --dry-run needs it; keep it off the start-up path

        if isinstance(change, Removal):
            label, old, new, secret = change.path, change.old, b"", True  # an old file may hold old secrets
        else:
            label, old, new, secret = change.file.path, change.old, change.file.content, change.file.secret
        old_text, new_text = (old or b"").decode(errors="replace"), new.decode()
        if secret:  # both sides: the disk may hold secrets the plan does not know (old or hand-edited)
            before = secret_values_in(old_text)
            old_text = redact(redact_secret_values(old_text), self.plan.secrets)
            new_text = redact(redact_secret_values(new_text, before), self.plan.secrets)
        old_lines, new_lines = old_text.splitlines(keepends=True), new_text.splitlines(keepends=True)
        return "".join(difflib.unified_diff(old_lines, new_lines, f"{label} (on disk)", f"{label} (planned)"))


@contextlib.contextmanager
def node_lock(target: Target, wait: float = NODE_LOCK_WAIT):
    """Hold the node's lock from planning to applying: `init` and `admit` (run by a path unit when a worker
    enrolls) must not interleave their writes and manifests. The lock is on the state directory itself
    (root's; a refused init leaves no lock file behind); a node without one has nothing to race with (its
    first init). Raise UserError naming it when another holds it."""
    state = target.path(STATE_DIR)
    try:
        fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        yield
        return
    try:
        if not statefile.flock_within(fd, wait):
            raise UserError(f"{state}: another airflow-node init or admit has held its lock for {wait:g} s; "
                            "nothing was changed (try again)")  # fmt: skip
        yield
    finally:
        os.close(fd)


def _user_exists(target: Target, name: str) -> bool:
    """Whether the user exists on the target (its etc/passwd; the real database on the real system)."""
    if target.real_system:
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False
    try:
        passwd = statefile.read_bytes(target.path("/etc/passwd")) or b""
    except UserError:
        return False
    return any(line.split(":", 1)[0] == name for line in passwd.decode(errors="replace").splitlines())


def _read_if_file(path: Path) -> bytes | None:
    """Return a file's bytes, or None if there is none. Raise UserError if it is a directory, a link
    (another account may own the directory: root reads and replaces the file itself, never a target)
    or unreadable."""
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path}: is a directory where airflow-node writes a file")
    return statefile.read_bytes(path)


def _drops_secret(old: bytes, kept: set[str]) -> bool:
    """Whether old holds a secret (a Fernet key, a password) that is not among the secrets kept."""
    return bool(secret_values_in(old.decode(errors="replace")) - kept)


def _file_change(target: Target, planned: PlannedFile, manifest: Manifest) -> FileChange:
    path = target.path(planned.path)
    old = _read_if_file(path)
    if old is None:
        status = CREATE
    elif old == planned.content:
        # a secret file left world-readable (say, copied by hand) is rewritten with its mode
        status = UNCHANGED if path.lstat().st_mode & 0o7777 == planned.mode else PERMISSIONS
    elif planned.shared and planned.path in manifest.files:
        status = UPDATE
    elif planned.path not in manifest.files:
        status = FOREIGN
    elif manifest.files[planned.path] != sha256(old):
        status = EDITED
    else:
        status = UPDATE
    rewrites = status in (UPDATE, EDITED, FOREIGN) and old is not None
    keeps_backup = rewrites and planned.secret and _drops_secret(old, secret_values_in(planned.content.decode()))
    _check_backup_path(path, keeps_backup or status in (EDITED, FOREIGN))
    return FileChange(planned, status, old, keeps_backup)


def _check_backup_path(path: Path, needed: bool) -> None:
    """Refuse before anything changes when the backup we would keep cannot be written."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if needed and (backup.is_dir() or backup.is_symlink()):
        raise UserError(f"{backup}: is in the way of the backup of {path.name}; move it away")


def _removal(target: Target, path: str, digest: str, force: bool, kept_secrets: set[str] | None) -> Removal:
    old = _read_if_file(target.path(path))
    if old is None:
        return Removal(path, FORGET, None)
    if sha256(old) != digest:
        status = MOVE_ASIDE if force else KEEP_EDITED
    else:  # ours; still, the only copy of a secret is moved aside, never deleted
        status = MOVE_ASIDE if kept_secrets is not None and _drops_secret(old, kept_secrets) else REMOVE
    _check_backup_path(target.path(path), status == MOVE_ASIDE)
    return Removal(path, status, old)


def _ancestors(path: str) -> list[str]:
    return [str(p) for p in PurePosixPath(path).parents]


def preview(plan: Plan, target: Target, force: bool = False) -> Preview:
    """Given a plan and a target, return how the disk differs from the plan: files added, changed and
    removed (written by us before, no longer planned). Reads only. With force, edited files that are no
    longer planned are moved aside as a backup; without, they are kept."""
    check_creatable_dir(target.root, "--root")
    manifest = read_manifest(target)
    changes = tuple(_file_change(target, planned, manifest) for planned in plan.files)
    planned_paths = plan.paths | set(plan.keep)
    kept_texts = [(_read_if_file(target.path(p)) or b"").decode(errors="replace") for p in plan.keep]
    kept_secrets = set().union(*map(secret_values_in, [f.content.decode() for f in plan.files] + kept_texts))
    if plan.purge_secrets:
        kept_secrets = None
    removals = tuple(
        _removal(target, path, digest, force, kept_secrets)
        for path, digest in sorted(manifest.files.items())
        if path not in planned_paths
    )
    wanted_dirs = [d for d in plan.dirs if not d.created_only]
    for planned in plan.files:  # parents of our files, e.g. /etc/cron.d on a minimal root
        wanted_dirs.append(PlannedDir(str(PurePosixPath(planned.path).parent), 0o755))
    # last: a missing directory goes to the first who wants it, and these are another user's
    wanted_dirs += [d for d in plan.dirs if d.created_only]
    missing: dict[str, PlannedDir] = {}
    for planned_dir in wanted_dirs:
        for ancestor in [*reversed(_ancestors(planned_dir.path)), planned_dir.path]:
            if ancestor not in missing and not target.path(ancestor).exists():
                missing[ancestor] = planned_dir if ancestor == planned_dir.path else PlannedDir(ancestor, 0o755)
    missing.pop("/", None)  # the root itself is created, but never ours to remove
    needed = {d.path for d in wanted_dirs} | {a for p in [*planned_paths, *(d.path for d in wanted_dirs)]
                                               for a in _ancestors(p)}  # fmt: skip
    kept = {r.path for r in removals if not r.removes}
    needed |= {a for path in kept for a in _ancestors(path)}
    orphan_dirs = tuple(sorted((d for d in manifest.dirs if d not in needed), key=lambda d: (-d.count("/"), d)))
    missing_users = tuple(user.name for user in plan.users if not _user_exists(target, user.name))
    wrong_dirs = tuple(d for d in plan.dirs if d.path not in missing and not d.created_only and _dir_differs(target, d))
    leftovers = find_leftovers(target, [*plan.paths, *manifest.files])
    return Preview(
        plan, target, manifest, changes, removals, tuple(missing.values()), wrong_dirs, orphan_dirs, missing_users,
        leftovers, force,
    )  # fmt: skip


def _dir_differs(target: Target, planned: PlannedDir) -> bool:
    """Whether an existing planned directory has another mode, or (where we set owners) owner."""
    path = target.path(planned.path)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return False  # the published DAG folder is a link to a release; a link is never followed here
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: airflow-node needs a directory here, not a file")
    if stat.S_IMODE(info.st_mode) != planned.mode:
        return True
    return target.privileged and (info.st_uid, info.st_gid) != _ids(planned.owner, planned.group)


@dataclass
class ApplyResult:
    written: list[str]
    removed: list[str]
    backups: list[str]
    kept: list[str]  # edited files no longer planned, left as they are
    ran: list[Command]
    skipped: list[Command]
    ownership_skipped: bool
    warnings: list[str] = field(default_factory=list)


def _ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


class _Transaction:
    """Renames and removals done so far, so a failure can put everything back."""

    def __init__(self) -> None:
        self.created_dirs: list[Path] = []
        self.temps: list[Path] = []
        self.replaced: list[tuple[Path, Path | None]] = []  # (target, saved copy of the old file or None)

    def save(self, target: Path) -> Path | None:
        """Keep a hard link to target's current file (if any) so it can be put back. The entry itself, never
        what a link there names: in a directory another account can write, a file checked a moment ago may
        be a link now (root must not link a file of its choosing in there)."""
        if not target.exists() and not target.is_symlink():
            return None
        saved = target.with_name(f".{target.name}.airflow-node-old{os.getpid()}")
        saved.unlink(missing_ok=True)  # left by a killed run of the same pid
        os.link(target, saved, follow_symlinks=False)
        return saved

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


def _set_dir_owner_and_mode(path: Path, planned: PlannedDir, set_owner: bool) -> None:
    """Give a directory its planned mode (mkdir's is filtered by the umask) and owner, through an fd
    opened without following links: the parent may belong to another account."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, planned.mode)
        if set_owner:
            os.fchown(fd, *_ids(planned.owner, planned.group))
    finally:
        os.close(fd)


# atomicfile.write_temp_beside's temp files and _Transaction.save's saved ones
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.airflow-node-(?:tmp(?P<tmp>\d+)-[0-9a-f]+|old(?P<old>\d+))$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_leftovers(target: Target, paths: list[str]) -> tuple[str, ...]:
    """Return the temp and saved files a killed run left beside our files (`.NAME.airflow-node-tmpPID-HEX`,
    `.NAME.airflow-node-oldPID`, for a NAME we write and a PID no longer running)."""
    names: dict[Path, set[str]] = {}
    for path in [*paths, MANIFEST_FILE]:
        node_path = target.path(path)
        names.setdefault(node_path.parent, set()).add(node_path.name)
    removed = []
    for directory, ours in names.items():
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            match = _LEFTOVER.match(entry.name)
            if not match or match["name"] not in ours or not entry.is_file(follow_symlinks=False):
                continue
            if not _pid_alive(int(match["tmp"] or match["old"])):
                removed.append(entry.path)
    return tuple(removed)


def _run_all(prev: Preview, commands: list[Command], result: ApplyResult, tolerate: bool = False) -> None:
    """Run commands on the real system (list them otherwise). With tolerate, a failure is a warning: a
    unit or program to retire that is already gone must not keep its files in place."""
    for command in commands:
        if not prev.real_system:
            result.skipped.append(command)
            continue
        try:
            if command.only_if:
                try:
                    prev.target.runner(command.only_if)
                except OperationError:
                    continue  # say, supervisord not running yet: starting it reads the new config
            if command.input is None and command.user is None:
                prev.target.runner(command.argv)
            else:
                prev.target.runner(command.argv, input=command.input, user=command.user)
        except OperationError as exc:
            if not tolerate:
                raise
            result.warnings.append(str(exc))
            continue
        result.ran.append(command)


def apply(prev: Preview) -> ApplyResult:
    """Apply a previewed plan atomically: write what is added or changed, retire and remove what is no
    longer planned. Raise UserError on conflicts (unless the preview was forced), leaving disk as is."""
    if prev.conflicts and not prev.force:
        names = ", ".join(str(prev.target.path(c.file.path)) for c in prev.conflicts)
        raise UserError(f"{names}: changed since airflow-node wrote it (or not ours); keep it, or re-run with --force")
    target = prev.target
    set_owner = target.privileged
    result = ApplyResult([], [], [], [], [], [], ownership_skipped=not set_owner)
    for leftover in prev.leftovers:
        Path(leftover).unlink(missing_ok=True)
        result.removed.append(leftover)
    _run_all(prev, prev.user_commands, result)
    _run_all(prev, prev.stop_commands, result, tolerate=True)

    tx = _Transaction()
    manifest_files = {r.path: prev.manifest.files[r.path] for r in prev.removals if r.status == KEEP_EDITED}
    manifest_files.update({p: prev.manifest.files[p] for p in prev.plan.keep if p in prev.manifest.files})
    try:
        if not target.root.exists():
            target.root.mkdir(parents=True)
            tx.created_dirs.append(target.root)
        for planned_dir in prev.missing_dirs:
            path = target.path(planned_dir.path)
            path.mkdir(mode=planned_dir.mode)
            tx.created_dirs.append(path)
            _set_dir_owner_and_mode(path, planned_dir, set_owner)
        for planned_dir in prev.wrong_dirs:  # say, a state directory an older version gave to airflow
            _set_dir_owner_and_mode(target.path(planned_dir.path), planned_dir, set_owner)
        staged = []
        for change in prev.changes:
            manifest_files[change.file.path] = sha256(change.file.content)
            if not change.writes:
                continue
            path = target.path(change.file.path)
            ids = _ids(change.file.owner, change.file.group) if set_owner else None
            temp = write_temp_beside(path, change.file.content, change.file.mode, ids)
            tx.temps.append(temp)
            staged.append((path, temp))

        for path, temp in staged:
            tx.replaced.append((path, tx.save(path)))
            os.replace(temp, path)
            tx.temps.remove(temp)
            result.written.append(str(path))
        for removal in prev.removals:
            if removal.removes:
                path = target.path(removal.path)
                tx.replaced.append((path, tx.save(path)))
                path.unlink()
                result.removed.append(str(path))
            elif removal.status == KEEP_EDITED:
                result.kept.append(str(target.path(removal.path)))
        created = set(prev.manifest.dirs) | {d.path for d in prev.missing_dirs}
        manifest = Manifest(manifest_files, tuple(sorted(created)))
        manifest_path = target.path(MANIFEST_FILE)
        manifest_temp = write_temp_beside(manifest_path, manifest.to_bytes(), 0o644)
        tx.temps.append(manifest_temp)
        tx.replaced.append((manifest_path, tx.save(manifest_path)))
        os.replace(manifest_temp, manifest_path)
        tx.temps.remove(manifest_temp)
        for directory in sorted({path.parent for path, _ in staged} | {manifest_path.parent}):
            fsync_directory(directory)
    except OSError as exc:
        tx.rollback()
        where = exc.filename or target.root
        raise OperationError(f"{where}: {exc.strerror}; nothing was changed") from None
    except BaseException:
        tx.rollback()
        raise
    moved_aside = {target.path(r.path) for r in prev.removals if r.status == MOVE_ASIDE}
    backed_up = {target.path(c.file.path) for c in prev.changes if c.keeps_backup or c in prev.conflicts}
    result.backups = tx.commit(backed_up | moved_aside)
    _remove_orphan_dirs(prev, manifest, result)
    _run_all(prev, prev.after_commands, result)
    _run_all(prev, list(prev.plan.final_commands), result)
    return result


def _remove_orphan_dirs(prev: Preview, manifest: Manifest, result: ApplyResult) -> None:
    """Remove the directories we created that nothing planned needs, deepest first, when empty; a
    directory that still holds something (DAGs, logs, a file we keep) stays ours in the manifest."""
    gone = []
    for directory in prev.orphan_dirs:
        path = prev.target.path(directory)
        try:
            path.rmdir()
        except FileNotFoundError:
            gone.append(directory)
        except OSError:
            continue
        else:
            gone.append(directory)
            result.removed.append(f"{path}/")
    if gone:
        kept_dirs = tuple(d for d in manifest.dirs if d not in gone)
        write_atomically(prev.target.path(MANIFEST_FILE), Manifest(manifest.files, kept_dirs).to_bytes())
