"""What differs between Airflow lines, as data.

Everything the renderers and probes need to know about an Airflow version lives here
(each read from Airflow's released source for 2.7-2.11 and 3.0-3.3). Supporting a new
Airflow line should be a change to this table, not a hunt through templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_nodes.errors import UserError

OLDEST_SUPPORTED = (2, 7)
NEWEST_KNOWN = (3, 3)


@dataclass(frozen=True)
class Daemon:
    """One long-running (or one-shot) Airflow process of a role."""

    name: str  # unit / program name: airflow-<name>
    description: str
    args: tuple[str, ...]  # after the airflow executable
    restart: str = "always"  # systemd Restart=
    restart_sec: int = 5
    oneshot: bool = False
    needs_migrated_db: bool = False  # ordered after the migrate step
    graceful_stop: bool = False  # SIGTERM to the main process only, long stop timeout
    runs_tasks: bool = False  # DAG code runs inside it (the Celery worker)
    ours: bool = False  # airflow-node's own daemon (args after airflow-node), run as root
    # run only while this host holds the cluster-wide lock of this name (`airflow-node lead`): one at a time
    leader_lock: str = ""
    # it converges the node to a changed cluster file (writes its files, runs systemctl), as `init` does:
    # root without the sandbox of a daemon that only fetches
    reconciles: bool = False


@dataclass(frozen=True)
class AirflowLine:
    """The facts of one Airflow major line that node rendering depends on."""

    major: int
    web_section: str  # where secret_key and the web port live
    web_port_key: str
    web_command: str
    health_path: str
    # 2.x: the DAG processor runs as a daemon of its own only with [scheduler] standalone_dag_processor
    # (3.x: always, the option is gone). We set it: a scheduler that forks its DAG processor at start has
    # stalled for good in our 2.11 runs, its main loop waiting for a reply another process had read
    standalone_dag_processor_option: bool
    has_execution_api: bool  # workers talk HTTP to the master (Airflow 3)
    versioned_dags: bool  # DAG bundles: each run records the DAG version it was created with (Airflow 3)
    execution_health_path: str = ""  # the execution API's health route on the web port (Airflow 3)

    @property
    def master_daemons(self) -> tuple[Daemon, ...]:
        daemons = [
            Daemon("db-migrate", "Airflow metadata DB migration", ("db", "migrate"), oneshot=True),
            Daemon(
                self.web_command,
                "Airflow API server" if self.major >= 3 else "Airflow webserver",
                (self.web_command,),
                needs_migrated_db=True,
            ),
            Daemon("scheduler", "Airflow scheduler", ("scheduler",), needs_migrated_db=True),
            Daemon("dag-processor", "Airflow DAG processor", ("dag-processor",), needs_migrated_db=True),
            Daemon("triggerer", "Airflow triggerer", ("triggerer",), needs_migrated_db=True),
            Daemon("flower", "Celery flower (Airflow)", ("celery", "flower"), restart="on-failure"),
        ]
        return tuple(daemons)

    def worker_daemon(self, concurrency: int, queues: tuple[str, ...], celery_name: str) -> Daemon:
        args = ["celery", "worker", "-c", str(concurrency), "-H", celery_name]
        if queues:
            args += ["-q", ",".join(queues)]
        return Daemon(
            "worker",
            "Airflow Celery worker",
            tuple(args),
            restart="always",
            restart_sec=10,
            graceful_stop=True,
            runs_tasks=True,
        )


# Airflow's [operators] default_queue, which we leave as it is: a worker without -q consumes it
DEFAULT_QUEUE = "default"

# a worker's DAG follower: new releases within seconds, and the release a task asks for (follow.py)
FOLLOWER = Daemon("dag-follower", "airflow-node DAG follower", ("follow",), ours=True)
# one of several masters: the same, and its peers' cluster files taken and applied (masters.py)
MASTER_FOLLOWER = Daemon("dag-follower", "airflow-node follower of the other masters", ("follow",), ours=True,
                         reconciles=True)  # fmt: skip

AIRFLOW_2 = AirflowLine(
    major=2,
    web_section="webserver",
    web_port_key="web_server_port",
    web_command="webserver",
    health_path="/health",
    standalone_dag_processor_option=True,
    has_execution_api=False,
    versioned_dags=False,
)

AIRFLOW_3 = AirflowLine(
    major=3,
    web_section="api",
    web_port_key="port",
    web_command="api-server",
    health_path="/api/v2/monitor/health",
    standalone_dag_processor_option=False,
    has_execution_api=True,
    versioned_dags=True,
    execution_health_path="/execution/health",
)

_LINES = {2: AIRFLOW_2, 3: AIRFLOW_3}
_VERSION_RE = re.compile(r"^([0-9]{1,3})\.([0-9]{1,3})(?:\.([0-9]{1,4}))?(?:[.+-]?[0-9A-Za-z.+-]{0,40})?$")


@dataclass(frozen=True, order=True)
class AirflowVersion:
    major: int
    minor: int
    patch: int | None = None

    @property
    def line(self) -> AirflowLine:
        return _LINES[self.major]

    @property
    def several_schedulers(self) -> bool:
        """Whether several masters may each run a scheduler: 3.2 fixed the try a second scheduler could
        create twice (apache/airflow#60330)."""
        return (self.major, self.minor) >= (3, 2)

    @property
    def series(self) -> str:
        """The version line nodes of one cluster must share, e.g. "3.3"."""
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return self.series if self.patch is None else f"{self.series}.{self.patch}"


def check_version(value: str, where: str) -> None:
    """A schema check: value is a supported Airflow version. Raise UserError naming `where`."""
    parse_airflow_version(value, where)


def parse_airflow_version(text: str, option: str = "--airflow-version") -> AirflowVersion:
    """Given "3.3.2" or "2.11", return a supported AirflowVersion. Raise UserError otherwise."""
    match = _VERSION_RE.match(text.strip())
    if not match:
        raise UserError(f"{option}: {text!r} is not an Airflow version such as 3.3.2")
    major, minor = int(match.group(1)), int(match.group(2))
    patch = int(match.group(3)) if match.group(3) is not None else None
    if (major, minor) < OLDEST_SUPPORTED:
        raise UserError(
            f"{option}: Airflow {major}.{minor} is not supported "
            f"(oldest supported is {OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]})"
        )
    if major not in _LINES:
        raise UserError(f"{option}: Airflow {major}.x is not supported (supported: 2.7 to 3.x)")
    return AirflowVersion(major, minor, patch)
