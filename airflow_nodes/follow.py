"""`airflow-node follow`: a worker's DAG follower, run by its init system beside the Celery worker.

Every `poll` seconds it looks at two things, and acts as root (it builds root's releases; every transfer
runs as the sync account):
- the releases tasks asked for (Airflow 3): names in RELEASE_REQUESTS_DIR, where the airflow group may
  create entries but not list them. Root reads the names only, never opens an entry, and takes only
  release names (16 hex digits); each is fetched from the master, exactly that tree, and added beside
  the published release. Why one could not be is written to RELEASE_FAILURES_DIR/<name>, which the
  waiting task reads.
- the broker's doorbell (offer.py): when it names a revision other than the published one, a DAG sync,
  after this node's own share of a splay that grows with the number of live workers, at most `splay`
  seconds (the workers of a big cluster do not reach the master's sshd as one herd). The doorbell is a
  hint: the sync asks the master which release it offers.
The cron line's sync stays: it brings the cluster file, and catches up whatever the follower missed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from airflow_nodes import defaults
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.fleet import publish_record
from airflow_nodes.masters import converge_master, say_converged
from airflow_nodes.node import RELEASE_FAILURES_DIR, RELEASE_REQUESTS_DIR
from airflow_nodes.redaction import redact
from airflow_nodes.redisclient import connect
from airflow_nodes.sanitise import one_line
from airflow_nodes.sync import (
    SKIPPED,
    SyncRequest,
    effective_source,
    follows_master_releases,
    master_releases,
    splay_of,
    sync,
)
from airflow_nodes.syncing.offer import herd_splay, rung
from airflow_nodes.syncing.releases import RELEASE_NAME, DagLayout, current_release, held_release
from airflow_nodes.target import Target
from airflow_nodes.versions import FOLLOWER, MASTER_FOLLOWER

MAX_FETCHES = 64  # releases fetched in one look: more wait for the next one
SCAN_LIMIT = 4096  # entries taken from the requests directory in one look (a flood waits its turn)
REMOVE_DEPTH = 8  # how deep a directory planted there is removed
MIN_RING_GAP = 10.0  # seconds between two syncs the doorbell starts: a hostile ringer gets no more


def _say(line: str) -> None:
    print(line, flush=True)  # to the init system's log, line by line


@dataclass
class Follower:
    target: Target
    poll: float = defaults.FOLLOW_POLL
    splay: float = defaults.FOLLOW_SPLAY
    say: Callable[[str], None] = _say
    _client: object = None
    _broker: tuple[str, str] = ("", "")
    _last_ring: float = float("-inf")
    _last_peers: float = float("-inf")
    _rung_seen: str = ""
    _pending: set = field(default_factory=set)  # asked for, not fetched yet: another sync held the lock

    def run(self, passes: int | None = None) -> None:
        """Look `passes` times (for ever when None), `poll` seconds apart."""
        done = 0
        while passes is None or done < passes:
            try:
                self.once()
            except (UserError, OperationError, OSError) as exc:  # the node's files mid-change, say: look again
                self.say(f"look failed: {one_line(str(exc), 300)}")
            done += 1
            if passes is None or done < passes:
                time.sleep(self.poll)

    def once(self) -> None:
        ctx = load_context(self.target)
        layout = DagLayout(self.target.root, self.target.path(ctx.dags_folder))
        if ctx.role.creates_cluster:  # one of several masters: its peers' cluster files, and who enrolled here
            if time.monotonic() - self._last_peers >= defaults.PEER_POLL:
                self._last_peers = time.monotonic()
                say_converged(converge_master(self.target), self.say)
                ctx = load_context(self.target)
                publish_record(ctx, self.target, {})  # alive: the fleet view counts a master by this
            if not follows_master_releases(ctx, self.target, effective_source(ctx)):
                return  # the first master builds its releases from the DAG source
        else:
            self.fetch_requested(layout, ctx)
        revision = self._doorbell(ctx)
        if revision and revision != self._rung_seen and time.monotonic() - self._last_ring >= MIN_RING_GAP:
            published = current_release(layout)
            if published is None or published.revision != revision:
                self._rung_seen, self._last_ring = revision, time.monotonic()
                time.sleep(splay_of(ctx.node.node_name, herd_splay(ctx, self.splay)))
                if self._sync(SyncRequest(self.target, dags_only=True), f"the master offers {revision[:16]}") != "":
                    self._rung_seen = ""  # skipped or failed: the next ring (MIN_RING_GAP on) tries again

    def fetch_requested(self, layout: DagLayout, ctx: NodeContext) -> None:
        """Fetch the releases tasks asked for that this node lacks, and the master holds; say to the
        waiting tasks why one cannot be."""
        failures = self.target.path(RELEASE_FAILURES_DIR)
        forget_old_failures(failures)
        owner = (0, 0) if self.target.privileged else None
        names = sorted({*take_requests(self.target), *self._pending})
        self._pending.clear()
        wanted = [n for n in names if not held_release(layout, n, owner)]
        if not wanted:
            return
        try:  # one small request, however many names a task (or a hostile one) wrote
            on_master = master_releases(self.target)
        except (UserError, OperationError) as exc:
            for name in wanted:
                self._failed(failures, name, self._one_line(ctx, exc))
            return
        for index, name in enumerate(wanted):
            if name not in on_master:
                self._failed(failures, name, "the master does not hold it (pruned after --keep-days, or never made)")
                continue
            if index >= MAX_FETCHES:
                self._pending.add(name)
                continue
            request = SyncRequest(self.target, dags_only=True, wanted=name, lock_wait=0)
            outcome = self._sync(request, f"a task asked for {name}")
            if outcome is None:  # another sync holds the lock: this one and the rest on the next look
                self._pending.update(wanted[index:])
                return
            if outcome:
                self._failed(failures, name, outcome)
            else:
                (failures / name).unlink(missing_ok=True)

    def _failed(self, failures: Path, name: str, why: str) -> None:
        """Tell the tasks waiting for release `name` why it cannot be fetched (they read this file)."""
        failures.mkdir(parents=True, exist_ok=True)
        write_atomically(failures / name, f"DAG release {name}: {why}\n".encode(), 0o644)

    def _sync(self, request: SyncRequest, why: str) -> str | None:
        """Run one sync; say what it did. Return "", why it failed (one line, no secret), or None when it
        was skipped (another sync held the lock)."""
        try:
            result = sync(request)
        except (UserError, OperationError) as exc:
            message = self._one_line(load_context(self.target), exc)
            self.say(f"{why}: failed: {message}")
            return message
        self.say(f"{why}: {result.summary}")
        return None if result.status == SKIPPED else ""

    @staticmethod
    def _one_line(ctx: NodeContext, exc: Exception) -> str:
        return one_line(redact(str(exc), ctx.cluster.secret_values()), 300)

    def _doorbell(self, ctx: NodeContext) -> str:
        """The revision the broker's doorbell names, or "" (none, or the broker unreachable: the cron line's
        sync still comes)."""
        broker = (ctx.cluster.broker_url, ctx.cluster.sentinel_master)
        try:
            if self._client is None or broker != self._broker:
                self._client, self._broker = connect(*broker, timeout=2.0), broker
            return rung(self._client, ctx.cluster.name)
        except Exception:  # noqa: BLE001 - a doorbell is a bonus; connect again next time
            self._client = None
            return ""


def prepare_requests_dir(target: Target, airflow_user: str) -> None:
    """Make sure the requests directory is root's, the airflow group's to add names to (sticky), and no link."""
    path = target.path(RELEASE_REQUESTS_DIR)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if target.privileged:
            os.fchown(fd, 0, pwd.getpwnam(airflow_user).pw_gid)
        os.fchmod(fd, 0o1730)
    finally:
        os.close(fd)


def take_requests(target: Target) -> list[str]:
    """Remove up to SCAN_LIMIT entries from the requests directory; return the release names among those
    removed. Only names are read: an entry is never opened, followed or read, whatever it is; a
    directory planted there is removed through descriptors."""
    try:
        fd = os.open(target.path(RELEASE_REQUESTS_DIR), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # not there (a line without versions), or a link: nothing to take
        return []
    taken: list[str] = []
    try:
        with os.scandir(fd) as entries:
            names = [entry.name for _, entry in zip(range(SCAN_LIMIT), entries, strict=False)]
        for name in names:
            if _remove(fd, name, REMOVE_DEPTH) and RELEASE_NAME.fullmatch(name):
                taken.append(name)
    finally:
        os.close(fd)
    return sorted(taken)


def _remove(dir_fd: int, name: str, depth: int) -> bool:
    """Remove the entry `name` of the directory open as dir_fd, never following a link. Return whether it is gone."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return True
    except IsADirectoryError:
        pass
    except OSError:
        return False
    if depth <= 0:
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        with os.scandir(fd) as entries:
            inner = [entry.name for _, entry in zip(range(SCAN_LIMIT), entries, strict=False)]
        for child in inner:
            _remove(fd, child, depth - 1)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=dir_fd)
        return True
    return False


def forget_old_failures(failures: Path) -> None:
    """Remove the failure notes older than a task's wait: nobody reads them any more."""
    oldest = time.time() - 2 * defaults.RELEASE_FETCH_WAIT
    with contextlib.suppress(OSError), os.scandir(failures) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < oldest:
                    os.unlink(entry.path)


def follow(target: Target, poll: float, splay: float, passes: int | None = None) -> None:
    """Run the follower (for ever, or `passes` looks). Raise UserError when this node is no worker."""
    ctx = load_context(target)
    if not {FOLLOWER, MASTER_FOLLOWER} & set(ctx.daemons):
        raise UserError(f"follow: this {ctx.node.role} has no follower (a worker has, and each of several masters)")
    if ctx.line.versioned_dags and ctx.role.follows_master:
        prepare_requests_dir(target, ctx.cluster.airflow_user)
    Follower(target, poll, splay).run(passes)
