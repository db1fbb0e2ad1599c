"""A worker joins with one command and a token, over the sshd the master already runs.

The design (kubeadm's and k3s's, on sshd instead of a new network service):
- A token carries the master's address, the SHA256 fingerprint of its SSH host key, and the 32-byte
  seed of a one-purpose ed25519 key. The master lists that key in its airflow user's authorized_keys
  with `restrict`, an `expiry-time` and a forced command (`airflow-node ssh-gate join`): it can do
  nothing but enroll a worker, and sshd itself refuses it after expiry or once the line is gone.
- The worker checks the master's host key against the fingerprint before it sends anything (no trust
  on first use), then enrolls a key of its own and receives the cluster file in the same exchange.
- Every enrolled worker key is `restrict`ed to `airflow-node ssh-gate worker NAME`, which allows
  exactly these requests: the cluster file, the revision of the master's offered DAG release and the
  names of the releases it holds, a read-only rsync of the DAG tree or of one release (through rsync's
  own `rrsync -ro`), and `leave` (its key removed). No shell, no forwarding, no writes.
- A worker key carries `from="ADDRESS"`, the address it enrolled from (sshd's SSH_CONNECTION, not
  what the worker says): a stolen key is no use from elsewhere. It has no expiry-time: a thief
  holding it could renew it as well as the worker, and a worker cut off while the master is down
  would need a new token. It lives until `leave` or `join-token --revoke NAME`; a worker whose
  address changes is revoked and joins again.
- A token holder can only add: a name or key already in the file is refused (the operator revokes
  first), one token enrolls at most MAX_ENROLMENTS_PER_TOKEN keys, the file holds at most MAX_WORKERS.

The master's authorized_keys belongs to its airflow user, so root edits it only as that user.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import re
import select
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import defaults, execute, statefile
from airflow_nodes.cluster import ED25519_LINE, MASTER, WORKER, key_fingerprint, read_cluster
from airflow_nodes.context import load_context
from airflow_nodes.dagsource import master_endpoint, parse_dags_source
from airflow_nodes.errors import ERROR_PREFIX, OperationError, UserError
from airflow_nodes.execute import as_user
from airflow_nodes.exitcodes import ExitCode
from airflow_nodes.netio import ProbeFailure
from airflow_nodes.node import (
    CLUSTER_FILE,
    DAG_RELEASES_DIR,
    DAGS_AUTHORING_DIR,
    KNOWN_HOSTS_FILE,
    SSH_KEY_FILE,
    UPGRADE_MARKER,
)
from airflow_nodes.pgclient import server_version_num
from airflow_nodes.schema import LOGIN_NAME, check_host
from airflow_nodes.sshkeys import (
    TOKEN_TAG,
    KeysFile,
    expires_at,
    keys_file_of,
    pinned,
    private_key_file,
    public_key_line,
    system_zone,
)
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.syncing.releases import read_offered, release_names
from airflow_nodes.target import Target
from airflow_nodes.urls import bare_host

TOKEN_PREFIX = "afn1-"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
JOIN_REQUEST_LIMIT, JOIN_REQUEST_WAIT = 8192, 5  # bytes and seconds the gate reads a join request for
# a joining worker's name and address land in authorized_keys, the name as a word of the gate's shell
# command line: not schema's host pattern, whose brackets are shell glob characters; bounded
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,62}$")  # an IP address, or a name if that is all there is
_TOKEN_ID = re.compile(r"^[A-Za-z0-9+/]{12}$")


@dataclass(frozen=True)
class JoinToken:
    host: str
    port: int
    user: str
    fingerprint: str  # "SHA256:..." of the master's ed25519 host key, as ssh-keygen -l prints it
    seed: bytes  # the one-purpose key's private seed
    expires: int  # epoch seconds (sshd enforces it too)
    role: str = WORKER  # what it joins: a worker, or another master

    @property
    def id(self) -> str:
        return key_fingerprint(public_key_line(self.seed))[7:19]

    def encode(self) -> str:
        body = {"h": self.host, "p": self.port, "u": self.user, "f": self.fingerprint,
                "k": _b64(self.seed), "e": self.expires, "r": self.role}  # fmt: skip
        return TOKEN_PREFIX + _b64(json.dumps(body, separators=(",", ":")).encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_token(text: str, option: str = "--join") -> JoinToken:
    """Given a token, return it parsed. Raise UserError (never echoing the token) if it is not one."""
    text = text.strip()
    bad = UserError(f"{option}: not an airflow-node join token (mint one with `airflow-node join-token` on the master)")
    if not text.startswith(TOKEN_PREFIX) or len(text) > 1000:
        raise bad
    try:
        body = json.loads(_unb64(text[len(TOKEN_PREFIX) :]))
        token = JoinToken(body["h"], int(body["p"]), body["u"], body["f"], _unb64(body["k"]), int(body["e"]),
                          body.get("r", WORKER))  # fmt: skip
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError, AttributeError):
        raise bad from None
    if token.role not in (WORKER, MASTER):
        raise bad
    check_host(token.host, option)
    if not (0 < token.port < 65536 and LOGIN_NAME.fullmatch(token.user) and len(token.seed) == 32):
        raise bad
    if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", token.fingerprint):
        raise bad
    return token


# -- the forced command: what a key may do on the master -----------------------------------------


def gate(keys: KeysFile, args: list[str], original_command: str, stdin) -> bytes:
    """Serve one SSH request of a key we added; return what goes to stdout. Raise UserError on a request
    that key may not make. `args` are the forced command's own words: ["join", TOKEN_ID] or ["worker", NAME].
    sshd's SSH_CONNECTION names the client a worker key is then pinned to."""
    root = Path(keys.root)
    cluster_file = root / CLUSTER_FILE.lstrip("/")
    if args == ["join"]:
        raise UserError("ssh-gate: this token comes from an older airflow-node; mint another on the master")
    if len(args) == 2 and args[0] in ("join", "join-master") and _TOKEN_ID.fullmatch(args[1]):
        client = _client_address()
        try:
            request = json.loads(_read_join_request(stdin) or b"{}")
        except (ValueError, RecursionError):
            request = None
        if not isinstance(request, dict):
            raise UserError("ssh-gate: a join request is one JSON object")
        name, key, address = request.get("name", ""), request.get("key", ""), request.get("address", "")
        if not (
            _NODE_NAME.fullmatch(str(name)) and ED25519_LINE.fullmatch(str(key)) and _ADDRESS.fullmatch(str(address))
        ):
            raise UserError("ssh-gate: a join needs a node name, an ed25519 public key and an address")
        # the token's line says what it enrolls (sshd forces the command): a worker, or a master
        joins, asks = (MASTER if args[0] == "join-master" else WORKER), request.get("role", WORKER)
        if asks != joins:
            raise UserError(f"ssh-gate: this token joins a {joins}, not a {str(asks)[:20]}; mint one for that "
                            "with `airflow-node join-token --role ROLE`")  # fmt: skip
        host_key = str(request.get("host_key", "")) if joins == MASTER else ""
        if joins == MASTER and not ED25519_LINE.fullmatch(host_key):
            raise UserError("ssh-gate: a master's join needs its ed25519 SSH host key")
        if name in names_taken(root):  # keys.enroll sees this master's file only; the cluster knows more
            raise UserError(f"ssh-gate: a node named {name} is in the cluster already; give this one another "
                            "--node-name, or revoke that one first (join-token --revoke NAME)")  # fmt: skip
        keys.enroll(name, key, address, client, args[1], host_key)
        return statefile.read_bytes(cluster_file) or b""
    if len(args) == 2 and args[0] in (WORKER, MASTER):
        try:
            words = shlex.split(original_command)
        except ValueError:
            words = []
        if words in (["cat", CLUSTER_FILE], ["cat", str(cluster_file)]):
            return statefile.read_bytes(cluster_file) or b""
        if words == ["leave"]:
            keys.revoke_worker(args[1])
            return b"left\n"
        if words == ["release"]:  # the cheap no-change check: one small answer, no walk of the tree
            # and the cluster file's hash: a worker that holds it need not fetch it (one connection fewer);
            # and, while this master upgrades the cluster, the version it moves to (the other masters stop)
            offered = read_offered(root / DAG_RELEASES_DIR.lstrip("/") / "offered")
            cluster_hash = hashlib.sha256(statefile.read_bytes(cluster_file) or b"").hexdigest()
            upgrading = upgrade_in_progress(root)
            return (f"{offered}\n{cluster_hash}\n" + (f"upgrading {upgrading}\n" if upgrading else "")).encode()
        if words == ["releases"]:  # which releases a task may still ask its worker for
            names = release_names(root / DAG_RELEASES_DIR.lstrip("/") / "releases")
            return "".join(f"{name}\n" for name in names).encode()
        if words[:3] == ["rsync", "--server", "--sender"] and served(words[-1].rstrip("/"), cluster_file):
            # rrsync checks every option; it roots the transfer at the DAG tree and refuses writes
            os.environ["SSH_ORIGINAL_COMMAND"] = shlex.join([*words[:-1], "./"])
            rrsync = shutil.which("rrsync")
            if rrsync is None:
                raise UserError("ssh-gate: rrsync (from the rsync package) is not installed on the master")
            os.execv(rrsync, [rrsync, "-ro", str(root / words[-1].rstrip("/").lstrip("/"))])
    raise UserError(f"ssh-gate: this key may not run {original_command[:60]!r}")


def upgrade_marker(version: str) -> bytes:
    """What `upgrade` writes to UPGRADE_MARKER while it runs: the version, and this process (its pid and
    start time: a pid alone may be another process's after a reboot)."""
    return f"{version} {os.getpid()} {_process_start(os.getpid())}\n".encode()


def upgrade_in_progress(root: Path) -> str:
    """The Airflow version this master's running upgrade moves the cluster to, or "": none, or one that
    died without cleaning up (killed, or its host rebooted), which holds no master for ever."""
    words = (statefile.read_text(root / UPGRADE_MARKER.lstrip("/"), limit=128) or "").split()
    if len(words) != 3 or not words[1].isdigit() or _process_start(int(words[1])) != words[2]:
        return ""
    return words[0]


def _process_start(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/PID/stat's 22nd field), or "" when it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return ""
    fields = stat_line.rpartition(")")[2].split()  # after the command's name, which may hold spaces
    return fields[19] if len(fields) > 19 else ""


def names_taken(root: Path) -> set[str]:
    """The node names a new node may not take: the cluster file's members, and this master's own."""
    try:
        ctx = load_context(Target.at(str(root)))
    except UserError:  # no node here yet: nothing to clash with
        return set()
    return {member.name for member in ctx.cluster.members} | {ctx.node.node_name}


def _client_address() -> str:
    """The address this SSH connection comes from, as sshd tells its forced command. Raise UserError
    when there is none (the gate is run by sshd only)."""
    words = os.environ.get("SSH_CONNECTION", "").split()
    try:
        address = str(ipaddress.ip_address(words[0]))
    except (IndexError, ValueError):
        address = ""
    if not re.fullmatch(r"[0-9a-f.:]+", address):  # nor an IPv6 scope ("%eth0"): it goes into from="..."
        raise UserError("ssh-gate: no client address in SSH_CONNECTION (sshd runs the gate)")
    return address


def _read_join_request(stdin) -> bytes:
    """Return what the client sends up to its end of input. Raise UserError when that takes more than
    JOIN_REQUEST_WAIT seconds or JOIN_REQUEST_LIMIT bytes: a client that never ends would otherwise
    hold this process and its sshd session for ever."""
    fd, data = stdin.fileno(), b""
    deadline = time.monotonic() + JOIN_REQUEST_WAIT
    while len(data) <= JOIN_REQUEST_LIMIT:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise UserError(f"ssh-gate: no complete join request within {JOIN_REQUEST_WAIT} seconds")
        chunk = os.read(fd, JOIN_REQUEST_LIMIT + 1 - len(data))
        if not chunk:
            return data
        data += chunk
    raise UserError(f"ssh-gate: a join request is at most {JOIN_REQUEST_LIMIT} bytes")


def served(path: str, cluster_file: Path) -> bool:
    """Whether the gate serves `path` to a worker: the DAG source, or one release by its name."""
    return path == served_dags_dir(cluster_file) or bool(
        re.fullmatch(rf"{DAG_RELEASES_DIR}/releases/[0-9a-f]{{16}}", path)
    )


def served_dags_dir(cluster_file: Path) -> str:
    """The one directory the master serves to workers: its DAG source's path (the cluster file says)."""
    try:
        return parse_dags_source(read_cluster(cluster_file).dags_source).path.rstrip("/") or DAGS_AUTHORING_DIR
    except UserError:  # no cluster file to say otherwise: the default
        return DAGS_AUTHORING_DIR


# -- the worker's side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Joined:
    cluster_text: bytes
    key_file: bytes  # the worker's own private key (OpenSSH format)
    known_hosts: bytes  # the master's host key, pinned from the token


def verified_host_key(token: JoinToken, timeout: float = 15) -> str:
    """Return the master's host key line after checking its fingerprint against the token. Raise
    UserError when it differs: nothing has been sent to that host but the key exchange's own bytes."""
    result = execute.run(
        ["ssh-keyscan", "-T", str(int(timeout)), "-t", "ed25519", "-p", str(token.port), "--", bare_host(token.host)],
        what=f"--join: reading the host key of {token.host}:{token.port}", timeout=timeout + 5, ok_codes=None,
    )  # fmt: skip
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "ssh-ed25519":
            found = key_fingerprint(" ".join(words[1:3]))
            if found != token.fingerprint:
                raise UserError(
                    f"--join: the master at {token.host}:{token.port} presents host key {found}, the token expects "
                    f"{token.fingerprint}; nothing was sent"
                )
            return " ".join(words[1:3])
    raise OperationError(f"--join: no ed25519 host key from {token.host}:{token.port} (is sshd running there?)")


def known_hosts_line(token: JoinToken, key: str) -> str:
    host = bare_host(token.host)
    return f"{host if token.port == 22 else f'[{host}]:{token.port}'} {key}\n"


def join(
    token: JoinToken, node_name: str, address: str, worker_seed: bytes | None = None, host_key: str = ""
) -> Joined:
    """Enroll this node with the master a token names (a master: with its SSH host key); return the
    cluster file and this node's key.

    Raise UserError for a token the master refuses (expired, revoked) or a master that is not the one
    the token names, OperationError when the master cannot be reached.
    """
    if token.expires < time.time():
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(token.expires))
        raise UserError(f"--join: the token expired at {expired}; mint another with `airflow-node join-token`")
    host_key = verified_host_key(token)
    seed = worker_seed or os.urandom(32)
    asked = {"name": node_name, "key": public_key_line(seed), "address": address, "role": token.role}
    request = json.dumps({**asked, "host_key": host_key} if host_key else asked).encode()
    with tempfile.TemporaryDirectory(prefix="airflow-node-join-") as scratch:  # 0700
        token_key, known = Path(scratch) / "token_key", Path(scratch) / "known_hosts"
        fd = os.open(token_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_file(token.seed))
        known.write_text(known_hosts_line(token, host_key))
        argv = ["ssh", "-F", "/dev/null", "-i", token_key, "-o", "IdentitiesOnly=yes", *pinned(known),
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                "-p", str(token.port), "--", f"{token.user}@{bare_host(token.host)}", "join"]  # fmt: skip
        # 120 s: a master busy (re)starting its daemons answers slowly, and a join is rare
        result = execute.run(argv, what="--join", input=request, binary=True, timeout=120, ok_codes=None)
    if result.returncode == 255 and b"Permission denied" in result.stderr:
        raise UserError("--join: the master refused the token (revoked or expired); mint another there")
    if result.returncode == ExitCode.USAGE:  # the gate's UserError: this request is refused (a name enrolled already)
        said = result.stderr.decode(errors="replace").strip().splitlines() or ["?"]
        # the line the master's CLI printed for its UserError: what that error said, without the CLI's prefix
        why = said[-1].removeprefix(ERROR_PREFIX)[:300]
        raise UserError(f"the master refused to enroll {node_name}: {why}", about="--join")
    if result.returncode != 0 or not result.stdout.strip():
        reason = execute.failure_reason(argv, result.returncode, result.stderr)
        raise OperationError(f"--join: enrolling with {token.host}: {reason}")
    return Joined(result.stdout, private_key_file(seed), known_hosts_line(token, host_key).encode())


def mint(keys: KeysFile, host: str, port: int, user: str, host_key: str, ttl: int, role: str = WORKER) -> JoinToken:
    """Add a new token's key to the master's authorized_keys; return the token."""
    if not 60 <= ttl <= defaults.JOIN_TOKEN_MAX_TTL:
        raise UserError(f"--ttl: 60 to {defaults.JOIN_TOKEN_MAX_TTL} seconds, got {ttl}")
    token = JoinToken(host, port, user, key_fingerprint(host_key), os.urandom(32), int(time.time()) + ttl, role)
    keys.add_token(token.seed, token.expires, role)
    return token


def token_command(token: JoinToken) -> str:
    """The node's command, the token in its environment: not in argv (ps), only the shell's history."""
    return f"AIRFLOW_NODE_JOIN_TOKEN={token.encode()} airflow-node init --role {token.role}"


def read_token(value: str | None, file: Path | None) -> str | None:
    """The token from --join, --join-file or $AIRFLOW_NODE_JOIN_TOKEN (so it need not be in argv)."""
    if value and file:
        raise UserError("--join-file: give the token one way only")
    return statefile.read_secret_file(file, "--join-file") if file else value


# -- the commands around it: on the master, and the worker's leaving --------------------------------


def host_key_of(target) -> str:
    """This host's ed25519 SSH host key line. Raise UserError when there is none (sshd not installed)."""
    host_key_text = statefile.read_text(target.path(HOST_KEY), limit=4096)
    host_key = " ".join((host_key_text or "").split()[:2])
    if not ED25519_LINE.fullmatch(host_key):
        raise UserError(f"{target.path(HOST_KEY)}: no SSH host key; install and start openssh-server here")
    return host_key


OLDEST_DB_FOR_MASTERS = 120000  # PostgreSQL 12: Airflow's schedulers coordinate with SKIP LOCKED / NOWAIT


def check_database_for_masters(db_url: str) -> None:
    """Several schedulers need a database that can lock rows as they do (PostgreSQL 12 or later, as
    Airflow's docs say). Raise UserError naming the option when it cannot, or does not answer."""
    try:
        version = server_version_num(db_url, timeout=10)
    except ProbeFailure as exc:
        raise UserError(
            f"the metadata DB does not answer ({exc}); several masters need it", about="--role master"
        ) from None
    if version < OLDEST_DB_FOR_MASTERS:
        raise UserError(f"the metadata DB is PostgreSQL {version // 10000}; several schedulers need 12 or later",
                        about="--role master")  # fmt: skip


def master_join_token(target, ttl: int = defaults.JOIN_TOKEN_TTL, ssh_port: int = 22, role: str = WORKER) -> JoinToken:
    """On a master: mint a token (for a worker, or another master) for its address and SSH host key. Raise
    UserError when this node is no master, has no ed25519 host key, or, for a master, runs an Airflow
    that cannot run several schedulers."""
    ctx, user = _master(target)
    if role == MASTER and not ctx.cluster.version.several_schedulers:
        raise UserError(f"--role master: this cluster runs Airflow {ctx.cluster.airflow_version}; several schedulers "
                        "need Airflow 3.2 or later (before it they can run a task twice): upgrade first")  # fmt: skip
    if role == MASTER:
        check_database_for_masters(ctx.cluster.db_url)
    host_key = host_key_of(target)
    address = ctx.own_address  # this master's own address
    encoded = as_user(user, lambda *a: mint(*a).encode(), keys_file_of(target, ctx), address, ssh_port,
                      ctx.cluster.airflow_user, host_key, ttl, role)  # fmt: skip
    return parse_token(encoded)


def _master(target):
    """This master's context and the account its authorized_keys is edited as. Raise UserError on a worker."""
    ctx = load_context(target)
    if not ctx.role.creates_cluster:
        raise UserError("join-token: run it on the master (this node is a worker)")
    return ctx, (ctx.cluster.airflow_user if target.privileged else None)


@dataclass(frozen=True)
class ListedToken:
    id: str
    expires: float | None  # epoch seconds as sshd reads the line's expiry-time; None when it has none
    expired: bool


@dataclass(frozen=True)
class EnrolledWorker:
    name: str
    address: str  # the address it advertised when it enrolled


@dataclass(frozen=True)
class JoinListing:
    """The master's join tokens and enrolled workers (output.join_listing prints them)."""

    tokens: list[ListedToken]
    workers: list[EnrolledWorker]


def list_joins(target) -> JoinListing:
    """On the master: return its tokens, expired ones included, and its enrolled workers. Raise UserError
    on a worker."""
    ctx, _ = _master(target)
    keys = keys_file_of(target, ctx)
    with system_zone(keys.root):
        tokens = [(line.tag[len(TOKEN_TAG) :], expires_at(line)) for line in keys.tokens()]
    now = time.time()
    return JoinListing(
        [ListedToken(token_id, expires, expires is not None and expires < now) for token_id, expires in tokens],
        [EnrolledWorker(name, address) for name, address in keys.workers()],
    )


def revoke(target, what: str) -> list[str]:
    """Revoke the token with this id, or else the enrolled worker with this name; return the tags of the
    key lines removed. Raise UserError when nothing has that id or name."""
    ctx, user = _master(target)
    keys = keys_file_of(target, ctx)
    gone = as_user(user, keys.revoke_token, what) or as_user(user, keys.revoke_worker, what)
    if not gone:
        raise UserError(f"no token or enrolled worker named {what!r}", about="join-token --revoke")
    return gone


def check_token(text: str) -> str:
    """--dry-run --join: check the token and the master's identity; enroll nothing."""
    token = parse_token(text)
    if token.expires < time.time():
        raise UserError("--join: the token has expired; mint another with `airflow-node join-token`")
    verified_host_key(token)
    return (f"token {token.id} for {token.user}@{token.host}:{token.port} is valid; the master presents host key "
            f"{token.fingerprint}. Dry run: nothing was sent or changed.")  # fmt: skip


def leave(target, ctx) -> str:
    """A joined worker tells the master to drop its key (uninstall). Return a line for the report."""
    key = target.path(SSH_KEY_FILE)
    if not key.exists():
        return ""
    runner = TransferRunner(ssh_key=str(key), ssh_extra=pinned(target.path(KNOWN_HOSTS_FILE)), failure_note="")
    spec = parse_dags_source(ctx.cluster.dags_source)
    destination, port = master_endpoint(spec, ctx.cluster.airflow_user, ctx.cluster.master_host)
    if not target.real_system:
        return f"not run under --root: ssh {destination} leave   # the master drops this worker's key"
    try:
        runner.run([*runner.ssh_argv(port), "--", destination, "leave"], f"leaving {destination}")
    except OperationError as exc:
        return f"warning: {exc}; revoke it on the master: airflow-node join-token --revoke {ctx.node.node_name}"
    return f"the master dropped this worker's key ({destination})"
