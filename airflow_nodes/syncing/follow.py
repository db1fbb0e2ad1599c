"""`airflow-node follow`: a worker's DAG follower, run by its init system beside the Celery worker.

Every `poll` seconds it looks at two things, and acts as root (it builds root's releases; every transfer
runs as the sync account):
- the releases tasks asked for (Airflow 3): names in RELEASE_REQUESTS_DIR, where the airflow group may
  create entries but not list them. Root reads the names only, never opens an entry, and takes only
  release names (16 hex digits); each is fetched from the master, exactly that tree, and added beside
  the published release. Why one could not be is written to RELEASE_FAILURES_DIR/<name>, which the
  waiting task reads.
- the broker's doorbell (offer.py): when it names a revision other than the published one, a DAG sync,
  after this node's own share of `splay` seconds (the workers of a big cluster do not reach the master's
  sshd as one herd). The doorbell is a hint: the sync asks the master which release it offers.
The cron line's sync stays: it brings the cluster file, and catches up whatever the follower missed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from airflow_nodes import defaults
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import RELEASE_FAILURES_DIR, RELEASE_REQUESTS_DIR
from airflow_nodes.redaction import redact
from airflow_nodes.sanitise import printable
from airflow_nodes.syncing.offer import rung
from airflow_nodes.syncing.releases import RELEASE_NAME, DagLayout, current_release
from airflow_nodes.syncing.run import SKIPPED, SyncRequest, splay_of, sync
from airflow_nodes.target import Target

MAX_REQUESTS = 64  # names taken from the requests directory in one look: a flood waits its turn
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
    _rung_seen: str = ""
    _pending: set = field(default_factory=set)  # asked for, not fetched: another sync held the lock

    def run(self, passes: int | None = None) -> None:
        """Look `passes` times (for ever when None), `poll` seconds apart."""
        done = 0
        while passes is None or done < passes:
            self.once()
            done += 1
            if passes is None or done < passes:
                time.sleep(self.poll)

    def once(self) -> None:
        ctx = load_context(self.target)
        for name in sorted({*take_requests(self.target), *self._pending}):
            self.fetch_requested(name)
        revision = self._doorbell(ctx)
        if revision and revision != self._rung_seen and time.monotonic() - self._last_ring >= MIN_RING_GAP:
            layout = DagLayout(self.target.root, self.target.path(ctx.dags_folder))
            published = current_release(layout)
            if published is None or published.revision != revision:
                self._rung_seen, self._last_ring = revision, time.monotonic()
                time.sleep(splay_of(ctx.node.node_name, self.splay))
                self._sync(SyncRequest(self.target, dags_only=True), f"the master offers {revision[:16]}")

    def fetch_requested(self, name: str) -> None:
        failures = self.target.path(RELEASE_FAILURES_DIR)
        self._pending.discard(name)
        outcome = self._sync(SyncRequest(self.target, dags_only=True, wanted=name), f"a task asked for {name}")
        if outcome is None:
            self._pending.add(name)
        elif outcome:
            failures.mkdir(parents=True, exist_ok=True)
            write_atomically(failures / name, f"DAG release {name}: {outcome}\n".encode(), 0o644)
        else:
            (failures / name).unlink(missing_ok=True)

    def _sync(self, request: SyncRequest, why: str) -> str | None:
        """Run one sync; say what it did. Return "", why it failed (one line, no secret), or None when it
        was skipped (another sync held the lock)."""
        try:
            result = sync(request)
        except (UserError, OperationError) as exc:
            ctx = load_context(self.target)
            message = printable(redact(str(exc), ctx.cluster.secret_values()))
            self.say(f"{why}: failed: {message}")
            return message
        self.say(f"{why}: {result.summary}")
        return None if result.status == SKIPPED else ""

    def _doorbell(self, ctx: NodeContext) -> str:
        """The revision the broker's doorbell names, or "" (none, or the broker unreachable: the cron line's
        sync still comes)."""
        from airflow_nodes.redisclient import connect

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
    """Remove up to MAX_REQUESTS entries from the requests directory; return the release names among them.
    Only names are read: an entry is never opened or followed, whatever it is."""
    try:
        fd = os.open(target.path(RELEASE_REQUESTS_DIR), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # not there (a line without versions), or a link: nothing to take
        return []
    names: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) >= MAX_REQUESTS:
                    break
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    return sorted({name for name in names if RELEASE_NAME.fullmatch(name)})


def follow(target: Target, poll: float, splay: float, passes: int | None = None) -> None:
    """Run the follower (for ever, or `passes` looks). Raise UserError when this node is no worker."""
    ctx = load_context(target)
    if ctx.node.role != "worker":
        raise UserError("follow: only a worker follows the master's DAG releases")
    if ctx.line.versioned_dags:
        prepare_requests_dir(target, ctx.cluster.airflow_user)
    Follower(target, poll, splay).run(passes)
