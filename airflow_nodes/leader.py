"""`airflow-node lead NAME -- ARGV`: run a command on one host of the cluster at a time.

Several masters each run `airflow dag-processor`, but Airflow parses a DAG bundle in one place only. So
the init system runs it under this wrapper (as the airflow account), which starts it only while it holds
the lock `airflow-node:leader:NAME` in the cluster's Redis broker (redis-py's own `redis.lock.Lock`):

- standing by, it tries to take the lock every `poll` seconds;
- leading, it runs the command (in its own process group, dying with us) and renews the lock every
  ttl/3 seconds. When it cannot renew, it stops the command before another host can take the lock: once
  the last renewal is `ttl - poll` seconds old (or at once, when the lock turns out to be someone else's),
  then stands by again;
- when the command exits on its own, it releases the lock and exits with the command's code (the init
  system starts us again); on SIGTERM or SIGINT it stops the command, releases the lock and exits 0.

The lock's token names its holder ("HOST pid N"): `current_leader` reads it, for health and the log.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from airflow_nodes.cluster import read_cluster
from airflow_nodes.context import load_context
from airflow_nodes.errors import UserError, clipped
from airflow_nodes.execute import CommandError, start_child
from airflow_nodes.node import CLUSTER_FILE
from airflow_nodes.redaction import redact
from airflow_nodes.redisclient import connect
from airflow_nodes.sanitise import one_line, printable
from airflow_nodes.target import Target
from airflow_nodes.urls import broker_endpoints

KEY_PREFIX = "airflow-node:leader:"
NAME_PATTERN = re.compile(r"[a-z0-9-]{1,32}")
DEFAULT_TTL = 20.0  # seconds the lock outlives a holder that stopped renewing it
DEFAULT_POLL = 5.0  # seconds between two tries of a host standing by
TTL_RANGE = (5.0, 300.0)
POLL_RANGE = (1.0, 60.0)
STOP_GRACE = 10.0  # seconds the command gets after SIGTERM, before SIGKILL
RETRY = 1.0  # seconds between two tries to renew, after one failed
ERROR_EVERY = 60.0  # seconds between two log lines about the same broker error
HOLDER_LIMIT = 200  # characters of a holder's name we show: anyone with the broker password can write it
HOSTNAME_LIMIT = 64


def _now() -> float:
    """Seconds on a clock that keeps counting while this host is suspended, as the lock's TTL does."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def _say(line: str) -> None:
    print(line, flush=True)  # to the init system's log, line by line


@dataclass(frozen=True)
class LeadRequest:
    name: str
    argv: tuple[str, ...]
    ttl: float = DEFAULT_TTL
    poll: float = DEFAULT_POLL

    @property
    def redis_timeout(self) -> float:
        """Seconds one Redis command may take: two of them (connect, then the command) fit well between
        the renewal due at ttl/3 and the deadline at ttl - poll (more than ttl/6, as poll < ttl/2)."""
        return min(2.0, self.ttl / 15)


def check_lead_request(name: str, argv: Sequence[str], ttl: float | None, poll: float | None) -> LeadRequest:
    """Given the options of `lead`, return the request (None takes the default). Raise UserError naming
    the option when one is out of bounds, or when there is no command."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"{printable(clipped(name, 40))!r} is not a lock name: 1 to 32 of a-z, 0-9 and -", about="NAME")
    ttl = DEFAULT_TTL if ttl is None else ttl
    poll = DEFAULT_POLL if poll is None else poll
    for option, value, (low, high) in (("--ttl", ttl, TTL_RANGE), ("--poll", poll, POLL_RANGE)):
        if not (math.isfinite(value) and low <= value <= high):
            raise UserError(f"{value:g} is not within {low:g}..{high:g} seconds", about=option)
    if not poll < ttl / 2:
        raise UserError(f"{poll:g} must be less than half of --ttl ({ttl:g}): a host standing by would "
                        "otherwise take the lock late", about="--poll")  # fmt: skip
    if not argv:
        raise UserError("give the command to run after --, as in `lead NAME -- airflow dag-processor`", about="ARGV")
    return LeadRequest(name, tuple(argv), float(ttl), float(poll))


def lock_key(name: str) -> str:
    return KEY_PREFIX + name


def holder_token(host: str = "") -> str:
    """Return the name this process holds a lock by: "HOST pid N" (printable, bounded), HOST this node's
    advertised address (host names of cloned machines repeat), else its host name."""
    return f"{printable(host or socket.gethostname())[:HOSTNAME_LIMIT]} pid {os.getpid()}"


def current_leader(client, name: str) -> str | None:
    """Given a redis.Redis for the broker, return who holds the lock NAME ("HOST pid N"), or None when
    nobody does. Raise a redis-py error when the broker cannot tell."""
    value = client.get(lock_key(name))
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return printable(clipped(text, HOLDER_LIMIT))


class Wakeup:
    """The signals of a wrapper as a flag and a wake-up: SIGTERM and SIGINT ask it to stop; they and
    SIGCHLD (the command ended) end a nap() at once."""

    def __init__(self) -> None:
        self.stopping = False

    def __enter__(self) -> Wakeup:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read)
        os.close(self._write)

    def _handle(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self.stopping = True

    def nap(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when a signal comes (or came since the last nap). poll(2), not
        select(2): a select stopped by SIGSTOP sleeps its whole remaining time again after SIGCONT."""
        poller = select.poll()
        poller.register(self._read, select.POLLIN)
        poller.poll(max(0.0, seconds) * 1000)
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


@dataclass
class Leader:
    """One wrapper's state: the lock, the command while it runs, and what the log was last told."""

    request: LeadRequest
    client: object  # a redis.Redis
    wakeup: Wakeup
    secrets: tuple[str, ...] = ()  # redacted from every error we print
    say: Callable[[str], None] = _say
    token: str = ""
    _lock: object = None
    _last_good: float = 0.0  # when the last successful take or renewal was sent
    _holder_said: str | None = None
    _error_said: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        from redis.lock import Lock

        self.token = self.token or holder_token()
        # thread_local=False: the token belongs to this process, whichever thread asks
        self._lock = Lock(self.client, lock_key(self.request.name), timeout=self.request.ttl, thread_local=False)

    def run(self) -> int:
        """Stand by and lead until told to stop (return 0) or until the command exits (return its code)."""
        while not self.wakeup.stopping:
            if self._stand_by():
                code = self._lead()
                if code is not None:
                    return code
        return 0

    @property
    def _deadline(self) -> float:
        """When the command must have been told to stop: `poll` seconds before another host could take
        the lock we last renewed."""
        return self._last_good + self.request.ttl - self.request.poll

    def _stand_by(self) -> bool:
        """Try to take the lock every `poll` seconds; return True once it is ours, False when told to stop."""
        from redis.exceptions import RedisError

        name = self.request.name
        while not self.wakeup.stopping:
            sent = _now()
            try:
                if self._lock.acquire(blocking=False, token=self.token):
                    self._last_good = sent
                    self._broker_answers()
                    return True
                holder = current_leader(self.client, name)
            except RedisError as exc:
                self._broker_error(exc)
            else:
                self._broker_answers()
                if holder is not None and holder != self._holder_said:
                    self.say(f"standing by: {name} is led by {holder}")
                    self._holder_said = holder
            self.wakeup.nap(self.request.poll)
        return False

    def _lead(self) -> int | None:
        """Run the command while the lock is ours. Return its exit code when it ended on its own, 0 when
        told to stop, or None when the lock was lost (the command stopped: stand by again)."""
        name = self.request.name
        self.say(f"leading {name} (lock held by {self.token})")
        self._holder_said = None
        try:
            child = start_child(self.request.argv, what=name)
        except CommandError:
            self._release()
            raise
        next_renewal = self._last_good + self.request.ttl / 3
        while True:
            if self.wakeup.stopping:
                self._stop(child, keep_lock=True)
                self._release()
                return 0
            code = child.poll()
            if code is not None:
                _signal_group(child.pid, signal.SIGKILL)  # what it started and left behind
                self._release()
                return code if code >= 0 else 128 - code
            now = _now()
            lost = now >= self._deadline
            if not lost and now >= next_renewal and now + 2 * self.request.redis_timeout < self._deadline:
                # a renewal that could end after the deadline is not tried: we stop at the deadline instead
                renewed = self._renew()
                lost = renewed is False
                next_renewal = self._last_good + self.request.ttl / 3 if renewed else _now() + RETRY
            if lost:
                self.say(f"lost the {name} lock: stopping it")
                self._stop(child, keep_lock=False)
                return None
            self.wakeup.nap(min(next_renewal, self._deadline) - _now())

    def _renew(self) -> bool | None:
        """Renew the lock. Return True when renewed, False when it is not ours any more (expired, or
        another host's), None when the broker did not answer."""
        from redis.exceptions import LockNotOwnedError, RedisError

        sent = _now()
        try:
            self._lock.reacquire()
        except LockNotOwnedError:
            return False
        except RedisError as exc:
            self._broker_error(exc)
            return None
        self._last_good = sent
        self._broker_answers()
        return True

    def _stop(self, child, keep_lock: bool) -> None:
        """SIGTERM the command's process group, SIGKILL it after STOP_GRACE seconds; keep renewing the
        lock meanwhile when it is still ours (no other host starts the command while ours is ending)."""
        _signal_group(child.pid, signal.SIGTERM)
        kill_at = _now() + STOP_GRACE
        next_renewal = self._last_good + self.request.ttl / 3
        while child.poll() is None:
            now = _now()
            if now >= kill_at:
                _signal_group(child.pid, signal.SIGKILL)
                kill_at = math.inf
            if keep_lock and now >= next_renewal:
                renewed = self._renew()
                next_renewal = self._last_good + self.request.ttl / 3 if renewed else _now() + RETRY
            self.wakeup.nap(min(kill_at - now, next_renewal - now if keep_lock else 1.0, 1.0))
        _signal_group(child.pid, signal.SIGKILL)  # what it started and left behind

    def _release(self) -> None:
        from redis.exceptions import LockError, RedisError

        try:
            self._lock.release()
        except LockError:
            pass  # not ours any more: nothing to give back
        except RedisError as exc:
            expires = f"it expires in {self.request.ttl:g} s"
            self._broker_error(exc, f"cannot release the {self.request.name} lock ({expires})")

    def _broker_error(self, exc: Exception, what: str = "") -> None:
        """Say a broker error in one line, the same one at most every ERROR_EVERY seconds."""
        text = one_line(redact(f"{exc.__class__.__name__}: {exc}", self.secrets), 300)
        line = f"{what or f'broker error ({self.request.name} lock)'}: {text}"
        now = _now()
        if self._error_said is None or self._error_said[0] != line or now - self._error_said[1] >= ERROR_EVERY:
            self.say(line)
            self._error_said = (line, now)

    def _broker_answers(self) -> None:
        if self._error_said is not None:
            self.say(f"broker answers again ({self.request.name} lock)")
            self._error_said = None


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone
        os.killpg(pgid, sig)


def lead(target: Target, request: LeadRequest, say: Callable[[str], None] = _say) -> int:
    """Given the node and a checked request, run its command while this host holds the lock; return
    the exit code of the wrapper. Raise UserError for a missing or bad cluster file, CommandError when
    the command cannot start."""
    cluster = read_cluster(target.path(CLUSTER_FILE))
    try:
        host = load_context(target).own_address
    except UserError:  # no node file: the host name says who leads
        host = ""
    endpoints = broker_endpoints(cluster.broker_url, "broker.url")
    secrets = tuple(e.password for e in endpoints if e.password)
    client = connect(cluster.broker_url, cluster.sentinel_master, request.redis_timeout)
    try:
        with Wakeup() as wakeup:
            return Leader(request, client, wakeup, secrets, say, token=holder_token(host)).run()
    finally:
        client.close()
