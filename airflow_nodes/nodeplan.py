"""Building a node's Plan: a pure function of the cluster config and the node's settings.

`reconcile_node` is the one path from "what this node should be" to "what changes on disk": `init`
and `sync` (when the master's cluster file changed) both call it, so both converge a node the same
way, including removing what the new plan no longer has.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

from airflow_nodes import defaults, statefile
from airflow_nodes.apply import Preview, preview
from airflow_nodes.cluster import ClusterConfig, default_dags_source
from airflow_nodes.context import NodeContext
from airflow_nodes.digest import sha256
from airflow_nodes.errors import UserError
from airflow_nodes.floating import FloatingFacts, plan_floating
from airflow_nodes.floating import gather_facts as gather_floating_facts
from airflow_nodes.floating import retirements as floating_retirements
from airflow_nodes.initsystems import all_init_systems, init_system
from airflow_nodes.localservers import ServerFacts, plan_servers, server_facts
from airflow_nodes.localservers import retirements as server_retirements
from airflow_nodes.node import (
    CLUSTER_FILE,
    CONFIG_DIR,
    CRON_FILE,
    DAG_RELEASES_DIR,
    DAGS_AUTHORING_DIR,
    KNOWN_HOSTS_FILE,
    NODE_FILE,
    RELEASE_FAILURES_DIR,
    RELEASE_REQUESTS_DIR,
    SSH_DIR,
    SSH_KEY_FILE,
    STATE_DIR,
    SYNC_USER,
    NodeSettings,
    dump_node,
    overlaps,
)
from airflow_nodes.plan import Plan, PlannedDir, PlannedFile, SystemUser
from airflow_nodes.render import render
from airflow_nodes.syncing.releases import RELEASE_NAME
from airflow_nodes.target import Target
from airflow_nodes.urls import bare_host


def render_airflow_cfg(ctx: NodeContext) -> str:
    """Return airflow.cfg: built from the cluster file only, so it is byte-identical on every node."""
    c = ctx.cluster
    return render(
        "config/airflow.cfg.j2",
        c=c,
        line=ctx.line,
        cluster_file=CLUSTER_FILE,
        dags_folder=ctx.dags_folder,
        task_log_folder=f"{ctx.airflow_home}/logs",
        dag_refresh_interval=defaults.DAG_REFRESH_INTERVAL,
        dag_bundles=dag_bundles(ctx),
        web_url=c.web_url,
        execution_api_url=f"{c.web_url}/execution/",
        admin_passwords_file=c.admin_passwords_file if shared_admin_password(ctx.cluster) else "",
    )


def shared_admin_password(cluster: ClusterConfig) -> bool:
    """Whether every master reads the admin's password from the cluster file (several masters on Airflow 3)."""
    return cluster.several_masters and cluster.version.line.has_execution_api and bool(cluster.secrets.admin_password)


def dag_bundles(ctx: NodeContext) -> list[dict]:
    """[dag_processor] dag_bundle_config_list: the DAG folder (Airflow's default bundle name, so existing
    DAGs keep theirs) as our versioned bundle over the releases."""
    kwargs = {
        "current": ctx.dags_folder,
        "releases": f"{DAG_RELEASES_DIR}/releases",
        "requests": RELEASE_REQUESTS_DIR,
        "failures": RELEASE_FAILURES_DIR,
        "wait": defaults.RELEASE_FETCH_WAIT,
        "refresh_interval": defaults.BUNDLE_REFRESH_INTERVAL,
    }
    return [{"name": "dags-folder", "classpath": "airflow_node_bundle.ReleaseDagBundle", "kwargs": kwargs}]


def render_env_file(ctx: NodeContext) -> str:
    return render("config/airflow.env.j2", environment=ctx.environment)


def render_cron(ctx: NodeContext) -> str:
    return render(
        "cron/airflow-node.j2",
        interval=ctx.cluster.sync_interval_minutes,
        # root, because a changed cluster file means re-rendering root-owned config and restarting
        # daemons; sync itself runs its transfers (ssh, rsync, git) as the sync account.
        user="root",
        sync_command=(
            ctx.node.airflow_node_bin,
            "sync",
            "--quiet",
            "--splay",
            str(defaults.CRON_SPLAY),
            "--wait",
            f"{defaults.LOCK_WAIT:g}",
        ),
        boot_command=init_system(ctx.node.init_system).boot_command(ctx),
    )


@dataclass(frozen=True)
class NodeCredentials:
    """A joined worker's own SSH key and the master's pinned host key (the sync channel)."""

    key_file: bytes
    known_hosts: bytes


def dags_source_is_default(cluster: ClusterConfig) -> bool:
    """Whether the DAG source is the one init picks (the master's own authoring directory, which init then
    makes): not just any source on the master, whose directory is the operator's."""
    return cluster.dags_source == default_dags_source(cluster.master_host, cluster.airflow_user)


def python_modules(ctx: NodeContext) -> list[PlannedFile]:
    """Our modules Airflow imports from $AIRFLOW_HOME/config: the advertised address, the DAG bundle."""
    modules = [PlannedFile(ctx.hostname_module, render("config/airflow_node_hostname.py.j2").encode(), 0o644)]
    if ctx.line.versioned_dags:
        bundle = render("config/airflow_node_bundle.py.j2", release_name=RELEASE_NAME.pattern)
        modules.append(PlannedFile(ctx.bundle_module, bundle.encode(), 0o644))
    return modules


def build_node_plan(
    cluster: ClusterConfig,
    cluster_text: bytes,
    node: NodeSettings,
    previous: NodeSettings | None = None,
    credentials: NodeCredentials | None = None,
    installed: Installed | None = None,
    servers: ServerFacts | None = None,
    floating: FloatingFacts | None = None,
) -> Plan:
    """Given the cluster config (and its exact bytes), this node's settings, the settings it was
    installed with (if any), its SSH credentials (a joined worker), what each init system runs now
    for those settings (read_installed) and, where init sets up Redis or PostgreSQL here, what the host
    holds of them (localservers.gather_facts), return the node's Plan."""
    installed = installed or {}
    ctx = NodeContext(cluster, node)
    user = cluster.airflow_user
    manager = init_system(node.init_system)

    dirs = [
        PlannedDir(CONFIG_DIR, 0o755),
        # root's: it holds what root acts on (the manifest, the sync lock and state); only the DAG
        # mirror below it belongs to the airflow user
        PlannedDir(STATE_DIR, 0o755),
        PlannedDir(ctx.airflow_home, 0o750, user, user),
        PlannedDir(f"{ctx.airflow_home}/logs", 0o750, user, user),
        PlannedDir(ctx.dags_folder, 0o750, user, user),
        PlannedDir(ctx.log_dir, 0o750),
    ]
    if ctx.role.follows_master and ctx.line.versioned_dags:  # where tasks ask the follower for a DAG version
        dirs += [PlannedDir(RELEASE_REQUESTS_DIR, 0o1730, "root", user), PlannedDir(RELEASE_FAILURES_DIR, 0o755)]
    if ctx.role.creates_cluster and dags_source_is_default(cluster):
        dirs += [PlannedDir("/srv/airflow", 0o755), PlannedDir(DAGS_AUTHORING_DIR, 0o755, user, user)]

    airflow_cfg, env_file = render_airflow_cfg(ctx).encode(), render_env_file(ctx).encode()
    files = [
        PlannedFile(CLUSTER_FILE, cluster_text, 0o640, "root", user, secret=True),
        PlannedFile(NODE_FILE, dump_node(node).encode(), 0o644),
        PlannedFile(ctx.env_file, env_file, 0o644),
        PlannedFile(ctx.airflow_cfg, airflow_cfg, 0o640, "root", user, secret=True),
        *python_modules(ctx),
        *manager.plan_files(ctx, sha256(airflow_cfg + env_file)[:16]),
        PlannedFile(CRON_FILE, render_cron(ctx).encode(), 0o644),
    ]
    if ctx.role.schedules and shared_admin_password(cluster):
        passwords = json.dumps({"admin": cluster.secrets.admin_password}) + "\n"
        files.append(PlannedFile(cluster.admin_passwords_file, passwords.encode(), 0o600, user, user, secret=True,
                                 shared=True))  # fmt: skip
    dirs += manager.plan_dirs(ctx)
    server_files, server_triggers, final = plan_servers(ctx, servers) if servers else ([], [], [])
    files += server_files
    floating_files, floating_triggers = plan_floating(ctx, floating) if floating else ([], [])
    files += floating_files
    if credentials:
        dirs.append(PlannedDir(SSH_DIR, 0o755))
        files += [
            # the transfers run as the airflow user: its key, in a directory only root can change
            PlannedFile(SSH_KEY_FILE, credentials.key_file, 0o600, SYNC_USER, SYNC_USER, secret=True),
            PlannedFile(KNOWN_HOSTS_FILE, known_hosts(cluster, credentials.known_hosts, node.node_name), 0o644),
        ]
    # where tasks may write under the systemd sandbox: made for the airflow user if missing, never
    # where our own directories and files are (the airflow user would own or could change them)
    ours = [d.path for d in dirs] + [posixpath.dirname(f.path) for f in files]
    for path in node.writable_path_list:
        clash = next((other for other in ours if overlaps(path, other)), None)
        if clash:
            raise UserError(f"--writable-path: {path} overlaps {clash}, which airflow-node manages; use a directory "
                            "of its own")  # fmt: skip
        dirs.append(PlannedDir(path, 0o750, user, user, created_only=True))

    return Plan(
        # on the master, workers log in as this user (key only: it has no password) to pull DAGs
        # and the cluster file with rsync and ssh, which need a shell
        users=(
            SystemUser(user, ctx.airflow_home, ctx.role.login_shell),
            SystemUser(SYNC_USER, "/nonexistent", purpose="fetches DAGs and the cluster file"),
        ),
        dirs=tuple(dirs),
        files=tuple(files),
        triggers=(
            *manager.triggers(ctx, installed.get((manager.name, node), ())),
            *server_triggers,
            *floating_triggers,
        ),  # fmt: skip
        # either init system may have run this node before (--init-system changed): both can retire
        retirements=tuple(
            rule
            for system in all_init_systems()
            for settings in {node, previous or node}
            for rule in system.retirements(settings, installed.get((system.name, settings), ()))
        )
        + tuple(rule for settings in {node, previous or node} for rule in server_retirements(settings))
        + tuple(floating_retirements()),  # fmt: skip
        secrets=cluster.secret_values(),
        final_commands=tuple(final),
    )


def reconcile_node(
    cluster: ClusterConfig,
    cluster_text: bytes,
    node: NodeSettings,
    target: Target,
    force: bool = False,
    previous: NodeSettings | None = None,
    credentials: NodeCredentials | None = None,
    servers: ServerFacts | None = None,
) -> Preview:
    """Given what this node should be and where it lives, return the previewed change (added, changed
    and removed files, and the commands around them). Raise UserError if this node's Airflow cannot
    run the cluster's version line. A node whose init set up Redis or PostgreSQL here keeps their files
    whoever reconciles it (the upgrade too): their facts are read here unless given."""
    if cluster.version.series != node.version.series:
        raise UserError(
            f"--airflow-version: this node runs Airflow {node.airflow_version} but cluster {cluster.name!r} "
            f"runs {cluster.airflow_version}; install {cluster.airflow_version}.x here"
        )
    credentials = credentials or read_credentials(target)
    installed = read_installed(target, node, previous)
    servers = server_facts(NodeContext(cluster, node), target, servers)  # init passes them, checked; others read them
    floating = gather_floating_facts(NodeContext(cluster, node), target)
    plan = build_node_plan(cluster, cluster_text, node, previous, credentials, installed, servers, floating)
    return preview(plan, target, force)


# what each init system runs now, by (its name, the settings it was asked for)
Installed = dict[tuple[str, NodeSettings], tuple[str, ...]]


def read_installed(target: Target, *settings: NodeSettings | None) -> Installed:
    """What each init system runs now for each of these settings, read from the node's files."""
    return {
        (system.name, node): system.installed(node, target)
        for system in all_init_systems()
        for node in settings
        if node is not None
    }


def read_credentials(target: Target) -> NodeCredentials | None:
    """The credentials a join left on this node (kept in every later plan), or None."""
    key, known = statefile.read_bytes(target.path(SSH_KEY_FILE)), statefile.read_bytes(target.path(KNOWN_HOSTS_FILE))
    return NodeCredentials(key, known or b"") if key else None


def known_hosts(cluster: ClusterConfig, pinned: bytes, own_name: str) -> bytes:
    """The host keys this node trusts: the one its join pinned (and any it trusted since), then every
    master's the cluster file names (each on port 22), so that it reaches whichever master is up."""
    lines = [line for line in pinned.decode(errors="replace").splitlines() if line.strip()]
    for member in cluster.members:
        host = bare_host(member.address)
        pinned_already = any(line.split()[0] in (host, f"[{host}]") for line in lines)
        if member.host_key and member.name != own_name and not pinned_already:  # a pin is never replaced
            lines.append(f"{host} {member.host_key}")
    return "".join(f"{line}\n" for line in lines).encode()
