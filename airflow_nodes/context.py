"""NodeContext: the finished values every renderer of a node needs, derived in one place."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_nodes import statefile, urls
from airflow_nodes.cluster import ClusterConfig, read_cluster
from airflow_nodes.errors import UserError
from airflow_nodes.node import CLUSTER_FILE, ENV_FILE, LOG_DIR, NODE_FILE, NodeSettings, parse_node
from airflow_nodes.roles import Role
from airflow_nodes.target import Target
from airflow_nodes.versions import AirflowLine, Daemon


@dataclass(frozen=True)
class NodeContext:
    cluster: ClusterConfig
    node: NodeSettings

    @property
    def line(self) -> AirflowLine:
        return self.cluster.version.line

    @property
    def role_name(self) -> str:
        return self.node.role_name

    @property
    def role(self) -> Role:
        return self.node.duties

    @property
    def daemons(self) -> tuple[Daemon, ...]:
        worker = self.line.worker_daemon(self.node.concurrency, self.node.queue_list, self.node.celery_name)
        return self.role.daemons(self.line, worker, several_masters=self.cluster.several_masters)

    @property
    def airflow_home(self) -> str:
        return self.cluster.airflow_home

    @property
    def airflow_cfg(self) -> str:
        return f"{self.airflow_home}/airflow.cfg"

    @property
    def dags_folder(self) -> str:
        return f"{self.airflow_home}/dags"

    @property
    def env_file(self) -> str:
        return ENV_FILE

    @property
    def log_dir(self) -> str:
        return LOG_DIR

    @property
    def environment(self) -> dict[str, str]:
        """The daemons' environment. No secrets: those live in airflow.cfg (0640 root:airflow)."""
        bin_dir = self.node.airflow_bin.rsplit("/", 1)[0]
        environment = {
            "AIRFLOW_HOME": self.airflow_home,
            "AIRFLOW_CONFIG": self.airflow_cfg,
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        }
        if self.node.advertise_address:  # read by [core] hostname_callable (airflow_node_hostname.py)
            environment["AIRFLOW_NODE_ADVERTISE_ADDRESS"] = self.node.advertise_address
        return environment

    @property
    def own_address(self) -> str:
        """Where this node's own daemons answer: its advertised address (a master's is the cluster file's
        [master] host when it has none). With several masters, each checks its own scheduler and flower here."""
        return self.node.advertise_address or self.cluster.master_host

    @property
    def other_masters(self) -> tuple[str, ...]:
        """The masters' addresses this node reaches, in the order it tries them: every master but itself."""
        own = self.own_address if self.role.creates_cluster else ""
        return tuple(address for address in self.cluster.masters if address != own)

    @property
    def own_web_url(self) -> str:
        """This host's own web/API server, e.g. http://10.0.0.2:8080 (cluster.web_url is the cluster address)."""
        return urls.http_url(self.own_address, self.cluster.web_port)

    @property
    def own_flower_url(self) -> str:
        return urls.http_url(self.own_address, self.cluster.flower_port)

    @property
    def own_scheduler_health_url(self) -> str:
        return urls.http_url(self.own_address, self.cluster.scheduler_health_port) + "/health"

    @property
    def hostname_module(self) -> str:
        return f"{self.airflow_home}/config/airflow_node_hostname.py"

    @property
    def bundle_module(self) -> str:
        return f"{self.airflow_home}/config/airflow_node_bundle.py"

    def argv(self, daemon: Daemon) -> tuple[str, ...]:
        if daemon.leader_lock:  # the wrapper holds the lock and runs Airflow's daemon (as the airflow account)
            return (self.node.airflow_node_bin, "lead", daemon.leader_lock, "--", self.node.airflow_bin, *daemon.args)
        return (self.node.airflow_node_bin if daemon.ours else self.node.airflow_bin, *daemon.args)


def load_context(target: Target) -> NodeContext:
    """Read this node's settings and cluster file on the target. Raise UserError if init has not run.

    Cheap on purpose (no templates, no plan machinery): `airflow-node health` starts with it.
    """
    node_path = target.path(NODE_FILE)
    text = statefile.read_text(node_path, limit=1 << 20)
    if text is None:
        raise UserError(f"{node_path}: not found; run `airflow-node init` first")
    return NodeContext(read_cluster(target.path(CLUSTER_FILE)), parse_node(text, str(node_path)))
