"""The SSH keys airflow-node manages, and nothing else of SSH: the master's airflow account's
authorized_keys (a join token's key and each enrolled worker's key, every line restricted and forced
to the gate), the ed25519 keys themselves, and the ssh options that pin a worker to its master's host
key. join.py makes and serves the joins; the master's log probe reads the enrolled workers here.
"""

from __future__ import annotations

import calendar
import contextlib
import ipaddress
import os
import pwd
import re
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import statefile
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.cluster import MASTER, MAX_MASTERS, ClusterConfig, Member, check_member, key_fingerprint
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import UserError
from airflow_nodes.execute import NoSuchAccount, as_user
from airflow_nodes.schema import check_host
from airflow_nodes.target import Target

LOCALTIME = "/etc/localtime"  # the zone sshd reads expiry-time in
MAX_ENROLMENTS_PER_TOKEN = 25  # worker keys one token may have enrolled at a time
MAX_WORKERS = 500  # enrolled worker keys in all
KEYS_LOCK_WAIT = 10  # seconds; an edit of authorized_keys holds the lock for milliseconds
TOKEN_TAG, WORKER_TAG, MASTER_TAG = "airflow-node-token:", "airflow-node-worker:", "airflow-node-master:"
NODE_TAGS = (WORKER_TAG, MASTER_TAG)
# a node's line: enrolled through this master's gate (",token:ID"), or the cluster file's member (",member")
ENROLLED, MEMBER = ",token:", ",member"
_OUR_LINE = re.compile(rf"^(.+?) (ssh-ed25519 [A-Za-z0-9+/=]+) ((?:{TOKEN_TAG}|{WORKER_TAG}|{MASTER_TAG})\S+)$")


def _key(seed: bytes):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # only joins need it

    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_line(seed: bytes) -> str:
    """Return "ssh-ed25519 AAAA..." of the key a seed stands for."""
    from cryptography.hazmat.primitives import serialization

    public = _key(seed).public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def private_key_file(seed: bytes) -> bytes:
    """Return the OpenSSH private key file of the key a seed stands for."""
    from cryptography.hazmat.primitives import serialization

    return _key(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def public_line_of(key_file: bytes) -> str:
    """Return "ssh-ed25519 AAAA..." of an OpenSSH private key file we wrote."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(key_file, None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# -- the master's authorized_keys ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyLine:
    options: str
    key: str  # "ssh-ed25519 AAAA..."
    tag: str  # our comment: airflow-node-token:ID or airflow-node-worker:NAME@ADDRESS,token:ID

    def text(self) -> str:
        text = f"{self.options} {self.key} {self.tag}".strip()
        if any(ch in text for ch in "\r\n\0"):  # one key, one line: a line break would smuggle in another
            raise UserError("ssh-gate: a key line may not contain a line break")
        return text


def _parse_key_lines(text: str) -> list[KeyLine | str]:
    """Our lines parsed, anyone else's kept as they are (a person's own keys stay untouched)."""
    lines: list[KeyLine | str] = []
    for line in text.split("\n"):  # "\n" only: other line breaks inside a person's line stay in it
        if not line:
            continue
        match = _OUR_LINE.fullmatch(line)
        lines.append(KeyLine(*match.groups()) if match else line)
    return lines


def _gate_command(airflow_node_bin: str, keys_file: str, root: str, *args: str) -> str:
    # every word is a checked path or name: nothing here needs quoting inside the double quotes
    return " ".join([airflow_node_bin, "ssh-gate", "--keys", keys_file, "--root", root, *args])


@dataclass(frozen=True)
class KeysFile:
    """The airflow user's authorized_keys on the master, edited only as that user."""

    path: Path
    airflow_node_bin: str
    root: str = "/"

    def read(self) -> list[KeyLine | str]:
        return _parse_key_lines(statefile.read_text(self.path, limit=4 << 20) or "")

    def write(self, lines: list[KeyLine | str]) -> None:
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        text = "".join(f"{line.text() if isinstance(line, KeyLine) else line}\n" for line in lines)
        write_atomically(self.path, text.encode(), 0o600)

    def _tagged(self, tag: str) -> list[KeyLine]:
        return [line for line in self.read() if isinstance(line, KeyLine) and line.tag.startswith(tag)]

    def tokens(self) -> list[KeyLine]:
        return self._tagged(TOKEN_TAG)

    def enrolled(self) -> list[Member]:
        """The nodes enrolled through this master's gate (",token:" lines), the first MAX_WORKERS of them,
        as members; a line that is not one we could have written is skipped (the file is the airflow
        account's to write)."""
        found = []
        for line in [line for tag in NODE_TAGS for line in self._tagged(tag) if ENROLLED in line.tag][:MAX_WORKERS]:
            source = re.search(r'(?:^|,)from="([^"]*)"', line.options)
            head, _, rest = line.tag.partition(ENROLLED)
            name, _, address = head.partition(":")[2].partition("@")
            host_key = rest.partition(",host:")[2]
            role = MASTER if line.tag.startswith(MASTER_TAG) else "worker"
            member = Member(name, role, address, source[1] if source else "", line.key,
                            f"ssh-ed25519 {host_key}" if host_key else "")  # fmt: skip
            with contextlib.suppress(UserError):
                check_member(member, "authorized_keys")
                found.append(member)
        return found

    def converge(self, cluster: ClusterConfig, own_name: str) -> bool:
        """Make the nodes' lines what the cluster file says, every master alike: a line for each member but
        this master itself, none for a revoked key; a node enrolled here and not yet a member keeps its line
        (this master adds it to the file). Return whether the file changed."""
        revoked = cluster.revoked_keys
        with self._editing():
            lines = self.read()
            kept, present = [], set()
            members = {m.key: m for m in cluster.members  # a revoked key: no line, even if a member still
                       if m.name != own_name and key_fingerprint(m.key) not in revoked}  # fmt: skip
            for line in lines:
                ours = isinstance(line, KeyLine) and line.tag.startswith(NODE_TAGS)
                # a key no fingerprint can be taken of (a hand-edited line) is not one we wrote: dropped
                if ours and (
                    _fingerprint_or_none(line.key) in (*revoked, None)
                    or (MEMBER in line.tag and line.key not in members)
                ):
                    continue
                if ours:
                    present.add(line.key)
                kept.append(line)
            added = [self.member_line(m) for key, m in sorted(members.items()) if key not in present]
            if not added and len(kept) == len(lines):
                return False
            self.write([*kept, *added])
            return True

    def member_line(self, member: Member) -> KeyLine:
        tag = MASTER_TAG if member.role == MASTER else WORKER_TAG
        options = f'restrict,from="{member.source}",command="{self.gate(member.role, member.name)}"'
        return KeyLine(options, member.key, f"{tag}{member.name}@{member.address}{MEMBER}")

    def workers(self) -> list[tuple[str, str]]:
        """(name, advertised address) of every enrolled worker."""
        found = []
        for line in self._tagged(WORKER_TAG):
            name, _, rest = line.tag[len(WORKER_TAG) :].partition("@")
            found.append((name, rest.partition(",")[0]))
        return found

    def worker_sources(self) -> list[tuple[str, str]]:
        """(name, the address sshd saw it enroll from) of the first MAX_WORKERS enrolled workers, each
        clipped to 100 characters: where they connect from (the file is the airflow account's to write)."""
        found = []
        for line in self._tagged(WORKER_TAG)[:MAX_WORKERS]:
            source = re.search(r'(?:^|,)from="([^"]*)"', line.options)
            name = line.tag[len(WORKER_TAG) :].partition("@")[0]
            found.append((name[:100], source[1][:100] if source else ""))
        return found

    @contextlib.contextmanager
    def _editing(self):
        """Hold a lock for a read-change-write of the file: two workers may join at the same moment.
        Raise UserError naming the lock when another process holds it for KEYS_LOCK_WAIT seconds (the
        airflow account can hold it for ever)."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        lock = self.path.with_name(".airflow-node-keys.lock")
        with statefile.locked_fd(lock) as fd:
            if not statefile.flock_within(fd, KEYS_LOCK_WAIT):
                raise UserError(f"{lock}: another process has held this lock for {KEYS_LOCK_WAIT} seconds; nothing "
                                "was changed (try again; `fuser` names the holder)")  # fmt: skip
            yield

    def add_token(self, seed: bytes, expires: int, role: str = "worker") -> None:
        key = public_key_line(seed)
        token_id = key_fingerprint(key)[7:19]
        verb = "join-master" if role == MASTER else "join"  # the gate enrolls what the token is for, only
        with system_zone(self.root), self._editing():
            now = time.time()
            options = f'restrict,expiry-time="{_sshd_stamp(expires)}",command="{self.gate(verb, token_id)}"'
            kept = [line for line in self.read() if not (isinstance(line, KeyLine) and _expired(line, now))]
            self.write([*kept, KeyLine(options, key, TOKEN_TAG + token_id)])

    def enroll(self, name: str, key: str, address: str, client: str, token_id: str, host_key: str = "") -> None:
        """Add a worker's key (with a master's host key: a master's), usable only from `client` and only
        through the gate. Raise UserError, the file unchanged, when the name or the key is in the file
        already (a token holder may not replace a node, nor borrow a key), or when the token or the file
        has enrolled its limit."""
        role, tag = (MASTER, MASTER_TAG) if host_key else ("worker", WORKER_TAG)
        options = f'restrict,from="{client}",command="{self.gate(role, name)}"'
        with self._editing():
            lines = self.read()
            workers = [line for line in lines if isinstance(line, KeyLine) and line.tag.startswith(WORKER_TAG)]
            nodes = [line for line in lines if isinstance(line, KeyLine) and line.tag.startswith(NODE_TAGS)]
            if any(_is_node(line, name) for line in nodes):
                raise UserError(
                    f"ssh-gate: a node named {name} is enrolled already; to replace it, revoke it on a master "
                    f"first (airflow-node join-token --revoke {name})"
                )
            if host_key and sum(line.tag.startswith(MASTER_TAG) for line in nodes) >= MAX_MASTERS:
                raise UserError(f"ssh-gate: {MAX_MASTERS} masters are enrolled, the limit")
            if any(_holds_key(line, key) for line in lines):
                raise UserError("ssh-gate: that key is in the master's authorized_keys already")
            if sum(line.tag.endswith(f",token:{token_id}") for line in workers) >= MAX_ENROLMENTS_PER_TOKEN:
                raise UserError(
                    f"ssh-gate: this token has enrolled {MAX_ENROLMENTS_PER_TOKEN} workers, its limit; mint another"
                )
            if len(workers) >= MAX_WORKERS:
                raise UserError(f"ssh-gate: {MAX_WORKERS} workers are enrolled, the limit; revoke one first")
            host = f",host:{host_key.split()[1]}" if host_key else ""
            self.write([*lines, KeyLine(options, key, f"{tag}{name}@{address}{ENROLLED}{token_id}{host}")])

    def revoke(self, matches) -> list[str]:
        """Remove our lines that `matches`; return their tags. The file is rewritten only if one went."""
        with self._editing():
            lines = self.read()
            gone = [line.tag for line in lines if isinstance(line, KeyLine) and matches(line)]
            if gone:
                self.write([line for line in lines if not (isinstance(line, KeyLine) and matches(line))])
        return gone

    def revoke_token(self, token_id: str) -> list[str]:
        return self.revoke(lambda line: line.tag == TOKEN_TAG + token_id)

    def revoke_worker(self, name: str) -> list[str]:
        return self.revoke(lambda line: _is_node(line, name))

    def gate(self, *args: str) -> str:
        return _gate_command(self.airflow_node_bin, str(self.path), self.root, *args)


@contextlib.contextmanager
def system_zone(root: str):
    """Run the block with this process's local time in the system's zone: its /etc/localtime, which sshd
    reads (started by the init system, it has no TZ), not the TZ of the shell that runs us. The C
    library reads the file as it does for sshd: UTC when it is missing or not zone data."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = ":" + os.path.join(os.path.abspath(root), LOCALTIME.lstrip("/"))
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _sshd_stamp(epoch: int) -> str:
    """Given a time, return the expiry-time that sshd reads as that time (run in system_zone): local
    time without the "Z" (UTC) suffix that only OpenSSH 8.5 and later understand. sshd reads it with
    tm_isdst = 0, as standard time: in summer the stamp is an hour behind the clock, or the key would
    live an hour longer."""
    wall = time.localtime(epoch)
    standard = calendar.timegm(wall) - (int(time.mktime((*wall[:8], 0))) - epoch)
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(standard))


def expires_at(line: KeyLine) -> float | None:
    """When sshd stops accepting a line, read as sshd reads expiry-time (run in system_zone); None when
    the line has none, 0 when sshd could not read it (it refuses the line)."""
    match = re.search(r'expiry-time="(\d{14})(Z?)"', line.options)
    if not match:
        return None
    try:
        fields = time.strptime(match[1], "%Y%m%d%H%M%S")
        return calendar.timegm(fields) if match[2] else time.mktime((*fields[:8], 0))
    except (ValueError, OverflowError):
        return 0


def _expired(line: KeyLine, now: float) -> bool:
    expires = expires_at(line)
    return expires is not None and expires < now


def _fingerprint_or_none(key: str) -> str | None:
    try:
        return key_fingerprint(key)
    except (ValueError, IndexError):  # binascii.Error is a ValueError
        return None


def _is_node(line: KeyLine | str, name: str) -> bool:
    return isinstance(line, KeyLine) and line.tag.startswith((f"{WORKER_TAG}{name}@", f"{MASTER_TAG}{name}@"))


def _holds_key(line: KeyLine | str, key: str) -> bool:
    """Whether a line of the file, ours or a person's, is for this public key."""
    return key.split()[1] in (line.key if isinstance(line, KeyLine) else line).split()


def keys_file_of(target: Target, ctx: NodeContext) -> KeysFile:
    """The authorized_keys of the master's airflow user: in its home (AIRFLOW_HOME when init made the
    user; on the real system, wherever the account says)."""
    home = ctx.cluster.airflow_home
    if target.real_system:
        with contextlib.suppress(KeyError):
            home = pwd.getpwnam(ctx.cluster.airflow_user).pw_dir
    path = target.path(f"{home}/.ssh/authorized_keys")
    return KeysFile(path, ctx.node.airflow_node_bin, str(target.root))


def pinned(known_hosts: Path) -> tuple[str, ...]:
    """ssh options that trust only the master's host key pinned at join time."""
    return ("-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "HostKeyAlgorithms=ssh-ed25519", "-o", "StrictHostKeyChecking=yes")  # fmt: skip


def enrolled_sources(target: Target, ctx: NodeContext) -> tuple[tuple[str, str], ...]:
    """(name, address) of each worker enrolled on this master, as pg_hba admits them: read as the airflow
    account (the file is its own), then only host names and IP addresses kept."""
    keys = keys_file_of(target, ctx)
    try:
        found = as_user(ctx.cluster.airflow_user if target.privileged else None, keys.worker_sources)
    except NoSuchAccount:  # the first init: no account, nothing enrolled
        return ()
    kept = []
    for name, address in found:
        with contextlib.suppress(ValueError, UserError):
            ipaddress.ip_address(address)
            check_host(name, "authorized_keys")
            kept.append((name, address))
    return tuple(kept)
