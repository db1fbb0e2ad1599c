"""`airflow-node sync`: one run, under the lock: DAGs from the source, then the cluster file from the master."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pwd
import shlex
import shutil
import socket
import time
from dataclasses import dataclass, field

from airflow_nodes import defaults
from airflow_nodes.config_sync import ConfigSyncOutcome, sync_config
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.dagsource import PATH, DagSourceSpec, parse_dags_source
from airflow_nodes.detect import installed_package_hash
from airflow_nodes.digest import sha256_file
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.fleet import publish_record
from airflow_nodes.node import CLUSTER_FILE, DAG_RELEASES_DIR, KNOWN_HOSTS_FILE, SSH_KEY_FILE, SYNC_LOCK_FILE, SYNC_USER
from airflow_nodes.redaction import redact
from airflow_nodes.sanitise import printable
from airflow_nodes.sshkeys import pinned
from airflow_nodes.syncing.checks import Guards, check_guards, check_python
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.syncing.lock import sync_lock
from airflow_nodes.syncing.logline import log_run
from airflow_nodes.syncing.offer import ring, wait_for_workers
from airflow_nodes.syncing.releases import (
    MAX_LISTED,
    RELEASE_NAME,
    REVISION,
    DagLayout,
    add_release,
    build_release,
    check_dags_folder,
    current_release,
    flip_dags_folder,
    held_release,
    local_changes,
    prepare_work_dirs,
    prune_releases,
    release_is_ours,
    unpublished,
    write_offered,
)
from airflow_nodes.syncing.source import open_source
from airflow_nodes.syncing.state import SyncState, read_state, write_state
from airflow_nodes.target import Target
from airflow_nodes.timestamps import utc_now
from airflow_nodes.versions import parse_airflow_version

PUBLISHED, UNCHANGED, SKIPPED = "published", "unchanged", "skipped"
NOT_FOLLOWING = "only a worker joined to the master fetches a release of the master's by its name"


@dataclass(frozen=True)
class SyncRequest:
    target: Target
    guards: Guards = Guards()
    keep_releases: int = defaults.KEEP_RELEASES
    lock_wait: float = defaults.LOCK_WAIT
    ssh_key: str | None = None
    ssh_extra: tuple[str, ...] = ()  # from $AIRFLOW_NODE_SSH_OPTS
    dags_only: bool = False
    master_root: str = ""  # tests: the master's files live under this directory
    splay: float = 0.0  # seconds: wait this node's own share of them first (splay_of)
    keep_days: float = defaults.RELEASE_KEEP_DAYS
    wanted: str = ""  # a worker: fetch this release (its name) from the master, add it, publish nothing
    worker_wait: float = defaults.WORKER_WAIT  # the master on Airflow 2: seconds it waits for the workers


def splay_of(node_name: str, splay: float) -> float:
    """Given a node's name and a splay, return how long that node waits: a fixed share of the splay,
    the same on every run (like systemd's FixedRandomDelay), different from node to node."""
    share = int.from_bytes(hashlib.sha256(node_name.encode()).digest()[:8], "big") / 2**64
    return share * splay


@dataclass(frozen=True)
class DagOutcome:
    status: str  # PUBLISHED or UNCHANGED
    revision: str
    source_revision: str
    changed_files: int = 0
    deleted_files: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncResult:
    status: str  # PUBLISHED, UNCHANGED or SKIPPED
    dags: DagOutcome | None = None
    config: ConfigSyncOutcome | None = None
    seconds: float = 0.0
    details: tuple[str, ...] = field(default=())  # -v

    @property
    def summary(self) -> str:
        """One line, for people and syslog."""
        if self.status == SKIPPED:
            return self.details[0] if self.details else "another sync is running; skipped"
        dags = self.dags
        if dags and dags.status == PUBLISHED:
            text = f"dags published {dags.revision[:12]} ({dags.changed_files} changed, {dags.deleted_files} deleted)"
        else:
            text = f"dags unchanged at {dags.revision[:12] if dags and dags.revision else 'nothing published'}"
        if dags and dags.warnings:
            text += f"; {len(dags.warnings)} warning(s): {dags.warnings[0]}"
        if self.config is None:
            text += "; config not synced here"
        elif self.config.changed:
            verb = "restarted" if self.config.ran_commands else "to run"
            text += f"; config re-rendered, {verb}: {', '.join(self.config.commands) or 'nothing'}"
        else:
            text += "; config unchanged"
        return f"{text} ({self.seconds:.2f} s)"


@dataclass(frozen=True)
class Accounts:
    """Who fetches and who reads, as root on the real system: the sync account fetches into the mirror it
    owns (no task can read its key or change what root builds from); releases are root's, read by the
    airflow group (no task can change a published DAG). None: ourselves (under --root, or not root)."""

    transfer_user: str | None = None
    mirror_owner: tuple[int, int] | None = None
    release_owner: tuple[int, int] | None = None


def _accounts(ctx: NodeContext, target: Target) -> Accounts:
    if not target.privileged:
        return Accounts()
    try:
        airflow = pwd.getpwnam(ctx.cluster.airflow_user)
    except KeyError:
        where = f"{CLUSTER_FILE}: cluster.airflow_user"
        raise UserError(f"{where} {ctx.cluster.airflow_user!r} does not exist here") from None
    readable = (0, airflow.pw_gid)  # releases: root's, read by the airflow group
    try:
        fetcher = pwd.getpwnam(SYNC_USER)
    except KeyError:  # a node set up before the sync account: its next `airflow-node init` makes it
        return Accounts(ctx.cluster.airflow_user, (airflow.pw_uid, airflow.pw_gid), readable)
    return Accounts(SYNC_USER, (fetcher.pw_uid, fetcher.pw_gid), readable)


def effective_source(ctx: NodeContext) -> DagSourceSpec:
    """The DAG source this node reads: on a master, an SSH spec naming this very host is read locally (a
    master that joined reads the first master's through its gate)."""
    spec = parse_dags_source(ctx.cluster.dags_source, f"{CLUSTER_FILE}: dags.source")
    if ctx.role.creates_cluster and spec.is_on(ctx.own_address, socket.gethostname(), socket.getfqdn()):
        return DagSourceSpec(PATH, path=spec.path)
    return spec


def follows_master_releases(ctx: NodeContext, target: Target, spec: DagSourceSpec) -> bool:
    """Whether this node copies the master's releases rather than building from the DAG source itself: a
    worker joined through the gate whose DAG source is the master's. It then holds exactly the trees the
    master's Airflow reads, under the same names (the DAG versions of Airflow 3's bundle)."""
    joined = ctx.role.follows_master or ctx.role.creates_cluster  # a master that joined: its source is the first's
    return joined and spec.is_on(ctx.cluster.master_host) and target.path(SSH_KEY_FILE).exists()


def ask_masters(transfer: TransferRunner, spec: DagSourceSpec, hosts: tuple[str, ...], *words: str):
    """Ask the masters' gates one request, each in turn until one answers; return its answer and the
    source spec naming that master. Raise OperationError naming each master that did not answer."""
    failures = []
    for host in hosts or (str(spec.host),):
        at = dataclasses.replace(spec, host=host)
        try:
            return transfer.ask(at.ssh_destination, at.port, *words), at
        except OperationError as exc:
            failures.append(str(exc))
    raise OperationError("; ".join(failures))


@dataclass(frozen=True)
class ReleaseAnswer:
    """What a master's gate answers to `release` (join.gate), checked."""

    revision: str  # the DAG release it offers ("" before its first publish)
    cluster_hash: str  # the sha256 of its cluster file
    upgrading: str = ""  # the Airflow version it is upgrading the cluster to, while it does


def parse_release_answer(answer: bytes, where: str) -> ReleaseAnswer:
    """Given a gate's answer to `release` (untrusted: the master's airflow account serves it), return it
    checked. Raise OperationError naming `where` when it is not such an answer."""
    lines = answer.decode(errors="replace").rstrip("\n").split("\n")  # a first line "": nothing published yet
    revision, cluster_hash, rest = lines[0].strip(), (lines[1].strip() if len(lines) > 1 else ""), lines[2:]
    upgrading = ""
    try:
        if rest:
            word, _, version = rest[0].strip().partition(" ")
            if word != "upgrading" or len(rest) > 1:
                raise UserError("not an upgrade")
            upgrading = str(parse_airflow_version(version, "upgrading"))
        if any(value and not REVISION.fullmatch(value) for value in (revision, cluster_hash)):
            raise UserError("not a revision")
    except UserError:
        shown = printable(answer[:60].decode(errors="replace"))
        raise OperationError(f"{where}: answered {shown!r} to `release`, not what a master's gate answers; the "
                             "published DAGs are unchanged") from None  # fmt: skip
    return ReleaseAnswer(revision, cluster_hash, upgrading)


def ask_master_release(
    transfer: TransferRunner, spec: DagSourceSpec, hosts: tuple[str, ...] = ()
) -> tuple[str, str, DagSourceSpec]:
    """Return the revision a master offers ("" before its first publish), the sha256 of its cluster file
    (one small request through its gate) and the spec naming the master that answered, the first of
    `hosts` that does. Raise OperationError."""
    answer, spec = ask_masters(transfer, spec, hosts, "release")
    release = parse_release_answer(answer, spec.ssh_destination)
    return release.revision, release.cluster_hash, spec


def release_spec(spec: DagSourceSpec, name: str, master_root: str = "") -> DagSourceSpec:
    """The master's release `name`, as an SSH source the gate serves."""
    return dataclasses.replace(spec, path=f"{master_root.rstrip('/')}{DAG_RELEASES_DIR}/releases/{shlex.quote(name)}")


def sync_dags(
    layout: DagLayout, request: SyncRequest, spec: DagSourceSpec, transfer: TransferRunner,
    accounts: Accounts, state: SyncState, details: list[str], seen: dict[str, str], ctx: NodeContext,
) -> DagOutcome:  # fmt: skip
    """Fetch, build, check and publish one release (with request.wanted: fetch that release of the
    master's and add it, publishing nothing). Raise OperationError/UserError; nothing published then."""
    started = time.monotonic()
    prepare_work_dirs(layout, accounts.mirror_owner)
    current = current_release(layout)
    # a release of the airflow account's (before 0.4) is built anew, never from, and replaced
    outdated = current is not None and not release_is_ours(current.path, accounts.release_owner)
    pending = layout.unpublished_marker.exists() or outdated
    from_master = follows_master_releases(ctx, request.target, spec)
    if request.wanted and not from_master:
        raise UserError(NOT_FOLLOWING)
    expected = request.wanted
    if request.wanted and held_release(layout, request.wanted, accounts.release_owner):
        return DagOutcome(UNCHANGED, request.wanted, request.wanted)
    if from_master and request.wanted:  # a master that holds it: the one that answers first
        spec = ask_masters(transfer, spec, ctx.other_masters, "releases")[1]
    if from_master and not expected:
        expected, seen["master_cluster_hash"], spec = ask_master_release(transfer, spec, ctx.other_masters)
        seen["master_host"] = str(spec.host)
        details.append(f"the master {spec.host} offers {expected[:16] or 'no release yet'} "
                       f"({time.monotonic() - started:.2f} s)")  # fmt: skip
        if not expected:
            return DagOutcome(
                UNCHANGED,
                current.revision if current else "",
                state.source_revision or "",
                warnings=("the master has published no DAGs yet: run `airflow-node sync` there",),
            )
        if current is not None and not pending and current.revision == expected:
            return DagOutcome(UNCHANGED, expected, expected)  # the cheap check: no walk of the tree
    if expected:
        spec = release_spec(spec, expected[:16], request.master_root)
    # the mirror may move ahead of the published tree from here on (a link there was removed above)
    os.close(os.open(layout.unpublished_marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
    source = open_source(spec, transfer, layout.root)
    fetched = source.fetch(layout.mirror, state.source_revision if current and not pending else None)
    details.append(f"fetched from {spec.describe()} in {time.monotonic() - started:.2f} s")
    if fetched.source_revision:
        seen["source_revision"] = fetched.source_revision

    def unchanged() -> DagOutcome:
        layout.unpublished_marker.unlink()
        revision = current.revision
        return DagOutcome(UNCHANGED, revision, fetched.source_revision or state.source_revision or revision)

    if current is not None and not pending and (fetched.unchanged or fetched.changes == ()):
        return unchanged()
    changes = fetched.changes if not pending else None
    if current is not None and changes is None and not outdated:
        changes = local_changes(layout.mirror, current.path)
        if not changes:
            return unchanged()
    built = build_release(layout, current, changes, accounts.release_owner)
    details.append(f"built {built.revision[:12]}: {len(built.changed)} files copied, {built.deleted_files} deleted")
    if expected and not built.revision.startswith(expected):  # the master's tree, exactly, or nothing
        shutil.rmtree(built.path, ignore_errors=True)
        raise OperationError(f"the master's release {expected[:16]} arrived as {built.revision[:16]}; "
                             "the published DAGs are unchanged")  # fmt: skip
    seen.setdefault("source_revision", built.revision)
    if current is not None and built.revision == current.revision and not outdated:  # only times or modes moved
        shutil.rmtree(built.path)
        return unchanged()
    lost, special = unpublished(layout.mirror, built)
    if lost:  # never a file the source has and Airflow silently lacks
        shutil.rmtree(built.path, ignore_errors=True)
        raise OperationError(f"{printable(lost[0])}: in the DAG source but not in the new release "
                             f"({len(lost)} such); the published DAGs are unchanged")  # fmt: skip
    try:  # the master's tree (hash-checked) was checked there: a mass delete it allowed is no news here
        if not expected:
            check_guards(built, current, request.guards, spec.describe())
        warnings = check_python(
            built, "warn" if expected and request.guards.validate != "off" else request.guards.validate
        )
    except BaseException:
        shutil.rmtree(built.path, ignore_errors=True)
        raise
    warnings = [*warnings, *(f"not published: symlink {p} points outside the tree" for p in built.skipped_links),
                *(f"not published: {p} is not a file, directory or link" for p in special)]  # fmt: skip
    release = add_release(layout, built, accounts.release_owner)
    if request.wanted:  # an older version a task asked for: added beside the published one
        details.append(f"added {release.path}, asked for by a task")
        return DagOutcome(PUBLISHED, release.revision, release.revision, len(built.changed), built.deleted_files)
    if ctx.role.creates_cluster:
        write_offered(layout, release.revision)  # what workers fetch from now on
        warnings += offer_to_workers(ctx, request, release.revision, details)
    flip_dags_folder(layout.dags_folder, release.path)
    layout.unpublished_marker.unlink()
    details.append(f"published {release.path}")
    return DagOutcome(
        PUBLISHED, release.revision, fetched.source_revision or release.revision,
        len(built.changed), built.deleted_files, tuple(warnings),
    )  # fmt: skip


def offer_to_workers(ctx: NodeContext, request: SyncRequest, revision: str, details: list[str]) -> list[str]:
    """On the master, before its own Airflow sees a new release: ring the workers' doorbell, and on a line
    without versioned DAG bundles (Airflow 2) wait, at most request.worker_wait seconds, until every live
    worker holds it, so that no task meets an older copy on its worker. Return warnings."""
    if not request.target.real_system:  # a rendered tree has no broker of its own
        return []
    warnings = [w for w in (ring(ctx, revision),) if w]
    if ctx.line.versioned_dags:  # a worker fetches the release a run was created with when asked
        return warnings
    waited, behind = wait_for_workers(ctx, revision, request.worker_wait)
    details.append(f"waited {waited:.1f} s for the workers to hold {revision[:12]}")
    if behind:
        warnings.append(f"published after {waited:.0f} s without {', '.join(behind[:5])}"
                        f"{' and more' if len(behind) > 5 else ''}: their tasks run the older DAG files "
                        "until they sync")  # fmt: skip
    return warnings


def transfer_runner(
    target: Target, accounts: Accounts, ssh_key: str | None, ssh_extra: tuple[str, ...]
) -> TransferRunner:
    """How this node's transfers run: as the fetching account, and on a joined worker with its key and
    the master's pinned host key (ssh takes the first value of an option: not overridable from the
    environment)."""
    if ssh_key is None and target.path(SSH_KEY_FILE).exists():
        ssh_key, ssh_extra = str(target.path(SSH_KEY_FILE)), (*pinned(target.path(KNOWN_HOSTS_FILE)), *ssh_extra)
    return TransferRunner(user=accounts.transfer_user, ssh_key=ssh_key, ssh_extra=ssh_extra)


def gate_transfer(ctx: NodeContext, target: Target) -> TransferRunner:
    """How this node asks the masters' gates: as the sync account, with its key and the pinned host keys."""
    return transfer_runner(target, _accounts(ctx, target), None, ())


def master_releases(target: Target) -> set[str]:
    """The names of the releases the master holds (one small request through its gate). Raise
    UserError on a node that does not follow the master's releases, OperationError."""
    ctx = load_context(target)
    spec = effective_source(ctx)
    if not follows_master_releases(ctx, target, spec):
        raise UserError(NOT_FOLLOWING)
    answer = ask_masters(gate_transfer(ctx, target), spec, ctx.other_masters, "releases")[0]
    return {name for name in answer.decode(errors="replace").split()[:MAX_LISTED] if RELEASE_NAME.fullmatch(name)}


def local_error(exc: OSError, layout: DagLayout) -> OperationError:
    """An error of the release tree on this node (a full disk, say), not of the source: one line all the same."""
    return OperationError(f"{exc.filename or layout.base}: {exc.strerror}; the published DAGs are unchanged")


def sync(request: SyncRequest) -> SyncResult:
    """Given a SyncRequest, sync this node's DAGs and config; return what happened.

    Raise UserError (bad setup) or OperationError (source unreachable, transfer failed, guard refused);
    either way the published DAGs and the config stay as they were, and the state file records the error.
    """
    started = time.monotonic()
    target = request.target
    ctx = load_context(target)
    time.sleep(splay_of(ctx.node.node_name, request.splay))
    layout = DagLayout(target.root, target.path(ctx.dags_folder))
    check_dags_folder(layout)
    spec = effective_source(ctx)
    accounts = _accounts(ctx, target)
    transfer = transfer_runner(target, accounts, request.ssh_key, request.ssh_extra)
    with sync_lock(target.path(SYNC_LOCK_FILE), request.lock_wait) as holder:
        if holder is not None:
            message = f"another sync is running ({holder}); skipped"
            log_run(message, failed=False)
            return SyncResult(SKIPPED, seconds=time.monotonic() - started, details=(message,))
        if request.wanted:  # one release a task asked for: the state and the published DAGs stay as they are
            details: list[str] = []
            try:
                dags = sync_dags(layout, request, spec, transfer, accounts, read_state(target), details, {}, ctx)
            except OSError as exc:
                raise local_error(exc, layout) from None
            return SyncResult(dags.status, dags, seconds=time.monotonic() - started, details=tuple(details))
        return _sync_locked(request, ctx, layout, spec, transfer, accounts, started)


def _sync_locked(request, ctx, layout, spec, transfer, accounts, started) -> SyncResult:
    target = request.target
    state = read_state(target)
    attempt = utc_now()
    details: list[str] = []
    seen: dict[str, str] = {}
    errors: list[Exception] = []
    dags = config = None
    try:
        dags = sync_dags(layout, request, spec, transfer, accounts, state, details, seen, ctx)
    except (UserError, OperationError) as exc:
        errors.append(exc)
    except OSError as exc:
        errors.append(local_error(exc, layout))
    else:
        removed = prune_releases(layout, request.keep_releases, request.keep_days)
        details.append(f"pruned {len(removed)} old release(s)")
    if ctx.role.follows_master and not request.dags_only:
        try:  # even when the DAGs failed: a rotated secret must still arrive
            if "master_host" in seen:  # the master that answered the DAG sync
                spec = dataclasses.replace(spec, host=seen["master_host"])
            elif len(ctx.other_masters) > 1:  # none did: the first that answers now
                spec = ask_masters(transfer, spec, ctx.other_masters, "release")[1]
            config = sync_config(ctx, target, spec, transfer, request.master_root, request.guards.force,
                                 seen.get("master_cluster_hash", ""))  # fmt: skip
        except (UserError, OperationError) as exc:
            errors.append(exc)
    if dags is not None:
        dag_revision = dags.revision  # what sync_dags published or found unchanged
    else:  # it failed: whatever is published now (re-read its manifest only on this path)
        published = current_release(layout)
        dag_revision = published.revision if published else state.dag_revision
    new_state = dataclasses.replace(
        state,
        dag_revision=dag_revision,
        source_revision=(dags.source_revision if dags else seen.get("source_revision", state.source_revision)),
        config_hash=sha256_file(target.path(ctx.airflow_cfg), unreadable_ok=True),
        cluster_file_hash=sha256_file(target.path(CLUSTER_FILE), unreadable_ok=True),
        last_attempt=attempt,
        last_success=attempt if not errors else state.last_success,
        last_error="; ".join(str(e) for e in errors) if errors else None,
    )
    write_state(target, new_state)
    if target.real_system:  # a rendered tree has no broker of its own to report to
        publish_record(ctx, target, {
            "dags": dag_revision or "",
            "last_sync": attempt,
            "sync_error": redact(new_state.last_error or "", ctx.cluster.secret_values()),
            "packages": installed_package_hash(ctx.node.airflow_bin),
        })  # fmt: skip
    if errors:
        log_run(f"failed: {new_state.last_error}", failed=True)
        error_type = OperationError if any(isinstance(e, OperationError) for e in errors) else UserError
        raise error_type(new_state.last_error)
    result = SyncResult(dags.status, dags, config, seconds=time.monotonic() - started, details=tuple(details))
    log_run(result.summary, failed=False)
    return result
