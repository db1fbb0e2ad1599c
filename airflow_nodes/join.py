"""A worker joins with one command and a token, over the sshd the master already runs.

The design (kubeadm's and k3s's, on sshd instead of a new network service):
- A token carries the master's address, the SHA256 fingerprint of its SSH host key, and the 32-byte
  seed of a one-purpose ed25519 key. The master lists that key in its airflow user's authorized_keys
  with `restrict`, an `expiry-time` and a forced command (`airflow-node ssh-gate join`): it can do
  nothing but enroll a worker, and sshd itself refuses it after expiry or once the line is gone.
- The worker checks the master's host key against the fingerprint before it sends anything (no trust
  on first use), then enrolls a key of its own and receives the cluster file in the same exchange.
- Every enrolled worker key is `restrict`ed to `airflow-node ssh-gate worker NAME`, which allows
  exactly three requests: the cluster file, a read-only rsync of the DAG tree (through rsync's own
  `rrsync -ro`), and `leave` (its key removed). No shell, no forwarding, no writes.

The master's authorized_keys belongs to its airflow user, so root edits it only as that user.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute, statefile
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import CLUSTER_FILE, DAGS_AUTHORING_DIR
from airflow_nodes.schema import check_host

TOKEN_PREFIX = "afn1-"
DEFAULT_TTL = 3600  # seconds a token can enroll workers
MAX_TTL = 7 * 86400
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
TOKEN_TAG, WORKER_TAG = "airflow-node-token:", "airflow-node-worker:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,62}$")  # an IP address, or a name if that is all there is
_ED25519_LINE = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]{68}$")
_OUR_LINE = re.compile(rf"^(.+?) (ssh-ed25519 [A-Za-z0-9+/=]+) ((?:{TOKEN_TAG}|{WORKER_TAG})\S+)$")


@dataclass(frozen=True)
class JoinToken:
    host: str
    port: int
    user: str
    fingerprint: str  # "SHA256:..." of the master's ed25519 host key, as ssh-keygen -l prints it
    seed: bytes  # the one-purpose key's private seed
    expires: int  # epoch seconds (sshd enforces it too)

    @property
    def id(self) -> str:
        return fingerprint_of(public_key_line(self.seed))[7:19]

    def encode(self) -> str:
        body = {"h": self.host, "p": self.port, "u": self.user, "f": self.fingerprint,
                "k": _b64(self.seed), "e": self.expires}  # fmt: skip
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
        token = JoinToken(body["h"], int(body["p"]), body["u"], body["f"], _unb64(body["k"]), int(body["e"]))
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise bad from None
    check_host(token.host, option)
    if not (0 < token.port < 65536 and _NAME.match(token.user) and len(token.seed) == 32):
        raise bad
    if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", token.fingerprint):
        raise bad
    return token


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


def fingerprint_of(key_line: str) -> str:
    """Given "TYPE BASE64 [comment]", return its fingerprint as ssh-keygen -l prints it (SHA256:...)."""
    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# -- the master's authorized_keys ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyLine:
    options: str
    key: str  # "ssh-ed25519 AAAA..."
    tag: str  # our comment: airflow-node-token:ID or airflow-node-worker:NAME@ADDRESS

    def text(self) -> str:
        return f"{self.options} {self.key} {self.tag}".strip()


def _parse_key_lines(text: str) -> list[KeyLine | str]:
    """Our lines parsed, anyone else's kept as they are (a person's own keys stay untouched)."""
    lines: list[KeyLine | str] = []
    for line in text.splitlines():
        match = _OUR_LINE.match(line)
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

    def tokens(self) -> list[KeyLine]:
        return [line for line in self.read() if isinstance(line, KeyLine) and line.tag.startswith(TOKEN_TAG)]

    def workers(self) -> list[tuple[str, str]]:
        """(name, advertised address) of every enrolled worker."""
        found = []
        for line in self.read():
            if isinstance(line, KeyLine) and line.tag.startswith(WORKER_TAG):
                name, _, address = line.tag[len(WORKER_TAG) :].partition("@")
                found.append((name, address))
        return found

    @contextlib.contextmanager
    def _editing(self):
        """Hold a lock for a read-change-write of the file: two workers may join at the same moment."""
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        with statefile.locked_fd(self.path.with_name(".airflow-node-keys.lock")) as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield

    def add_token(self, seed: bytes, expires: int) -> None:
        now = time.time()
        stamp = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(expires))
        options = f'restrict,expiry-time="{stamp}",command="{self.gate("join")}"'
        key = public_key_line(seed)
        with self._editing():
            kept = [line for line in self.read() if not (isinstance(line, KeyLine) and _expired(line, now))]
            self.write([*kept, KeyLine(options, key, TOKEN_TAG + fingerprint_of(key)[7:19])])

    def enroll(self, name: str, key: str, address: str) -> None:
        options = f'restrict,command="{self.gate("worker", name)}"'
        with self._editing():
            kept = [line for line in self.read() if not _is_worker(line, name)]
            self.write([*kept, KeyLine(options, key, f"{WORKER_TAG}{name}@{address}")])

    def revoke(self, what: str) -> list[str]:
        """Remove the token with this id, or the worker with this name. Return the tags removed."""
        with self._editing():
            lines = self.read()
            gone = [line.tag for line in lines if isinstance(line, KeyLine) and _names(line, what)]
            self.write([line for line in lines if not (isinstance(line, KeyLine) and _names(line, what))])
        return gone

    def gate(self, *args: str) -> str:
        return _gate_command(self.airflow_node_bin, str(self.path), self.root, *args)


def _expired(line: KeyLine, now: float) -> bool:
    match = re.search(r'expiry-time="(\d{14})Z"', line.options)
    return bool(match) and calendar.timegm(time.strptime(match[1], "%Y%m%d%H%M%S")) < now


def _is_worker(line: KeyLine | str, name: str) -> bool:
    return isinstance(line, KeyLine) and line.tag.startswith(f"{WORKER_TAG}{name}@")


def _names(line: KeyLine, what: str) -> bool:
    return line.tag == TOKEN_TAG + what or _is_worker(line, what)


# -- the forced command: what a key may do on the master -----------------------------------------


def gate(keys: KeysFile, args: list[str], original_command: str, stdin) -> bytes:
    """Serve one SSH request of a key we added; return what goes to stdout. Raise UserError on a request
    that key may not make. `args` are the forced command's own words: ["join"] or ["worker", NAME]."""
    root = Path(keys.root)
    cluster_file = root / CLUSTER_FILE.lstrip("/")
    if args == ["join"]:
        request = json.loads(stdin.read(8192) or b"{}")
        name, key, address = request.get("name", ""), request.get("key", ""), request.get("address", "")
        if not (_NAME.match(str(name)) and _ED25519_LINE.match(str(key)) and _ADDRESS.match(str(address))):
            raise UserError("ssh-gate: a join needs a node name, an ed25519 public key and an address")
        keys.enroll(name, key, address)
        return statefile.read_bytes(cluster_file) or b""
    if len(args) == 2 and args[0] == "worker":
        words = shlex.split(original_command)
        if words in (["cat", CLUSTER_FILE], ["cat", str(cluster_file)]):
            return statefile.read_bytes(cluster_file) or b""
        if words == ["leave"]:
            keys.revoke(args[1])
            return b"left\n"
        if words[:3] == ["rsync", "--server", "--sender"] and words[-1].rstrip("/") in (DAGS_AUTHORING_DIR,):
            # rrsync checks every option; it roots the transfer at the DAG tree and refuses writes
            os.environ["SSH_ORIGINAL_COMMAND"] = shlex.join([*words[:-1], "./"])
            dags = str(root / DAGS_AUTHORING_DIR.lstrip("/"))
            os.execvp("rrsync", ["rrsync", "-ro", dags])
    raise UserError(f"ssh-gate: this key may not run {original_command[:60]!r}")


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
        ["ssh-keyscan", "-T", str(int(timeout)), "-t", "ed25519", "-p", str(token.port), "--", token.host.strip("[]")],
        what=f"--join: reading the host key of {token.host}:{token.port}", timeout=timeout + 5, ok_codes=None,
    )  # fmt: skip
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "ssh-ed25519":
            found = fingerprint_of(" ".join(words[1:3]))
            if found != token.fingerprint:
                raise UserError(
                    f"--join: the master at {token.host}:{token.port} presents host key {found}, the token expects "
                    f"{token.fingerprint}; nothing was sent"
                )
            return " ".join(words[1:3])
    raise OperationError(f"--join: no ed25519 host key from {token.host}:{token.port} (is sshd running there?)")


def known_hosts_line(token: JoinToken, key: str) -> str:
    host = token.host.strip("[]")
    return f"{host if token.port == 22 else f'[{host}]:{token.port}'} {key}\n"


def join(token: JoinToken, node_name: str, address: str, worker_seed: bytes | None = None) -> Joined:
    """Enroll this worker with the master a token names; return the cluster file and this worker's key.

    Raise UserError for a token the master refuses (expired, revoked) or a master that is not the one
    the token names, OperationError when the master cannot be reached.
    """
    if token.expires < time.time():
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(token.expires))
        raise UserError(f"--join: the token expired at {expired}; mint another with `airflow-node join-token`")
    host_key = verified_host_key(token)
    seed = worker_seed or os.urandom(32)
    request = json.dumps({"name": node_name, "key": public_key_line(seed), "address": address}).encode()
    with tempfile.TemporaryDirectory(prefix="airflow-node-join-") as scratch:  # 0700
        token_key, known = Path(scratch) / "token_key", Path(scratch) / "known_hosts"
        fd = os.open(token_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_file(token.seed))
        known.write_text(known_hosts_line(token, host_key))
        argv = ["ssh", "-i", token_key, "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                "-p", str(token.port), "--", f"{token.user}@{token.host.strip('[]')}", "join"]  # fmt: skip
        result = execute.run(argv, what="--join", input=request, binary=True, timeout=60, ok_codes=None)
    if result.returncode == 255 and b"Permission denied" in result.stderr:
        raise UserError("--join: the master refused the token (revoked or expired); mint another there")
    if result.returncode != 0 or not result.stdout.strip():
        reason = execute.failure_reason(argv, result.returncode, result.stderr)
        raise OperationError(f"--join: enrolling with {token.host}: {reason}")
    return Joined(result.stdout, private_key_file(seed), known_hosts_line(token, host_key).encode())


def mint(keys: KeysFile, host: str, port: int, user: str, host_key: str, ttl: int) -> JoinToken:
    """Add a new token's key to the master's authorized_keys; return the token."""
    if not 60 <= ttl <= MAX_TTL:
        raise UserError(f"--ttl: 60 to {MAX_TTL} seconds, got {ttl}")
    token = JoinToken(host, port, user, fingerprint_of(host_key), os.urandom(32), int(time.time()) + ttl)
    keys.add_token(token.seed, token.expires)
    return token


def as_user(user: str | None, action, *args):
    """Run action(*args) as `user` in a child process (root edits the airflow user's files only as that
    user: a link that user planted then leads nowhere root could not otherwise go). Return its result."""
    if not user:
        return action(*args)
    import pickle  # the child hands its result (or its error) back through a pipe
    import pwd

    account = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            outcome = (True, action(*args))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            outcome = (False, exc if isinstance(exc, UserError | OperationError) else OperationError(str(exc)))
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(outcome, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data) if data else (False, OperationError(f"editing as {user} failed"))
    if not ok:
        raise value
    return value


def token_command(token: JoinToken) -> str:
    return f"airflow-node init --role worker --join {token.encode()}"


def read_token(value: str | None, file: Path | None) -> str | None:
    """The token from --join, --join-file or $AIRFLOW_NODE_JOIN_TOKEN (so it need not be in argv)."""
    if value and file:
        raise UserError("--join-file: give the token one way only")
    if file:
        data = statefile.read_bytes(file, limit=4096, follow_links=True)
        if data is None:
            raise UserError(f"--join-file: cannot read {file} (no such file)")
        return data.decode(errors="replace").strip()
    return value


# -- the commands around it: on the master, and the worker's leaving --------------------------------


def keys_file_of(target, ctx) -> KeysFile:
    """The authorized_keys of the master's airflow user (its home is AIRFLOW_HOME)."""
    path = target.path(f"{ctx.cluster.airflow_home}/.ssh/authorized_keys")
    return KeysFile(path, ctx.node.airflow_node_bin, str(target.root))


def master_join_token(target, ttl: int = DEFAULT_TTL, ssh_port: int = 22) -> JoinToken:
    """On the master: mint a token for its address and SSH host key. Raise UserError when this node is
    no master or has no ed25519 host key (sshd not installed)."""
    from airflow_nodes.context import load_context

    ctx = load_context(target)
    if ctx.node.role != "master":
        raise UserError("join-token: run it on the master (this node is a worker)")
    host_key_text = statefile.read_text(target.path(HOST_KEY), limit=4096)
    if not host_key_text or len(host_key_text.split()) < 2:
        raise UserError(f"{target.path(HOST_KEY)}: no SSH host key; install and start openssh-server on the master")
    host_key = " ".join(host_key_text.split()[:2])
    user = ctx.cluster.airflow_user if target.privileged else None
    return as_user(user, mint, keys_file_of(target, ctx), ctx.cluster.master_host, ssh_port, ctx.cluster.airflow_user,
                   host_key, ttl)  # fmt: skip


def list_joins(target) -> str:
    from airflow_nodes.context import load_context

    keys = keys_file_of(target, load_context(target))
    lines = [f"token {line.tag[len(TOKEN_TAG):]}  {line.options.split('expiry-time=')[1].split(',')[0]}"
             for line in keys.tokens()]  # fmt: skip
    lines += [f"worker {name}  {address}" for name, address in keys.workers()]
    return "\n".join(lines) or "no tokens, no enrolled workers"


def revoke(target, what: str) -> str:
    from airflow_nodes.context import load_context

    ctx = load_context(target)
    user = ctx.cluster.airflow_user if target.privileged else None
    gone = as_user(user, keys_file_of(target, ctx).revoke, what)
    if not gone:
        raise UserError(f"join-token --revoke: no token or enrolled worker named {what!r}")
    return "revoked " + ", ".join(gone)


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
    from airflow_nodes.node import KNOWN_HOSTS_FILE, SSH_KEY_FILE
    from airflow_nodes.syncing.commands import TransferRunner
    from airflow_nodes.syncing.config_sync import master_endpoint
    from airflow_nodes.syncing.spec import parse_dags_source

    key = target.path(SSH_KEY_FILE)
    if not key.exists():
        return ""
    runner = TransferRunner(ssh_key=str(key), ssh_extra=pinned(target.path(KNOWN_HOSTS_FILE)))
    destination, port = master_endpoint(ctx, parse_dags_source(ctx.cluster.dags_source))
    if not target.real_system:
        return f"not run under --root: ssh {destination} leave   # the master drops this worker's key"
    try:
        runner.run([*runner.ssh_argv(port), "--", destination, "leave"], f"leaving {destination}")
    except OperationError as exc:
        return f"warning: {exc}; revoke it on the master: airflow-node join-token --revoke {ctx.node.node_name}"
    return f"the master dropped this worker's key ({destination})"


def pinned(known_hosts: Path) -> tuple[str, ...]:
    """ssh options that trust only the master's host key pinned at join time."""
    return ("-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes")
