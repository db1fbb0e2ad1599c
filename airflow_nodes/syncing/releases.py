"""DAG releases: complete, immutable trees published by one atomic rename of the DAG folder symlink.

Layout, under /var/lib/airflow-node/dags (re-rooted under --root):
  mirror/               the source as last fetched (never read by Airflow)
  releases/<revision>/  published trees; unchanged files are hard links shared between releases
  manifests/<revision>.json   path -> (kind, sha256) of each release, so a new revision is hashed
                        from what changed only
  staging/              a release being built; removed if a run dies
  mirror.unpublished    present while the mirror holds something not yet published (or refused)
  offered               on the master: the revision workers are to hold (its newest release)

{airflow_home}/dags (Airflow's dags_folder, never changed in airflow.cfg) is a symlink to
releases/<revision>. Readers that resolve it once per pass (realpath, then walk) see one complete
revision. A release is also a DAG version (Airflow 3's bundle version is its directory name): it
stays on disk while it is among the `keep` newest or younger than `keep_days`, as runs created with
it may still need it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute, statefile
from airflow_nodes.atomicfile import replace_symlink, write_atomically
from airflow_nodes.digest import sha256, sha256_file
from airflow_nodes.errors import UserError
from airflow_nodes.node import DAG_RELEASES_DIR, under_root
from airflow_nodes.syncing.changes import ITEMIZE_FORMAT, Change, parse_itemized

FILE, LINK, DIR = "f", "l", "d"
RELEASE_NAME = re.compile(r"[0-9a-f]{16}")  # a release directory: the first 16 hex digits of its revision
REVISION = re.compile(r"[0-9a-f]{64}")
MAX_LISTED = 10_000  # release names the master's gate lists, and a worker takes from its answer
Manifest = dict[str, tuple[str, str]]  # relative path -> (kind, sha256 of content or link target)


@dataclass(frozen=True)
class DagLayout:
    """Every path sync touches on one node, already re-rooted."""

    root: Path
    dags_folder: Path  # {airflow_home}/dags: the symlink Airflow reads through

    @property
    def base(self) -> Path:
        return under_root(self.root, DAG_RELEASES_DIR)

    @property
    def mirror(self) -> Path:
        return self.base / "mirror"

    @property
    def releases(self) -> Path:
        return self.base / "releases"

    @property
    def manifests(self) -> Path:
        return self.base / "manifests"

    @property
    def staging(self) -> Path:
        return self.base / "staging"

    @property
    def unpublished_marker(self) -> Path:
        return self.base / "mirror.unpublished"

    @property
    def offered_file(self) -> Path:
        return self.base / "offered"

    def release_dir(self, revision: str) -> Path:
        return self.releases / revision[:16]

    def manifest_file(self, revision_dir: Path) -> Path:
        return self.manifests / f"{revision_dir.name}.json"


@dataclass(frozen=True)
class DagRelease:
    """A published tree: its content hash, where it lives, and how many files it holds."""

    revision: str
    path: Path
    manifest: Manifest

    @property
    def file_count(self) -> int:
        return sum(1 for kind, _ in self.manifest.values() if kind == FILE)


@dataclass(frozen=True)
class BuiltRelease:
    """A complete tree in staging, not yet visible to Airflow."""

    revision: str
    path: Path
    manifest: Manifest
    changed: tuple[str, ...]  # files created or changed relative to the current release
    deleted_files: int
    skipped_links: tuple[str, ...]  # symlinks pointing outside the tree, not published

    @property
    def file_count(self) -> int:
        return sum(1 for kind, _ in self.manifest.values() if kind == FILE)


def tree_revision(manifest: Manifest) -> str:
    """Given a manifest, return the tree's content hash (sha256 hex over sorted paths, kinds, digests)."""
    digest = hashlib.sha256()
    for path in sorted(manifest):
        kind, content = manifest[path]
        digest.update(f"{kind} {content} {path}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()


def check_dags_folder(layout: DagLayout) -> None:
    """Raise UserError if the DAG folder is a real directory with content: we never delete people's files."""
    folder = layout.dags_folder
    if folder.is_symlink() or not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"{folder}: is a file where the DAG folder symlink belongs; move it away")
    if any(folder.iterdir()):
        raise UserError(
            f"{folder}: is a directory with files in it; sync publishes DAGs by replacing it with a symlink: "
            "move its files to the DAG source and remove it"
        )


def current_release(layout: DagLayout) -> DagRelease | None:
    """Return the release the DAG folder points to (with its manifest), or None before the first publish."""
    if not layout.dags_folder.is_symlink():
        return None
    target = Path(os.readlink(layout.dags_folder))
    if target.parent != layout.releases or not _is_real_dir(target):
        return None
    try:
        data = json.loads(statefile.read_text(layout.manifest_file(target)) or "")
        manifest = {path: (kind, digest) for path, (kind, digest) in data["entries"].items()}
        return DagRelease(data["revision"], target, manifest)
    except (UserError, ValueError, KeyError, TypeError, RecursionError):
        return None  # rebuilt in full from the mirror: slower, never wrong


def _is_real_dir(path: Path) -> bool:
    """A directory, not a link to one: the release tree is root's, and root never follows a link there."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def prepare_work_dirs(layout: DagLayout, owner: tuple[int, int] | None) -> None:
    """Create the release directories; remove staging left by a run that died. owner: the account that
    fetches into the mirror (a mirror of another account's is removed, to be fetched anew)."""
    # each directory is made ours before anything below it is looked at: an older install left them to
    # the airflow account, which could swap one for a link root would then prune or write through
    for directory in (layout.base.parent, layout.base, layout.releases, layout.manifests, layout.mirror):
        directory.mkdir(parents=True, exist_ok=True)
        if not _is_real_dir(directory):  # a link planted there would send rsync --delete elsewhere
            raise UserError(f"{directory}: is a link or a file where sync keeps a directory; remove it")
        if directory != layout.mirror:
            _take_back(directory)
    for leftover in (layout.staging, layout.unpublished_marker):  # a link or a stray file: never followed
        if leftover.is_symlink() or (leftover == layout.staging and leftover.is_file()):
            leftover.unlink()
    if layout.staging.exists():
        shutil.rmtree(layout.staging)
    layout.staging.mkdir(mode=0o700)  # root's alone while it builds: nobody swaps a directory for a link
    if owner is not None:
        if layout.mirror.lstat().st_uid != owner[0]:  # another account's (the airflow one, before 0.4): fetched anew
            shutil.rmtree(layout.mirror)  # never follows a link inside
            layout.mirror.mkdir()
        os.chown(layout.mirror, *owner, follow_symlinks=False)
    # the fetching account's alone: a setuid file it fetched is no way into that account for anyone
    os.chmod(layout.mirror, 0o700, follow_symlinks=False)


def unpublished(mirror: Path, built: BuiltRelease) -> tuple[list[str], list[str]]:
    """Given the mirror and the release built from it, return (the files and directories it lacks, the
    special files it lacks): what the source holds must be published, or said aloud (a FIFO or device
    is no DAG file; a symlink out of the tree is reported by the build). The whole mirror is walked,
    not only what the transfer said changed: this is the net under that list's parsing."""
    lost: list[str] = []
    special: list[str] = []
    directories = [("", str(mirror))]  # (relative prefix, path): scandir, no os.path.relpath per entry
    while directories:
        prefix, directory = directories.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir and not prefix and entry.name == ".git":
                    continue  # a git source's own, never published
                rel = prefix + entry.name
                if is_dir:
                    directories.append((rel + "/", entry.path))
                if rel in built.manifest or rel in built.skipped_links:
                    continue
                kind = entry.stat(follow_symlinks=False).st_mode
                (lost if stat.S_ISDIR(kind) or stat.S_ISREG(kind) or stat.S_ISLNK(kind) else special).append(rel)
    return lost, special


def _take_back(directory: Path) -> None:
    """Make a directory of ours ours alone (mode 0755: the airflow account walks through to its releases),
    through a descriptor opened without following a link."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            os.fchown(fd, os.geteuid(), os.getegid())
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def local_changes(source: Path, current: Path) -> tuple[Change, ...]:
    """Given two local trees, return what differs (rsync dry run by checksum; .git skipped).

    By checksum, because git checks files out with the current time: a same-size edit checked out
    in the same second as the last one would look unchanged to rsync's size-and-mtime check. Modes as
    a release holds them (no setuid, setgid or sticky bit), or such a file would differ every time.
    """
    argv = ["rsync", "-a", "--chmod=ugo-st", "--checksum", "--delete", "--safe-links", "--dry-run", "--exclude=/.git",
            ITEMIZE_FORMAT, f"{source}/", f"{current}/"]  # fmt: skip
    result = execute.run(argv, what=f"comparing {source} with {current}", errors="surrogateescape")
    return parse_itemized(result.stdout)


def _link_is_safe(relative: str, target: str) -> bool:
    """Whether a symlink at `relative` pointing to `target` stays inside the tree (as rsync --safe-links)."""
    if os.path.isabs(target):
        return False
    resolved = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    return resolved != ".." and not resolved.startswith("../")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _release_mode(mode: int, directory: bool = False) -> int:
    """A release's permission bits: readable by its group (the airflow account reads it), writable by its
    owner alone (root: no task edits a published DAG or plants a link root would build through), never
    a setuid, setgid or sticky bit."""
    return (mode & 0o755) | (0o050 if directory else 0o040)


def release_is_ours(release: Path, owner: tuple[int, int] | None) -> bool:
    """Whether a release directory is one we built as releases are now (its owner root, or `owner`): one
    from before 0.4 belongs to the airflow account, which may have changed it, so nothing is built from it."""
    try:
        return release.lstat().st_uid == (owner[0] if owner else os.geteuid())
    except OSError:
        return False


def _copy_file(source: Path, target: Path, owner: tuple[int, int] | None) -> str | None:
    """Copy a regular file to a new target that has its final owner and mode (no setuid, setgid or
    sticky bit) before it holds a byte, and the source's times. Return its sha256, or None if the
    source is gone or no longer a regular file (changed since it was listed): then nothing is created.
    """
    try:  # the mirror is not root's: never follow a link there, never wait on a FIFO planted there
        fd_in = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise
    with os.fdopen(fd_in, "rb") as reader:
        info = os.fstat(fd_in)
        if not stat.S_ISREG(info.st_mode):
            return None
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd_out, "wb") as writer:
            if owner is not None:
                os.fchown(fd_out, *owner)
            os.fchmod(fd_out, _release_mode(info.st_mode))
            digest = hashlib.sha256()
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.utime(fd_out, ns=(info.st_atime_ns, info.st_mtime_ns))
    return digest.hexdigest()


def _make_dir(target: Path, info: os.stat_result, owner: tuple[int, int] | None) -> None:
    """Create (or keep) a directory with its final owner and plain mode, and the source's times."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    target.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(target, *owner, follow_symlinks=False)
    os.chmod(target, _release_mode(info.st_mode, directory=True))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def _drop_under(manifest: Manifest, prefix: str) -> None:
    for key in [k for k in manifest if k.startswith(prefix + "/")]:
        del manifest[key]


def _new_staging_dir(layout: DagLayout) -> Path:
    return layout.staging / f"build-{os.getpid()}-{time.monotonic_ns()}"


def build_release(
    layout: DagLayout,
    current: DagRelease | None,
    changes: tuple[Change, ...] | None,
    owner: tuple[int, int] | None,
) -> BuiltRelease:
    """Given the current release and what changed in the mirror, return a complete new tree in staging.

    Unchanged files are hard links to the current release (cost proportional to the change); changed
    files are fresh copies, so a published inode is never written. Without a current release or a
    change list, the whole mirror is copied.
    """
    staging = _new_staging_dir(layout)
    if current is None or changes is None or not release_is_ours(current.path, owner):
        return _build_full(layout, staging, current, owner)
    execute.run(["cp", "-al", "--", current.path, staging], what="linking the current release")
    manifest = dict(current.manifest)
    changed: list[str] = []
    skipped: list[str] = []
    deleted_files = 0
    for change in sorted((c for c in changes if c.deleted), key=lambda c: c.path.count("/"), reverse=True):
        kind = manifest.pop(change.path, ("",))[0]
        deleted_files += kind == FILE
        if kind == DIR:  # its files were listed before it (deepest first); this catches any left
            deleted_files += sum(
                1 for k, (entry, _) in manifest.items() if k.startswith(change.path + "/") and entry == FILE
            )
            _drop_under(manifest, change.path)
        _remove(staging / change.path)
    for change in sorted((c for c in changes if not c.deleted), key=lambda c: c.path.count("/")):
        source, target = layout.mirror / change.path, staging / change.path
        try:
            info = source.lstat()
        except FileNotFoundError:  # gone since the listing: it is not in the new tree either
            if target.is_symlink() or target.exists():
                deleted_files += manifest.get(change.path, ("",))[0] == FILE
                _remove(target)
            if manifest.pop(change.path, ("",))[0] == DIR:
                _drop_under(manifest, change.path)
            continue
        if stat.S_ISDIR(info.st_mode):
            _make_dir(target, info, owner)
            manifest[change.path] = (DIR, "")
            continue
        if target.is_symlink() or target.exists():
            _remove(target)  # never write through a link into the current release's inode
        if manifest.pop(change.path, ("",))[0] == DIR:
            _drop_under(manifest, change.path)
        if stat.S_ISLNK(info.st_mode):
            link = os.readlink(source)
            if not _link_is_safe(change.path, link):
                skipped.append(change.path)
                continue
            os.symlink(link, target)
            if owner is not None:
                os.chown(target, *owner, follow_symlinks=False)
            manifest[change.path] = (LINK, sha256(link.encode(errors="surrogateescape")))
        elif stat.S_ISREG(info.st_mode) and (digest := _copy_file(source, target, owner)):
            manifest[change.path] = (FILE, digest)
            changed.append(change.path)
    for path in list(changed):
        if path not in manifest:
            changed.remove(path)
    return BuiltRelease(tree_revision(manifest), staging, manifest, tuple(changed), deleted_files, tuple(skipped))


def _build_full(
    layout: DagLayout, staging: Path, current: DagRelease | None, owner: tuple[int, int] | None
) -> BuiltRelease:
    # rsync gives each file its final owner and mode before renaming it into place: never a setuid copy
    chown = [f"--chown={owner[0]}:{owner[1]}"] if owner is not None else []
    argv = ["rsync", "-a", "--chmod=ugo-st,go-w,g+rX", *chown, "--safe-links", "--exclude=/.git",
            f"{layout.mirror}/", f"{staging}/"]  # fmt: skip
    execute.run(argv, what="copying the mirror")
    manifest: Manifest = {}
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, staging)
            info = os.lstat(full)
            if stat.S_ISDIR(info.st_mode):
                manifest[rel] = (DIR, "")
            elif stat.S_ISLNK(info.st_mode):
                link = os.readlink(full)
                if not _link_is_safe(rel, link):
                    os.unlink(full)
                    skipped.append(rel)
                    continue
                manifest[rel] = (LINK, sha256(link.encode(errors="surrogateescape")))
            elif stat.S_ISREG(info.st_mode):
                manifest[rel] = (FILE, sha256_file(Path(full)))
            else:
                os.unlink(full)
    old = current.manifest if current else {}
    changed = tuple(p for p, entry in manifest.items() if entry[0] == FILE and old.get(p) != entry)
    deleted = sum(1 for p, (kind, _) in old.items() if kind == FILE and manifest.get(p, ("",))[0] != FILE)
    return BuiltRelease(tree_revision(manifest), staging, manifest, changed, deleted, tuple(skipped))


def add_release(layout: DagLayout, built: BuiltRelease, owner: tuple[int, int] | None) -> DagRelease:
    """Move a built tree to releases/ (flip_dags_folder then publishes it). Return it.

    A revision already on disk (say, a revert) is re-used as it is: releases are never modified.
    """
    final = layout.release_dir(built.revision)
    if final.is_symlink() or (final.exists() and not _is_real_dir(final)):
        final.unlink()  # not a release we made: rebuilt below
    outdated = None
    if _is_real_dir(final) and not release_is_ours(final, owner):
        outdated = final.with_name(f".{final.name}.outdated-{os.getpid()}")  # the airflow account's: replaced
        os.rename(final, outdated)
    if _is_real_dir(final):
        shutil.rmtree(built.path)
    else:
        execute.run(["sync", "-f", built.path], ok_codes=None)  # data on disk before it is visible
        os.rename(built.path, final)
    os.utime(final)  # publish order, for pruning
    entries = {path: list(entry) for path, entry in sorted(built.manifest.items())}
    write_atomically(layout.manifest_file(final), json.dumps({"revision": built.revision, "entries": entries}).encode())
    if outdated is not None:
        shutil.rmtree(outdated)  # never follows a link inside
    return DagRelease(built.revision, final, built.manifest)


def flip_dags_folder(dags_folder: Path, target: Path) -> None:
    """Point dags_folder at target with a single rename of a new symlink over the old one.

    The first publish replaces the empty directory `init` created (checked by check_dags_folder).
    """
    if dags_folder.is_dir() and not dags_folder.is_symlink():
        dags_folder.rmdir()  # empty (checked before the run): nothing was published yet
    replace_symlink(dags_folder, target)  # root's link (no chown: the account could swap in a hard link first)


def held_release(layout: DagLayout, name: str, owner: tuple[int, int] | None) -> Path | None:
    """The release directory `name` (16 hex digits) if this node holds it as a release of ours, else None."""
    path = layout.releases / name
    return path if RELEASE_NAME.fullmatch(name) and _is_real_dir(path) and release_is_ours(path, owner) else None


def release_names(releases: Path, limit: int = MAX_LISTED) -> list[str]:
    """The names of the releases in a releases directory (at most `limit`, sorted)."""
    try:
        names = [entry.name for entry in os.scandir(releases) if RELEASE_NAME.fullmatch(entry.name)]
    except OSError:
        return []
    return sorted(names)[:limit]


def write_offered(layout: DagLayout, revision: str) -> None:
    """On the master: record the revision workers are to hold (what the gate's `release` answers)."""
    write_atomically(layout.offered_file, f"{revision}\n".encode(), 0o644)


def read_offered(path: Path) -> str:
    """The revision an offered file names, or "" (none yet, or not a revision)."""
    text = (statefile.read_text(path, limit=256) or "").strip()
    return text if REVISION.fullmatch(text) else ""


def prune_releases(layout: DagLayout, keep: int, keep_days: float = 0.0) -> list[str]:
    """Remove the releases that are neither among the `keep` newest nor replaced in the last `keep_days`
    (a release is replaced when the next newer one is published; never the published or the offered
    one). Return the names removed."""
    published = Path(os.readlink(layout.dags_folder)).name if layout.dags_folder.is_symlink() else None
    offered = read_offered(layout.offered_file)[:16]
    published_at = sorted(((p.lstat().st_mtime, p) for p in layout.releases.iterdir()), reverse=True)
    oldest_kept = time.time() - keep_days * 86400
    removed = []
    for (replaced_at, _), (_, release) in zip(published_at[keep - 1 :], published_at[keep:], strict=False):
        if release.name in (published, offered) or replaced_at >= oldest_kept:
            continue
        if release.is_symlink():
            release.unlink()
        else:
            shutil.rmtree(release, ignore_errors=True)
        layout.manifest_file(release).unlink(missing_ok=True)
        removed.append(release.name)
    return removed
