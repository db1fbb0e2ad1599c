"""The cluster file: everything every node of one cluster must agree on, secrets included.

One schema (CLUSTER_SCHEMA) drives both reading and writing the file, so an error names the
exact key and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import json
import os
import pwd
import re
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import defaults, statefile, urls
from airflow_nodes.dagsource import PATH, check_source_apart, parse_dags_source
from airflow_nodes.errors import UserError
from airflow_nodes.node import CONFIG_DIR, DAGS_AUTHORING_DIR, STATE_DIR, SYSTEM_DIRS, overlaps
from airflow_nodes.redaction import url_password
from airflow_nodes.schema import (
    Field,
    check_abs_path,
    check_all,
    check_host,
    check_name,
    check_port,
    dump_toml,
    get_attr,
    in_range,
    load_toml,
)
from airflow_nodes.versions import AirflowVersion, check_version, parse_airflow_version

_SECRET_RE = re.compile(r"^[A-Za-z0-9_=-]{16,}$")


@dataclass(frozen=True)
class ClusterSecrets:
    fernet_key: str
    secret_key: str
    jwt_secret: str
    flower_password: str
    # the simple auth manager's admin password, the same on every master (several masters only: one
    # master keeps the file Airflow generates); "" in a file made before it
    admin_password: str = ""

    @classmethod
    def generate(cls) -> ClusterSecrets:
        """Return fresh secrets: a Fernet key (urlsafe base64 of 32 random bytes) and random tokens."""
        return cls(
            fernet_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            secret_key=secrets.token_urlsafe(32),
            jwt_secret=secrets.token_urlsafe(48),
            flower_password=secrets.token_urlsafe(24),
            admin_password=secrets.token_urlsafe(24),
        )

    def values(self) -> tuple[str, ...]:
        return tuple(value for value in dataclasses.astuple(self) if value)


MASTER, WORKER = "master", "worker"
MAX_MEMBERS = 1000  # nodes enrolled through the masters' gates (sshkeys.MAX_WORKERS of them workers)
MAX_MASTERS = 7  # several masters are for availability, not scale
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")  # a word of the gate's command line
ED25519_LINE = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]{68}$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


@dataclass(frozen=True, order=True)
class Member:
    """A node enrolled through a master's gate, as every master knows it (the cluster file carries it to
    all of them): whose key may log in to any master's gate and from where, and for a master, the address
    and SSH host key by which the other nodes reach and pin it."""

    name: str
    role: str  # MASTER or WORKER
    address: str  # where the others reach it (a worker's advertised address)
    source: str  # the address sshd saw it enroll from: its key is accepted from there only
    key: str  # the public line of its sync key, "ssh-ed25519 AAAA..."
    host_key: str = ""  # a master's SSH host key, "ssh-ed25519 AAAA...": every node pins it

    def fields(self) -> dict[str, str]:
        values = dataclasses.asdict(self)
        del values["name"]
        return {k: v for k, v in values.items() if v}


def _member(name: str, values: object, where: str) -> Member:
    """Given a [members] entry read from a file, return it checked. Raise UserError naming it."""
    where = f"{where}: members.{name if _MEMBER_NAME.fullmatch(name) else repr(name[:64])}"  # one line
    if not isinstance(values, dict) or set(values) - {"role", "address", "source", "key", "host_key"}:
        raise UserError(f"{where}: must be {{ role, address, source, key[, host_key] }}")
    if not all(isinstance(v, str) for v in values.values()):
        raise UserError(f"{where}: every value is a string")
    member = Member(name, **{k: values.get(k, "") for k in ("role", "address", "source", "key", "host_key")})
    check_member(member, where)
    return member


def check_member(member: Member, where: str) -> None:
    if not _MEMBER_NAME.fullmatch(member.name):
        raise UserError(f"{where}: {member.name[:64]!r} is not a node name")
    if member.role not in (MASTER, WORKER):
        raise UserError(f"{where}: role must be {MASTER!r} or {WORKER!r}")
    if "\n" in member.address:  # check_host's "$" lets a trailing newline by: it would end an authorized_keys line
        raise UserError(f"{where}: address {member.address[:64]!r} is not a host name or address")
    check_host(member.address, where)
    try:  # sshd's from="..." and the known_hosts lines take it: an IP address, nothing else
        ipaddress.ip_address(member.source)
        if "%" in member.source:  # an IPv6 scope, which ipaddress lets hold any character ('"', a newline)
            raise ValueError
    except ValueError:
        raise UserError(f"{where}: source {member.source[:64]!r} is not an IP address") from None
    if not ED25519_LINE.fullmatch(member.key):
        raise UserError(f"{where}: key is not an ed25519 public key line")
    if (
        member.host_key
        and not ED25519_LINE.fullmatch(member.host_key)
        or (member.role == MASTER) != bool(member.host_key)
    ):
        raise UserError(f"{where}: host_key: an ed25519 public key line, for a master only")


def key_fingerprint(key_line: str) -> str:
    """Given "ssh-ed25519 BASE64", return its SHA256 fingerprint as ssh-keygen -l prints it."""
    blob = base64.b64decode(key_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class ClusterConfig:
    airflow_version: str  # the version line every node runs, e.g. "3.3"
    master_host: str
    broker_url: str
    db_url: str
    result_backend: str
    dags_source: str
    secrets: ClusterSecrets
    name: str = "airflow"
    airflow_home: str = defaults.AIRFLOW_HOME
    airflow_user: str = "airflow"
    web_port: int = defaults.WEB_PORT
    flower_port: int = defaults.FLOWER_PORT
    flower_user: str = "admin"
    worker_log_port: int = 8793
    triggerer_log_port: int = 8794
    scheduler_health_port: int = 8974
    visibility_timeout: int = defaults.VISIBILITY_TIMEOUT
    sync_interval_minutes: int = defaults.SYNC_INTERVAL_MINUTES
    airflow_packages: str = ""  # hash of the master's installed package set; "" when unknown
    sentinel_master: str = ""  # the master name of a Sentinel broker (Celery's master_name)
    expected_workers: str = ""  # "", a count, or worker names: `airflow-node cluster` flags a missing one
    # several masters: each change of this file raises the serial; a master takes the highest it sees
    serial: int = 0
    api_address: str = ""  # the cluster address (a load balancer's, or the floating one): "" is master_host
    floating_address: str = ""  # "ADDRESS/PREFIX" the masters move among themselves (keepalived), or ""
    revoked: str = ""  # comma-separated fingerprints of sync keys revoked: no master takes them back
    members: tuple[Member, ...] = ()  # sorted by name

    @property
    def version(self) -> AirflowVersion:
        return parse_airflow_version(self.airflow_version)

    @property
    def metadata_db_url(self) -> str:
        return urls.metadata_db_url(self.db_url)

    @property
    def cluster_address(self) -> str:
        """Where every node and user reaches the web/API server: whichever master is up behind it."""
        return self.api_address or self.master_host

    @property
    def web_url(self) -> str:
        """The web/api server every node reaches, e.g. http://10.0.0.1:8080 (an IPv6 host in brackets)."""
        return urls.http_url(self.cluster_address, self.web_port)

    @property
    def masters(self) -> tuple[str, ...]:
        """The masters' addresses: the first master's, then every master that joined it."""
        joined = [m.address for m in self.members if m.role == MASTER and m.address != self.master_host]
        return (self.master_host, *joined)

    @property
    def admin_passwords_file(self) -> str:
        """Several masters on Airflow 3: the simple auth manager's passwords, written on each master from
        this file (Airflow opens it for writing: the airflow account's, where its API server may write)."""
        return f"{self.airflow_home}/simple_auth_manager_passwords.json"

    @property
    def several_masters(self) -> bool:
        """Whether masters are members: from the first master token on (its master enters the file then)."""
        return any(m.role == MASTER for m in self.members)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    @property
    def revoked_keys(self) -> frozenset[str]:
        return frozenset(filter(None, self.revoked.split(",")))

    @property
    def flower_url(self) -> str:
        """The first master's flower, which workers ask (each master asks its own: NodeContext.own_flower_url)."""
        return urls.http_url(self.master_host, self.flower_port)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret this file holds, for redaction: generated keys and URL passwords."""
        urls_with_passwords = (self.broker_url, self.db_url, self.result_backend, self.dags_source)
        passwords = (url_password(u) for u in urls_with_passwords)
        return self.secrets.values() + tuple(p for p in passwords if p)


def default_dags_source(master_host: str, airflow_user: str = "airflow") -> str:
    """The DAG source a cluster gets unless --dags-source says otherwise: the master's authoring dir."""
    return f"{airflow_user}@{urls.url_host(master_host)}:{DAGS_AUTHORING_DIR}/"  # rsync's IPv6 form: brackets


# -- the schema: (section, key, attribute, type, check, init option) ---------------------------


def _package_hash(value: str, where: str) -> None:
    if value and not re.fullmatch(r"[0-9a-f]{16}", value):
        raise UserError(f"{where}: not a package-set hash (16 hex digits, or empty)")


# AIRFLOW_HOME gets the airflow user as owner and mode 0750: never a directory the system needs as it is
def _airflow_home(value: str, where: str) -> None:
    check_abs_path(value, where)
    too_high = value.count("/") < 2  # /tmp, /opt, /var
    ours = ("/root", defaults.AIRFLOW_VENV, os.path.realpath(sys.prefix))  # root's home, our venvs
    if too_high or any(overlaps(value, d) for d in (*SYSTEM_DIRS, *ours)):
        raise UserError(f"{where}: {value} is a system directory or holds one; use a directory of its own")


def _sentinel_master(value: str, where: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise UserError(f"{where}: {value[:40]!r} is not a Sentinel master name")


def _expected_workers(value: str, where: str) -> None:
    """ "", a count (1-1000), or comma-separated worker names."""
    if not value or re.fullmatch(r"[0-9]{1,4}", value) and 1 <= int(value) <= 1000:
        return
    for name in value.split(","):
        check_host(name, where)


def _revoked(value: str, where: str) -> None:
    found = [f for f in value.split(",") if f] if value else []
    if len(found) > MAX_MEMBERS or not all(_FINGERPRINT.fullmatch(f) for f in found):
        raise UserError(f"{where}: at most {MAX_MEMBERS} comma-separated SHA256 key fingerprints")


def _api_address(value: str, where: str) -> None:
    if value:
        check_host(value, where)


def _floating_address(value: str, where: str) -> None:
    if not value:
        return
    if not re.fullmatch(r"[0-9A-Fa-f.:]{2,39}/[0-9]{1,3}", value):
        raise UserError(f"{where}: {value[:64]!r} is not ADDRESS/PREFIX (e.g. 10.0.0.100/24)")


def _broker(value: str, where: str) -> None:
    urls.check_broker_url(value, where)


def _db(value: str, where: str) -> None:
    urls.check_db_url(value, where)


def _dags_source(value: str, where: str) -> None:
    parse_dags_source(value, where)


def _secret(value: str, where: str) -> None:
    if not _SECRET_RE.match(value):
        raise UserError(f"{where}: not a generated secret (at least 16 characters of A-Z a-z 0-9 _ - =)")


def _optional_secret(value: str, where: str) -> None:
    if value:
        _secret(value, where)


def _fernet(value: str, where: str) -> None:
    try:
        key = base64.urlsafe_b64decode(value.encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise UserError(f"{where}: not a Fernet key (urlsafe base64 of 32 bytes)")


CLUSTER_SCHEMA: tuple[Field, ...] = (
    Field("cluster", "name", "name", str, check_name),
    Field("cluster", "airflow_version", "airflow_version", str, check_version),
    Field("cluster", "airflow_packages", "airflow_packages", str, _package_hash),
    Field("cluster", "airflow_home", "airflow_home", str, _airflow_home, "--airflow-home"),
    Field("cluster", "airflow_user", "airflow_user", str, check_name),
    Field("cluster", "expected_workers", "expected_workers", str, _expected_workers, "--expect-workers", since="0.2"),
    Field("cluster", "serial", "serial", int, in_range(0, 10**15), since="0.5"),
    Field("cluster", "revoked", "revoked", str, _revoked, since="0.5"),
    Field("master", "host", "master_host", str, check_host, "--master-host"),
    Field("master", "api_address", "api_address", str, _api_address, "--api-address", since="0.5"),
    Field("master", "floating_address", "floating_address", str, _floating_address, "--floating-address", since="0.5"),
    Field("master", "web_port", "web_port", int, check_port, "--web-port"),
    Field("master", "flower_port", "flower_port", int, check_port, "--flower-port"),
    Field("master", "worker_log_port", "worker_log_port", int, check_port),
    Field("master", "triggerer_log_port", "triggerer_log_port", int, check_port),
    Field("master", "scheduler_health_port", "scheduler_health_port", int, check_port),
    Field("broker", "url", "broker_url", str, _broker, "--broker-url"),
    Field("broker", "sentinel_master", "sentinel_master", str, _sentinel_master, "--sentinel-master", since="0.2"),
    Field(
        "broker",
        "visibility_timeout",
        "visibility_timeout",
        int,
        in_range(60, 30 * 86400, " seconds"),
        "--visibility-timeout",
    ),
    Field("database", "url", "db_url", str, _db, "--db-url"),
    # checked together with the version (validate_cluster)
    Field("database", "result_backend", "result_backend", str, lambda v, w: None, "--result-backend"),
    Field("dags", "source", "dags_source", str, _dags_source, "--dags-source"),
    Field(
        "dags", "sync_interval_minutes", "sync_interval_minutes", int, in_range(1, 59, " minutes"), "--sync-interval"
    ),
    Field("secrets", "fernet_key", "secrets.fernet_key", str, _fernet),
    Field("secrets", "secret_key", "secrets.secret_key", str, _secret),
    Field("secrets", "jwt_secret", "secrets.jwt_secret", str, _secret),
    Field("secrets", "flower_user", "flower_user", str, check_name),
    Field("secrets", "flower_password", "secrets.flower_password", str, _secret),
    Field("secrets", "admin_password", "secrets.admin_password", str, _optional_secret, since="0.5"),
)

HEADER = (
    "# airflow-node cluster file. Every node of the cluster must hold this same file.\n"
    "# It contains the cluster secrets: keep it 0640 root:airflow and copy it only over SSH.\n"
    "# Changing a secret here and syncing it rotates it on every node.\n"
)


def dump_cluster(config: ClusterConfig) -> str:
    """Given a ClusterConfig, return the TOML text of the cluster file."""
    text = dump_toml(config, CLUSTER_SCHEMA, HEADER)
    if not config.members:
        return text
    # JSON strings are TOML basic strings; a name is a bare key (letters, digits, "." quoted)
    lines = [f"{json.dumps(m.name)} = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in m.fields().items())} }}"
             for m in sorted(config.members)]  # fmt: skip
    return text + "\n[members]\n" + "\n".join(lines) + "\n"


def settings_of(config: ClusterConfig) -> ClusterConfig:
    """The cluster file but what only names the nodes (members, revoked keys) and orders its changes (the
    serial): what daemons run by, and what every node must agree on."""
    return dataclasses.replace(config, members=(), revoked="", serial=0)


def cluster_digest(config: ClusterConfig) -> str:
    """The sha256 of the file's canonical text: what breaks a tie between two changes of one serial."""
    return hashlib.sha256(dump_cluster(config).encode()).hexdigest()


def merge_clusters(ours: ClusterConfig, *theirs: ClusterConfig) -> ClusterConfig:
    """Given this master's cluster file and the ones its peers serve, return the file every master
    converges to, the same whichever computes it: the settings of the highest serial (on a tie, of the
    higher digest of the settings), and the members any of them knows but those whose key was revoked on
    one of them. Only a change of settings raises the serial: members and revoked keys are unions, which
    need no order (an enrolment never outranks an operator's change)."""
    files = (ours, *theirs)
    ranked = sorted(files, key=lambda c: (c.serial, cluster_digest(settings_of(c))), reverse=True)
    revoked = frozenset().union(*(c.revoked_keys for c in files))
    members: dict[str, Member] = {}
    for config in ranked:  # a name's entry from the highest-ranked file that has one
        for member in config.members:
            if key_fingerprint(member.key) not in revoked:
                members.setdefault(member.name, member)
    masters = sorted(m.name for m in members.values() if m.role == MASTER)
    for name in masters[MAX_MASTERS:]:  # no file names more (keepalived's peers, every node's pinned keys)
        del members[name]
    return dataclasses.replace(ranked[0], revoked=",".join(sorted(revoked)), members=tuple(sorted(members.values())))


def _check_across_keys(config: ClusterConfig, where: str) -> None:
    """The checks no single key can make: distinct ports, a DAG source apart from config and state."""
    urls.check_result_backend(config.result_backend, config.version, f"{where}: database.result_backend")
    ports: dict[int, str] = {}
    for field in CLUSTER_SCHEMA:
        if field.key.endswith("_port"):
            port = get_attr(config, field.attr)
            if port in ports:
                raise UserError(f"{where}: {field.name}: port {port} is already {ports[port]}")
            ports[port] = field.name
    if config.floating_address and config.api_address != config.floating_address.partition("/")[0]:
        raise UserError(f"{where}: master.api_address: the floating address's, when there is one")
    sentinel = config.broker_url.startswith(f"{urls.SENTINEL}://")
    if sentinel != bool(config.sentinel_master):
        raise UserError(f"{where}: broker.sentinel_master: needed with a sentinel:// broker, and only then")
    protected = (config.airflow_home, CONFIG_DIR, STATE_DIR)
    check_source_apart(parse_dags_source(config.dags_source), protected, f"{where}: dags.source")


def validate_cluster(config: ClusterConfig, where: str) -> ClusterConfig:
    """Run every schema check on a ClusterConfig. Return it, or raise UserError naming the key."""
    check_all(config, CLUSTER_SCHEMA, where)
    _check_across_keys(config, where)
    return config


def parse_cluster(text: str, where: str) -> ClusterConfig:
    """Given the text of a cluster file, return a validated ClusterConfig. Raise UserError naming the key."""
    values = load_toml(text, CLUSTER_SCHEMA, where, tables=("members",))
    entries = values.pop("members", {})
    if len(entries) > MAX_MEMBERS:
        raise UserError(f"{where}: members: at most {MAX_MEMBERS}")
    members = tuple(sorted(_member(name, entry, where) for name, entry in entries.items()))
    secret_values = {k.split(".", 1)[1]: values.pop(k) for k in list(values) if k.startswith("secrets.")}
    config = ClusterConfig(secrets=ClusterSecrets(**secret_values), members=members, **values)
    _check_across_keys(config, where)
    return config


def read_cluster(path: Path, where: str | None = None) -> ClusterConfig:
    """Read and validate the cluster file at path. Raise UserError if it is missing or corrupt."""
    where = where or str(path)
    text = statefile.read_text(path, limit=1 << 20)
    if text is None:
        raise UserError(f"{where}: no such cluster file")
    return parse_cluster(text, where)


def check_served_cluster(served: ClusterConfig, local: ClusterConfig, where: str) -> None:
    """A cluster file another host served (the master's airflow account owns what serves it) is
    untrusted input: raise UserError naming the key when it changes this node's account or home, or
    the files libpq opens as root for its DB URLs (a sync never does: that takes `airflow-node init`)."""
    for key in ("airflow_user", "airflow_home"):
        ours, theirs = getattr(local, key), getattr(served, key)
        if theirs != ours:
            raise UserError(f"{where}: cluster.{key}: {theirs!r} is not this node's {ours!r}; a sync never "
                            "changes it: run `airflow-node init` here")  # fmt: skip
    served_source = parse_dags_source(served.dags_source, f"{where}: dags.source")
    if served.dags_source != local.dags_source and served_source.kind == PATH:
        # a local path another account may turn into a link (to the sync key, say) is the operator's call
        raise UserError(f"{where}: dags.source: a sync never points this node at a local path: run "
                        "`airflow-node init` here")  # fmt: skip
    for key, name in (("db_url", "database.url"), ("result_backend", "database.result_backend")):
        if urls.libpq_files(getattr(served, key)) != urls.libpq_files(getattr(local, key)):
            raise UserError(f"{where}: {name}: a sync never changes the files root has libpq open for it "
                            "(sslcert, sslkey, sslrootcert): run `airflow-node init` here")  # fmt: skip


def check_account_and_home(cluster: ClusterConfig, home: Path, where: str) -> None:
    """On the real system, before a served cluster file is applied: its account is not root and, if it
    exists, has no root's uid and is the one made for this home; its home (at `home`) is a directory of
    that account or a new or empty one (root would hand it to the account). Raise UserError naming
    the key."""
    if cluster.airflow_user == "root":
        raise UserError(f"{where}: cluster.airflow_user: the Airflow daemons never run as root")
    try:
        account = pwd.getpwnam(cluster.airflow_user)
    except KeyError:
        account = None
    if account and (account.pw_uid == 0 or account.pw_dir.rstrip("/") != cluster.airflow_home.rstrip("/")):
        raise UserError(f"{where}: cluster.airflow_user: {cluster.airflow_user!r} is an account of this host "
                        f"that airflow-node did not make for {cluster.airflow_home}")  # fmt: skip
    try:
        info = home.lstat()
    except FileNotFoundError:
        return
    owned = account is not None and info.st_uid == account.pw_uid
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or not (owned or not any(home.iterdir())):
        raise UserError(f"{where}: cluster.airflow_home: {cluster.airflow_home} exists and is not the airflow "
                        "account's own directory; airflow-node gives the account a new or empty one")  # fmt: skip


# The cluster options of `airflow-node init` (given on the master only), from the schema.
CLUSTER_OPTIONS = {f.attr: f.option for f in CLUSTER_SCHEMA if f.option}
