"""What each role of a node runs, probes and syncs, as data.

As versions.py is for Airflow lines, this is the one table of roles: code asks a node's Role what it
does, it does not compare role names. A new role is a new row (the one-host cluster was).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from airflow_nodes.errors import UserError
from airflow_nodes.versions import FOLLOWER, MASTER_FOLLOWER, AirflowLine, Daemon

# the probes of `airflow-node health`, by name (health/runner.py holds them)
COMMON_PROBES = ("redis", "db", "units", "consistency", "packages")


@dataclass(frozen=True)
class Role:
    name: str
    summary: str  # --role's help
    schedules: bool  # runs the master's daemons: web/API server, scheduler, dag-processor, triggerer, flower
    runs_tasks: bool  # runs a Celery worker: DAG code runs here
    # writes the cluster file (secrets generated once) from its options, reads the DAG source, offers its
    # DAG releases and serves the gate (join tokens, the sync account's forced command)
    creates_cluster: bool
    # fetches the cluster file from the master and copies the master's DAG releases (a DAG follower)
    follows_master: bool
    probes: tuple[str, ...]
    options: tuple[str, ...]  # init options only this role takes (besides the cluster file's, see creates_cluster)

    @property
    def unit_name(self) -> str:
        """airflow-<role>: its systemd target's name (and the group of an earlier airflow-node's supervisor file)."""
        return f"airflow-{self.name}"

    @property
    def login_shell(self) -> str:
        # workers log in to the master as its airflow user (key only) for rsync and the gate: a shell
        return "/bin/sh" if self.creates_cluster else "/usr/sbin/nologin"

    def daemons(
        self, line: AirflowLine, worker: Daemon | None = None, several_masters: bool = False
    ) -> tuple[Daemon, ...]:
        """This role's daemons on an Airflow line; `worker` is the node's Celery worker (its options). With
        several masters, the DAG processor parses on one of them at a time (Airflow supports no two on one
        bundle) and each master's follower keeps its cluster file and releases those of its peers."""
        daemons = list(line.master_daemons) if self.schedules else []
        if self.schedules and several_masters:
            daemons = [replace(d, leader_lock=d.name) if d.name == "dag-processor" else d for d in daemons]
        if self.runs_tasks and worker is not None:
            daemons.append(worker)
        if self.follows_master:
            daemons.append(FOLLOWER)
        elif self.creates_cluster and several_masters:
            daemons.append(MASTER_FOLLOWER)
        return tuple(daemons)


MASTER = Role(
    "master",
    "the web/API server, scheduler, dag-processor, triggerer and flower; creates the cluster",
    schedules=True,
    runs_tasks=False,
    creates_cluster=True,
    follows_master=False,
    probes=(*COMMON_PROBES, "migrations", "flower", "web", "scheduler", "leader", "logs"),
    options=("with_redis", "with_postgres", "db_allow", "join"),  # --join: another master of the cluster
)
WORKER = Role(
    "worker",
    "a Celery worker and its DAG follower; joins a master",
    schedules=False,
    runs_tasks=True,
    creates_cluster=False,
    follows_master=True,
    probes=(*COMMON_PROBES, "worker", "execution-api", "clock"),
    options=("concurrency", "queues", "stop_timeout", "config_file", "from_master", "join"),
)

# the smallest real deployment: a master that runs tasks too; workers may join it as they join a master
ALL_IN_ONE = Role(
    "all-in-one",
    "a master that also runs a Celery worker: the whole cluster on one host, which workers may join",
    schedules=True,
    runs_tasks=True,
    creates_cluster=True,
    follows_master=False,  # its worker reads the releases this host publishes itself
    probes=(*MASTER.probes, "worker"),
    options=("with_redis", "with_postgres", "db_allow", "concurrency", "queues", "stop_timeout"),
)

ROLES = {role.name: role for role in (MASTER, WORKER, ALL_IN_ONE)}
# what a record of an unknown role (another version's) is taken for: a node that does nothing we count
NO_ROLE = Role("unknown", "", False, False, False, False, (), ())
NAMES = tuple(ROLES)


def role_named(name: str, where: str = "--role") -> Role:
    """Given a role's name, return its Role. Raise UserError naming `where` for any other name."""
    try:
        return ROLES[name]
    except (KeyError, TypeError):
        raise UserError(f"{where}: unknown role {name!r} (expected {', '.join(NAMES)})") from None
