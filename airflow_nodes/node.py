"""One node's own settings (node.toml) and where every file of a node lives."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from airflow_nodes import defaults
from airflow_nodes.errors import UserError
from airflow_nodes.roles import ROLES, Role, role_named
from airflow_nodes.schema import (
    Field,
    check_abs_path,
    check_all,
    check_host,
    dump_toml,
    in_range,
    load_toml,
)
from airflow_nodes.versions import AirflowVersion, check_version, parse_airflow_version

INIT_SYSTEMS = ("systemd", "supervisor")

CONFIG_DIR = "/etc/airflow-node"
CLUSTER_FILE = f"{CONFIG_DIR}/cluster.toml"
NODE_FILE = f"{CONFIG_DIR}/node.toml"
ENV_FILE = f"{CONFIG_DIR}/airflow.env"
STATE_DIR = "/var/lib/airflow-node"
MANIFEST_FILE = f"{STATE_DIR}/manifest.json"
# supervisord (root) writes its own and the daemons' output here: root's, so no other account can
# plant a link root would then write through
LOG_DIR = "/var/log/airflow-node"
SYSTEMD_DIR = "/etc/systemd/system"
CRON_FILE = "/etc/cron.d/airflow-node"  # no dot in the name: cron ignores such files
OWN_SUPERVISORD_CONF = f"{CONFIG_DIR}/supervisord.conf"  # where no supervisord was set up: ours
OWN_SUPERVISOR_SOCKET = "/run/airflow-node-supervisor.sock"
SSH_DIR = f"{CONFIG_DIR}/ssh"  # a joined worker's key and the master's pinned host key
SSH_KEY_FILE = f"{SSH_DIR}/id_ed25519"  # the sync account's: no task (the airflow account) can read it
# fetches DAGs and the cluster file (rsync, git, ssh with the worker's key) and owns the mirror it
# fetches into: not the airflow account, so no task can read the key or change what root builds from
SYNC_USER = "airflow-sync"
# `airflow-node drain` on a node that runs tasks: its worker takes no new tasks. In /run: a reboot, which
# restarts the worker consuming its queues, ends the drain and the flag with it
DRAINED_FLAG = "/run/airflow-node-drained"
KNOWN_HOSTS_FILE = f"{SSH_DIR}/known_hosts"

DAGS_AUTHORING_DIR = "/srv/airflow/dags"  # on the master: where people put DAGs; workers pull from it
# what no directory of the cluster's may be, sit in or hold: the system's and ours
SYSTEM_DIRS = ("/boot", "/dev", "/etc", "/proc", "/run", "/sys", "/usr", CONFIG_DIR, STATE_DIR)
# what the daemons' sandbox hides or gives them a private copy of (ProtectHome=, PrivateTmp=)
SANDBOX_PRIVATE_DIRS = ("/home", "/root", "/tmp", "/var/tmp")


def overlaps(path: str, other: str) -> bool:
    """Whether one of two normalised absolute paths is the other or lies under it."""
    return path == other or path.startswith(other.rstrip("/") + "/") or other.startswith(path.rstrip("/") + "/")


def under_root(root: Path, path: str) -> Path:
    """Given --root and an absolute path on the node, return that path under root.

    The path is normalised first; one that is not absolute, or that climbs out of the root ("..")
    is refused with UserError, whatever file or option it came from.
    """
    normal = posixpath.normpath(path) if path else ""
    if not normal.startswith("/") or normal.startswith("//") or ".." in normal.split("/") or "\0" in normal:
        raise UserError(f"{path!r}: not an absolute path that stays under {root}")
    return root / normal.lstrip("/")


_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _role(value: str, where: str) -> None:
    role_named(value, where)


def _address(value: str, where: str) -> None:
    if value:
        check_host(value, where)


def _init_system(value: str, where: str) -> None:
    if value not in INIT_SYSTEMS:
        raise UserError(f"{where}: unknown init system {value!r} (expected systemd or supervisor)")


def check_queues(value: str, where: str) -> None:
    for queue in filter(None, value.split(",")):
        if not _QUEUE_RE.match(queue):
            raise UserError(f"{where}: {queue!r} is not a queue name (letters, digits, . _ -)")


def check_writable_paths(value: str, where: str) -> None:
    """Directories the sandbox lets daemons write: never the system's or ours (root acts on what is
    there), nor what the sandbox hides anyway, nor one inside another."""
    paths = list(filter(None, value.split(",")))
    for index, path in enumerate(paths):
        check_abs_path(path, where)
        if path == "/":
            raise UserError(f"{where}: '/' would lift the sandbox; drop ProtectSystem= in a drop-in instead")
        clash = next((d for d in SYSTEM_DIRS if overlaps(path, d)), None)
        if clash:
            raise UserError(f"{where}: {path} is a system directory, or holds or lies in {clash}")
        hidden = next((d for d in SANDBOX_PRIVATE_DIRS if overlaps(path, d)), None)
        if hidden:
            raise UserError(f"{where}: {path}: the sandbox hides {hidden} or gives each daemon its own; use a drop-in")
        nested = next((p for p in paths[:index] if overlaps(path, p)), None)
        if nested:
            raise UserError(f"{where}: {path} and {nested}: one lies in the other; give the outer one only")


def check_networks(value: str, where: str) -> None:
    """Comma-separated IP networks (10.0.0.0/24, no host bits set) or addresses, for pg_hba lines: at most 64."""
    networks = list(filter(None, value.split(",")))
    if len(networks) > 64:
        raise UserError(f"{where}: at most 64 networks, got {len(networks)}")
    for network in networks:
        try:
            ipaddress.ip_network(network)
        except ValueError:
            raise UserError(f"{where}: {network[:50]!r} is not an IP network (10.0.0.0/24) or address") from None


def _postgres_cluster(value: str, where: str) -> None:
    if value and not re.fullmatch(r"[0-9]{1,3}/main", value):
        raise UserError(f"{where}: {value[:40]!r} is not a PostgreSQL cluster of ours (VERSION/main)")


def _optional_path(value: str, where: str) -> None:
    if value:
        check_abs_path(value, where)


@dataclass(frozen=True)
class NodeSettings:
    """What only this node knows: its role, how its daemons run, and its worker knobs."""

    role: str
    airflow_version: str  # installed here, e.g. "3.3.2"
    init_system: str
    airflow_bin: str
    airflow_node_bin: str
    node_name: str
    concurrency: int = defaults.CONCURRENCY
    queues: str = ""  # comma-separated; empty means Airflow's default queue
    stop_timeout: int = defaults.STOP_TIMEOUT
    supervisord_conf: str = defaults.SUPERVISORD_CONF
    advertise_address: str = ""  # what the other nodes reach this one at (logs); "" means its FQDN
    writable_paths: str = ""  # comma-separated directories the systemd sandbox lets daemons write
    wheelhouse: str = ""  # wheels this node installs Airflow from (offline); "" means the package index
    local_redis: bool = False  # the broker is this host's redis-server, set up by init (localservers.py)
    local_postgres: str = ""  # the PostgreSQL cluster ("15/main") init set up here for the metadata DB
    db_allow: str = ""  # comma-separated networks our PostgreSQL admits besides the cluster's nodes

    @property
    def version(self) -> AirflowVersion:
        return parse_airflow_version(self.airflow_version)

    @property
    def duties(self) -> Role:
        """What this node's role runs, probes and syncs (roles.py)."""
        return ROLES[self.role]

    @property
    def role_name(self) -> str:
        """The role's name to its init system: the systemd target that drives it; under supervisor, the
        word for the role in what we print (each program is its own group)."""
        return self.duties.unit_name

    @property
    def celery_name(self) -> str:
        return f"celery@{self.node_name}"

    @property
    def queue_list(self) -> tuple[str, ...]:
        return tuple(filter(None, self.queues.split(",")))

    @property
    def writable_path_list(self) -> tuple[str, ...]:
        return tuple(filter(None, self.writable_paths.split(",")))

    @property
    def db_allow_list(self) -> tuple[str, ...]:
        return tuple(filter(None, self.db_allow.split(",")))

    @property
    def supervisor_conf_file(self) -> str:
        return str(PurePosixPath(self.supervisord_conf).parent / "conf.d" / "airflow-node.conf")


NODE_SCHEMA: tuple[Field, ...] = (
    Field("node", "role", "role", str, _role),
    Field("node", "name", "node_name", str, check_host, "--node-name"),
    Field("node", "airflow_version", "airflow_version", str, check_version),
    Field("node", "init_system", "init_system", str, _init_system),
    Field("node", "airflow_bin", "airflow_bin", str, check_abs_path, "--airflow-bin"),
    Field("node", "airflow_node_bin", "airflow_node_bin", str, check_abs_path, "--airflow-node-bin"),
    Field("node", "supervisord_conf", "supervisord_conf", str, check_abs_path, "--supervisord-conf"),
    Field("node", "advertise_address", "advertise_address", str, _address, "--advertise-address", since="0.2"),
    Field("node", "writable_paths", "writable_paths", str, check_writable_paths, "--writable-path", since="0.3"),
    Field("node", "wheelhouse", "wheelhouse", str, _optional_path, "--wheelhouse", since="0.3"),
    Field("servers", "redis", "local_redis", bool, lambda v, w: None, "--with-redis", since="0.4"),  # its type
    Field("servers", "postgres", "local_postgres", str, _postgres_cluster, "--with-postgres", since="0.4"),
    Field("servers", "db_allow", "db_allow", str, check_networks, "--db-allow", since="0.4"),
    Field("worker", "concurrency", "concurrency", int, in_range(1, 1024), "--concurrency"),
    Field("worker", "queues", "queues", str, check_queues, "--queues"),
    Field("worker", "stop_timeout", "stop_timeout", int, in_range(10, 7 * 86400, " seconds"), "--stop-timeout"),
)

NODE_HEADER = "# airflow-node: settings of this node only (written by `airflow-node init`).\n"


def dump_node(settings: NodeSettings) -> str:
    return dump_toml(settings, NODE_SCHEMA, NODE_HEADER)


def parse_node(text: str, where: str) -> NodeSettings:
    return NodeSettings(**load_toml(text, NODE_SCHEMA, where))


def validate_node(settings: NodeSettings, where: str) -> NodeSettings:
    check_all(settings, NODE_SCHEMA, where)
    return settings


# `airflow-node sync`: its state (read by `airflow-node health`), lock, and the DAG releases.
SYNC_STATE_FILE = f"{STATE_DIR}/sync-state.json"
SYNC_LOCK_FILE = f"{STATE_DIR}/sync.lock"
DAG_RELEASES_DIR = f"{STATE_DIR}/dags"  # releases/<revision>/, the fetched mirror, manifests
# Airflow 3, a worker: a task names the DAG release it needs here (an empty file; the airflow group may
# create entries, not list them), and the follower fetches it
# on a master upgrading a cluster of several masters: the Airflow version it moves to; its gate tells the
# other masters, whose followers stop their Airflow meanwhile (masters.py), each noting for whom in HELD_FILE
UPGRADE_MARKER = f"{STATE_DIR}/upgrading"
HELD_FILE = f"{STATE_DIR}/held-for-upgrade"
RELEASE_REQUESTS_DIR = f"{STATE_DIR}/release-requests"
RELEASE_FAILURES_DIR = f"{STATE_DIR}/release-failures"  # <name>: why that release could not be fetched
