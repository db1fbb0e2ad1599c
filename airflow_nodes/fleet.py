"""The whole cluster from any node: every node publishes a small record to the broker, and
`airflow-node cluster` compares them, the master's as the reference.

With several masters (the cluster file names them), several master records are the norm: the first
master's live record is the reference (else another master's: all masters must agree anyway), each
master named in the file without a live record is missing, and the view is DEGRADED (a warning) while
at least one master is live, CRITICAL when none is.

Redis is the one service every node already reaches with credentials. Records live under keys of our
own (`airflow-node:<cluster>:node:<name>`, nothing Celery or kombu uses) and expire after three sync
periods, so a node that stops reporting turns stale, then disappears. Publishing happens at the end
of every `sync` and `health` run, costs a few small commands, and never fails either run: a broker
outage only means no record this time.

A node builds its record from its own state only: its facts now, and what it published before as kept
in its own state directory (never what the broker holds, which anyone with the broker URL can write).
Every record is signed (HMAC-SHA256) with a key derived from the cluster's Fernet key, which every
node's cluster file holds and the broker URL does not give; a reader refuses a record that is not
signed with it, that breaks the record schema, that names a node other than its key's, or that was
published in the future. Reads are bounded in keys, bytes per record and time.

A record holds hashes, never a secret: the cluster's secrets are represented by the sha256 of all of
them together, which includes the 256-bit generated keys, so nothing about any one can be guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from airflow_nodes import defaults, statefile
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.celerycontrol import read_drain_flag
from airflow_nodes.cluster import MASTER as MASTER_MEMBER
from airflow_nodes.cluster import ClusterConfig, dump_cluster, read_cluster, settings_of
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.detect import installed_package_hash
from airflow_nodes.digest import sha256, sha256_file
from airflow_nodes.errors import UserError
from airflow_nodes.exitcodes import CheckStatus
from airflow_nodes.install import compare_package_sets
from airflow_nodes.node import CLUSTER_FILE, DRAINED_FLAG, STATE_DIR
from airflow_nodes.redisclient import connect
from airflow_nodes.roles import NO_ROLE, ROLES, Role
from airflow_nodes.target import Target
from airflow_nodes.urls import bare_host

KEY_PREFIX = "airflow-node"
OWN_RECORD_FILE = f"{STATE_DIR}/fleet-record.json"  # what this node published last: its own, root's copy
# what every node must share with the master; a differing value is drift
COMPARED = ("tool", "airflow", "packages", "cfg", "cluster_file", "secrets", "dags")
CLOCK_WARN = 5.0  # seconds off the broker's clock
FUTURE_SKEW = 60.0  # seconds a record's `published` may be ahead of the broker's time as a reader sees it
MAX_RECORDS = 2000  # keys read at most: more than any cluster has nodes (--expect-workers is at most 1000)
READ_BATCH = 100  # keys fetched per round trip
# the view's states: a node that differs or is stale is a WARNING, a node missing (or no broker) CRITICAL
OK, DRIFT, MISSING = CheckStatus.OK, CheckStatus.WARNING, CheckStatus.CRITICAL

# The record schema, the one definition both sides use: the writer clips its record to it (clip_record),
# the reader refuses a record that breaks it (check_fields). Anyone with the broker URL can write our keys.
TEXT_FIELDS: dict[str, int] = {  # name: most characters, all printable
    "node": 253, "role": 16, "address": 253, "tool": 200, "airflow": 200, "packages": 200, "cfg": 200,
    "cluster_file": 200, "secrets": 200, "dags": 200, "last_sync": 200, "sync_error": 1000, "daemons": 1000,
}  # fmt: skip
NUMBER_FIELDS: dict[str, tuple[float, float]] = {  # name: (lowest, highest), finite
    "published": (0.0, 1e11),  # the broker's time (seconds since 1970)
    "clock_offset": (-1e10, 1e10),
}
FLAG_FIELDS = ("worker_online", "drained")  # true, false, or absent (null)
SIGNATURE = "sig"
# a stored record is UTF-8 JSON of printable text: at most 4 bytes a character, plus names and numbers
MAX_RECORD_BYTES = 4 * sum(TEXT_FIELDS.values()) + 1024


def tool_version() -> str:
    try:
        return version("airflow-nodes")
    except PackageNotFoundError:  # a source tree
        return "0"


def key_of(cluster_name: str, node_name: str) -> str:
    return f"{KEY_PREFIX}:{cluster_name}:node:{node_name}"


def period_seconds(ctx: NodeContext) -> int:
    return ctx.cluster.sync_interval_minutes * 60


def record_key(cluster: ClusterConfig) -> bytes:
    """Given the cluster config, return the key its records are signed with: derived from the Fernet key
    and the cluster's name. Not from all the secrets: a node with another JWT secret, say, must still be
    seen, and flagged as drift. (The published `secrets` hash is of another message: it gives nothing.)"""
    label = f"airflow-node fleet record key\0{cluster.name}".encode()
    return hmac.new(cluster.secrets.fernet_key.encode(), label, hashlib.sha256).digest()


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def seal(record: dict, key: bytes) -> bytes:
    """Given a record and the cluster's record key, return the value to store: the record with its signature."""
    signature = hmac.new(key, _canonical(record), hashlib.sha256).hexdigest()
    return _canonical({**record, SIGNATURE: signature})


def _printable(text: str, limit: int) -> str:
    return "".join(c if c.isprintable() else " " for c in text[:limit])


def clip_record(facts: dict) -> dict:
    """Given a node's facts, return them as a record the schema accepts: its fields only, text made
    printable and cut to its length, numbers made finite and brought into their range."""
    record: dict = {}
    for name, limit in TEXT_FIELDS.items():
        if name in facts:
            record[name] = _printable(str(facts[name] if facts[name] is not None else ""), limit)
    for name, (low, high) in NUMBER_FIELDS.items():
        number = facts.get(name)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            # clamped as it is (float() of a 400-digit int raises); NaN, unequal to itself, becomes 0
            record[name] = float(min(max(number, low), high)) if number == number else 0.0
    for name in FLAG_FIELDS:
        if isinstance(facts.get(name), bool):
            record[name] = facts[name]
    return record


def check_fields(record: dict) -> dict | None:
    """Given a parsed record, return its schema fields (a missing one as "", 0.0 or None), or None when
    one breaks the schema: text too long or not printable, a number not finite or out of its range."""
    clean: dict = {}
    for name, limit in TEXT_FIELDS.items():
        text = record.get(name, "")
        if not isinstance(text, str) or len(text) > limit or not text.isprintable():
            return None
        clean[name] = text
    for name, (low, high) in NUMBER_FIELDS.items():
        number = record.get(name, 0.0)
        # an int is compared as it is: float() of a 400-digit one would raise
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number <= high:
            return None  # NaN is in no range
        clean[name] = float(number)
    for name in FLAG_FIELDS:
        flag = record.get(name)
        clean[name] = flag if isinstance(flag, bool) else None
    return clean if clean["node"] else None


def check_record(value: bytes, name: str, key: bytes, now: float) -> tuple[dict | None, str]:
    """Given a stored value, the node name of its key, the record key and the broker's time, return
    (the record, "") or (None, why it is refused)."""
    if len(value) > MAX_RECORD_BYTES:
        return None, f"larger than {MAX_RECORD_BYTES} bytes"
    try:
        stored = json.loads(value.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None, "not JSON"
    if not isinstance(stored, dict) or not isinstance(stored.get(SIGNATURE), str):
        return None, "not signed"
    signature = stored.pop(SIGNATURE)
    try:
        expected = hmac.new(key, _canonical(stored), hashlib.sha256).hexdigest().encode()
    except (ValueError, RecursionError):  # NaN, or a lone surrogate: nothing a node signs
        return None, "not signed with this cluster's key"
    if not hmac.compare_digest(expected, signature.encode(errors="replace")):
        return None, "not signed with this cluster's key"
    record = check_fields(stored)
    if record is None:
        return None, "a field is not what a node writes"
    if record["node"] != name:
        return None, f"it names another node ({record['node'][:40]!r})"
    if record["published"] > now + FUTURE_SKEW:
        return None, "published in the future"
    return record, ""


def node_facts(ctx: NodeContext, target: Target) -> dict:
    """What this node publishes about itself that costs no more than reading a few files."""
    secrets = sha256("\n".join(sorted(ctx.cluster.secret_values())).encode())[:16]
    return {
        "node": ctx.node.node_name,
        "role": ctx.node.role,
        "address": ctx.node.advertise_address,
        "tool": tool_version(),
        "airflow": ctx.node.airflow_version,
        "cfg": (sha256_file(target.path(ctx.airflow_cfg), unreadable_ok=True) or "")[:16],
        "cluster_file": cluster_settings_hash(target),
        "secrets": secrets,
        "drained": ctx.role.runs_tasks and bool((flag := read_drain_flag(target.path(DRAINED_FLAG))) and flag.current),
    }


def cluster_settings_hash(target: Target) -> str:
    """The hash of the settings of the cluster file on disk now (a sync may just have changed it): which nodes
    are enrolled reaches a worker at its next sync, and changes nothing it runs. "" when it cannot be read."""
    try:
        return sha256(dump_cluster(settings_of(read_cluster(target.path(CLUSTER_FILE)))).encode())[:16]
    except UserError:
        return ""


def own_record(ctx: NodeContext, target: Target, facts: dict) -> dict:
    """Given this node and the facts of this run, return its record from its own state only: what it
    published before (its own copy), its facts now, and these facts, clipped to the schema."""
    try:
        before = statefile.load_json(target.path(OWN_RECORD_FILE), limit=MAX_RECORD_BYTES)
    except UserError:  # unreadable: this run's facts replace it
        before = None
    return clip_record({**(before if isinstance(before, dict) else {}), **node_facts(ctx, target), **facts})


def save_own_record(target: Target, record: dict) -> None:
    """Keep this node's record in its state directory for its next publish; a failure only loses it."""
    path = target.path(OWN_RECORD_FILE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, _canonical(record) + b"\n", 0o644)  # hashes and a redacted error: no secret
    except (OSError, ValueError):
        pass


def publish_record(ctx: NodeContext, target: Target, facts: dict, timeout: float = 1.0) -> str:
    """Given this node and the facts of this run, store its record, signed, with its expiry. Return "" or
    why it was not stored (the broker down, say): publishing never fails the run that does it."""
    record = own_record(ctx, target, facts)
    save_own_record(target, record)
    try:
        client = connect(ctx.cluster.broker_url, ctx.cluster.sentinel_master, timeout)
        try:
            seconds, micros = client.time()
            broker_time = seconds + micros / 1e6
            # ages are measured on the broker's clock, as `cluster` reads it
            record = clip_record({**record, "published": broker_time,
                                  "clock_offset": round(time.time() - broker_time, 3)})  # fmt: skip
            key = key_of(ctx.cluster.name, ctx.node.node_name)
            client.set(key, seal(record, record_key(ctx.cluster)), ex=3 * period_seconds(ctx))
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a record is a bonus: nothing may break sync or health
        return f"no fleet record stored ({exc.__class__.__name__})"
    return ""


def publish_packages(ctx: NodeContext, target: Target) -> None:
    """After a move to another Airflow: renew this node's packages in its record at once (the fleet view
    compares every node's with the master's)."""
    if target.real_system:
        publish_record(ctx, target, {"packages": installed_package_hash(ctx.node.airflow_bin)})


class TooManyRecords(UserError):
    """More keys under the fleet's prefix than any cluster has nodes: the view would be incomplete."""


@dataclass
class FleetRead:
    records: list[dict]  # the records that passed every check, sorted by node name
    now: float  # the broker's time
    refused: list[str] = field(default_factory=list)  # "'name': why", one for each record refused


def _before(deadline: float) -> None:
    """Given a deadline (time.monotonic()), raise redis-py's TimeoutError once it has passed."""
    from redis.exceptions import TimeoutError as RedisTimeout

    if time.monotonic() > deadline:
        raise RedisTimeout("the fleet records could not be read in time")


def _scan_keys(client, pattern: str, deadline: float) -> list[bytes]:
    """Given a client, a key pattern and a deadline, return the matching keys, sorted. Raise TooManyRecords
    when there are more than MAX_RECORDS, redis-py's TimeoutError at the deadline."""
    keys: set[bytes] = set()  # SCAN may return a key twice
    cursor = 0
    while True:
        _before(deadline)
        cursor, batch = client.scan(cursor, match=pattern, count=1000)
        keys.update(batch)
        if len(keys) > MAX_RECORDS:
            raise TooManyRecords(f"more than {MAX_RECORDS} keys match {pattern} in the broker: not a fleet of ours")
        if not cursor:
            return sorted(keys)


def read_fleet(ctx: NodeContext, timeout: float) -> FleetRead:
    """Given this node and a timeout, return every record of its cluster that passes the checks, why the
    others were refused, and the broker's time. Raise redis-py's errors (TimeoutError when the whole read
    takes longer than timeout), TooManyRecords when the broker holds more keys than a fleet has nodes."""
    deadline = time.monotonic() + timeout
    prefix = key_of(ctx.cluster.name, "")
    client = connect(ctx.cluster.broker_url, ctx.cluster.sentinel_master, timeout)
    values: list = []
    try:
        keys = _scan_keys(client, prefix + "*", deadline)
        for start in range(0, len(keys), READ_BATCH):
            _before(deadline)
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + READ_BATCH]:
                pipe.getrange(key, 0, MAX_RECORD_BYTES)  # one byte more than a record may have: no more
            values += pipe.execute(raise_on_error=False)
        seconds, micros = client.time()
    finally:
        client.close()
    read = FleetRead([], seconds + micros / 1e6)
    signing_key = record_key(ctx.cluster)
    for key, value in zip(keys, values, strict=True):
        name = key.decode(errors="replace")[len(prefix) :]
        if isinstance(value, Exception):  # another type of key (a hash, say)
            read.refused.append(f"{name[:40]!r}: not a string")
        elif value:  # b"": it expired since the scan
            record, why = check_record(value, name, signing_key, read.now)
            if record is None:
                read.refused.append(f"{name[:40]!r}: {why}")
            else:
                read.records.append(record)
    return read


def read_records(ctx: NodeContext, timeout: float) -> tuple[list[dict], float]:
    """Given this node and a timeout, return every record of its cluster that passes the checks, and the
    broker's time. Raise as read_fleet does."""
    read = read_fleet(ctx, timeout)
    return read.records, read.now


def known_workers(ctx: NodeContext, timeout: float = 2.0) -> set[str]:
    """The Celery names (celery@NODE) of the workers this cluster knows now: those expected by name and
    those whose record is not stale. Empty when the broker cannot be read: this only adds warnings."""
    from redis.exceptions import RedisError

    try:
        live = live_workers(ctx, timeout)
    except (RedisError, TooManyRecords):
        live = []
    expected = ctx.cluster.expected_workers
    names = set() if not expected or expected.isdigit() else set(expected.split(","))
    return {f"celery@{name}" for name in names | {r["node"] for r in live}}


def role_of(record: dict) -> Role:
    """What a record's node does, by the table of roles; a role this version does not know does nothing."""
    return ROLES.get(record.get("role"), NO_ROLE)


def live_workers(ctx: NodeContext, timeout: float = 2.0) -> list[dict]:
    """The records of the live workers (younger than two sync periods): the nodes that follow the master's
    releases. Raise as read_fleet does."""
    records, now = read_records(ctx, timeout)
    return [r for r in records if role_of(r).follows_master and not stale(r, now, period_seconds(ctx))]


def age(record: dict, now: float) -> float:
    return now - float(record.get("published") or 0)


def stale(record: dict, now: float, period: int) -> bool:
    return age(record, now) > 2 * period


# several masters: each master's follower refreshes its record every PEER_POLL seconds; one silent for
# six of them is missing (a master cut off shows within a minute, not two sync periods)
MASTER_SILENCE = 6 * defaults.PEER_POLL


def master_live(record: dict | None, now: float) -> bool:
    return record is not None and age(record, now) <= MASTER_SILENCE


@dataclass
class NodeRow:
    record: dict
    findings: list[str] = field(default_factory=list)  # what differs from the master, or is wrong
    differing: set[str] = field(default_factory=set)  # the fields to mark in the table
    status: CheckStatus = OK


@dataclass
class FleetReport:
    """The fleet as `airflow-node cluster` shows it (output.fleet_table, output.fleet_json)."""

    rows: list[NodeRow]
    missing: list[str]
    status: CheckStatus
    verdict: str
    refused: list[str] = field(default_factory=list)  # the records read and refused, and why
    masters: list[MasterState] = field(default_factory=list)  # several masters: each named one; else empty


def expected_missing(expected: str, present: set[str], workers_seen: int) -> list[str]:
    """Given the cluster file's expected workers ("", a count or names), return what is missing."""
    if not expected:
        return []
    if expected.isdigit():
        short = int(expected) - workers_seen
        return [f"{short} of {expected} expected worker(s)"] if short > 0 else []
    return [name for name in expected.split(",") if name not in present]


def master_of(records: list[dict]) -> dict | None:
    """The master's record, the reference: None when there is none, or when two claim the role."""
    masters = [r for r in records if role_of(r).creates_cluster]
    return masters[0] if len(masters) == 1 else None


@dataclass(frozen=True)
class NamedMaster:
    """A master the cluster file names: by node name where it is a member, and by address."""

    name: str  # "" for the first master while the file has no member at its address
    address: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.address})" if self.name else self.address

    def owns(self, record: dict) -> bool:
        """Whether a record is this master's: a creating role, and its node name or address."""
        if not role_of(record).creates_cluster:
            return False
        if self.name and record.get("node") == self.name:
            return True
        return bool(record.get("address")) and bare_host(record["address"]) == bare_host(self.address)


@dataclass(frozen=True)
class MasterState:
    """One master the cluster file names, as the view found it."""

    master: NamedMaster
    node: str  # the node name of its record, "" when it has none
    live: bool  # its record is there and not stale


def named_masters(cluster: ClusterConfig) -> tuple[NamedMaster, ...]:
    """Given the cluster file, return its masters, the first first, when it names several; else ()."""
    if not cluster.several_masters:
        return ()
    names = {bare_host(m.address): m.name for m in cluster.members if m.role == MASTER_MEMBER}
    return tuple(NamedMaster(names.get(bare_host(address), ""), address) for address in cluster.masters)


def records_of_masters(records: list[dict], masters: Sequence[NamedMaster]) -> list[dict | None]:
    """Given the records and the named masters, return each master's record, None where it has none: the
    one by its node name, else one at its address; no record serves two masters."""
    found: list[dict | None] = []
    taken: set[int] = set()
    for master in masters:
        mine = [r for r in records if id(r) not in taken and master.owns(r)]
        record = next((r for r in mine if r["node"] == master.name), mine[0] if mine else None)
        if record is not None:
            taken.add(id(record))
        found.append(record)
    return found


def reference_master(
    records: list[dict], masters: Sequence[NamedMaster] = (), now: float | None = None, period: int = 0
) -> dict | None:
    """The record every node is compared with. One master (no masters named): master_of's. Several: the
    first named master's live record, else the next named one's, else any live master record; a stale one
    only when no master record is live. None when no record claims a master's role."""
    if not masters:
        return master_of(records)
    claiming = [r for r in records if role_of(r).creates_cluster]
    own = records_of_masters(records, masters)
    rank = {id(record): index for index, record in enumerate(own) if record is not None}

    def order(record: dict) -> tuple[bool, int, str]:
        late = now is not None and not master_live(record, now)
        return late, rank.get(id(record), len(masters)), record["node"]

    return min(claiming, key=order, default=None)


def _same(name: str, value: object, masters: object) -> bool:
    if name == "packages" and value and masters:
        return compare_package_sets(value, masters)[0]  # another Python's lock may agree where it matters
    return value == masters


def _row(record: dict, reference: dict | None, reference_name: str, now: float, period: int) -> NodeRow:
    """One node's row: stale, what differs from the reference record, and what its record says is wrong."""
    row = NodeRow(record)
    if stale(record, now, period):
        row.findings.append(f"stale: last report {age(record, now):.0f} s ago")
    if reference is not None and record is not reference:
        for name in COMPARED:
            if not _same(name, record.get(name), reference.get(name)):
                row.differing.add(name)
                row.findings.append(f"{name} differs from {reference_name}")
    if abs(float(record.get("clock_offset") or 0)) > CLOCK_WARN:
        row.differing.add("clock_offset")
        row.findings.append(f"clock {record['clock_offset']:+.1f} s off")
    if record.get("sync_error"):
        row.findings.append(f"last sync failed: {record['sync_error'][:80]}")
    if role_of(record).runs_tasks and record.get("worker_online") is False:
        row.findings.append("its Celery worker is offline")
    if role_of(record).runs_tasks and record.get("drained"):
        row.findings.append("drained: takes no new tasks (`airflow-node resume` there)")
    return row


def compare(
    records: list[dict],
    expected_workers: str,
    period: int,
    now: float,
    refused: list[str] | None = None,
    masters: Sequence[NamedMaster] = (),
) -> FleetReport:
    """Given the records that passed the checks, the broker's time, why others were refused and the
    masters the cluster file names when it names several, return the fleet: a master's values as the
    reference, every differing value, stale and missing nodes, and a verdict with a Nagios status.

    One master: no master record, or two, is CRITICAL. Several: each named master without a live record
    is missing; some live is DEGRADED (WARNING), none live CRITICAL. A refused record counts for nothing."""
    reference = reference_master(records, masters, now, period)
    reference_name = f"the master {reference['node']}'s" if masters and reference else "the master's"
    owned = records_of_masters(records, masters)
    named = {id(record) for record in owned if record is not None}
    rows = []
    for record in sorted(records, key=lambda r: (not role_of(r).creates_cluster, r["node"])):
        row = _row(record, reference, reference_name, now, period)
        if masters and role_of(record).creates_cluster and id(record) not in named:
            row.findings.append("claims a master's role, but the cluster file names no master by its name or address")
        row.status = DRIFT if row.findings else OK
        rows.append(row)
    names = {r["node"] for r in records}
    workers = sum(1 for r in records if role_of(r).runs_tasks)
    others = expected_missing(expected_workers, names, workers)
    drifting = [row.record["node"] for row in rows if row.status]
    states = [MasterState(m, r["node"] if r else "", master_live(r, now)) for m, r in zip(masters, owned, strict=True)]
    if masters:
        live = [state.live for state in states]
        lost = [f"master {state.master.label}" for state in states if not state.live]
        missing = lost + others
        if others or not any(live):
            status = MISSING
        else:  # a master missing while another is live: DEGRADED, the WARNING status
            status = DRIFT if lost else max((row.status for row in rows), default=OK)
        masters_live = f"{sum(live)} of {len(masters)} masters live"
    else:
        claiming = sum(1 for r in records if role_of(r).creates_cluster)
        lost = [] if reference else ([f"the master ({claiming} records claim it)"] if claiming else ["the master"])
        missing = lost + others
        status = MISSING if missing else max((row.status for row in rows), default=OK)
        masters_live = ""
    if status == MISSING:
        verdict = f"CRITICAL: missing {', '.join(missing)}" + (f" ({masters_live})" if masters_live else "")
    elif missing:  # several masters, some of them live
        verdict = f"DEGRADED: missing {', '.join(missing)} ({masters_live})"
    elif drifting:
        verdict = f"WARNING: {len(drifting)} of {len(rows)} node(s) differ or are stale: {', '.join(drifting)}"
    elif masters_live:
        verdict = f"OK: {len(rows)} node(s) consistent with the master {reference['node']} ({masters_live})"
    else:
        verdict = f"OK: {len(rows)} node(s) consistent with the master"
    return FleetReport(rows, missing, status, verdict, list(refused or []), states)


def fleet_report(target: Target, timeout: float) -> FleetReport:
    """Read and compare the records of this node's cluster. A broker that cannot be read is CRITICAL."""
    from redis.exceptions import RedisError

    ctx = load_context(target)
    try:
        read = read_fleet(ctx, timeout)
    except RedisError as exc:
        return FleetReport([], [], MISSING, f"CRITICAL: the broker cannot be read ({exc.__class__.__name__})")
    except TooManyRecords as exc:
        return FleetReport([], [], MISSING, f"CRITICAL: the broker cannot be read ({exc})")
    return compare(
        read.records,
        ctx.cluster.expected_workers,
        period_seconds(ctx),
        read.now,
        read.refused,
        named_masters(ctx.cluster),
    )
