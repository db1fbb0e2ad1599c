"""`airflow-node init`: from options (and whatever an earlier run left) to a previewed Plan."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import statefile, urls
from airflow_nodes.apply import ApplyResult, Preview, apply, node_lock, read_manifest
from airflow_nodes.cluster import (
    CLUSTER_OPTIONS,
    CLUSTER_SCHEMA,
    ClusterConfig,
    ClusterSecrets,
    check_account_and_home,
    default_dags_source,
    dump_cluster,
    parse_cluster,
    validate_cluster,
)
from airflow_nodes.config_sync import fetch_master_cluster_file
from airflow_nodes.context import NodeContext
from airflow_nodes.control import control
from airflow_nodes.dagsource import parse_ssh_endpoint
from airflow_nodes.detect import (
    DEFAULT_VENV,
    AirflowInstall,
    detect_airflow,
    detect_init_system,
    route_address,
    untrusted_in_venv,
)
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.execute import run_checked
from airflow_nodes.floating import check_unused, parse_floating_address
from airflow_nodes.initsystems import init_system as init_system_named
from airflow_nodes.install import find_lock, install_airflow, python_version
from airflow_nodes.join import host_key_of, join, master_join_token, parse_token, token_command
from airflow_nodes.localservers import (
    DB_NAME,
    DB_USER,
    REDIS_PORT,
    REDIS_SERVICE,
    ServerFacts,
    check_address,
    check_local_address,
    check_port_free,
    cluster_commands,
    database_ready,
    gather_facts,
    generated_password,
    package_commands,
)
from airflow_nodes.node import (
    CLUSTER_FILE,
    DAGS_AUTHORING_DIR,
    NODE_FILE,
    NODE_SCHEMA,
    NodeSettings,
    parse_node,
    validate_node,
)
from airflow_nodes.nodeplan import NodeCredentials, dags_source_is_default, reconcile_node, shared_admin_password
from airflow_nodes.roles import ROLES, Role, role_named
from airflow_nodes.schema import check_abs_path, check_host
from airflow_nodes.sync import SyncRequest, sync
from airflow_nodes.syncing.commands import TransferRunner, ssh_extra_from_env
from airflow_nodes.syncing.state import record_rendered_config
from airflow_nodes.target import Target, check_creatable_dir
from airflow_nodes.trust import first_untrusted

# The option that sets each key of the cluster and node files, so an error names what the user typed.
OPTION_OF_KEY = {f.name: f.option for f in (*CLUSTER_SCHEMA, *NODE_SCHEMA) if f.option}
# Node settings an option may leave out: the last init's value, else NodeSettings' own default.
NODE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(NodeSettings) if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class InitRequest:
    role: str
    airflow_version: str | None = None
    venv: str | None = None
    airflow_bin: str | None = None
    airflow_node_bin: str | None = None
    init_system: str | None = None
    node_name: str | None = None
    concurrency: int | None = None
    queues: str | None = None
    stop_timeout: int | None = None
    supervisord_conf: str | None = None
    writable_paths: str | None = None  # comma-separated; "" clears what the last init recorded
    wheelhouse: str | None = None  # "" clears it
    config_file: Path | None = None
    from_master: str | None = None
    # cluster options (master only)
    master_host: str | None = None
    broker_url: str | None = None
    db_url: str | None = None
    result_backend: str | None = None
    dags_source: str | None = None
    sync_interval_minutes: int | None = None
    airflow_home: str | None = None
    visibility_timeout: int | None = None
    web_port: int | None = None
    flower_port: int | None = None
    sentinel_master: str | None = None
    expected_workers: str | None = None
    api_address: str | None = None
    floating_address: str | None = None
    install_airflow: str | None = None  # install this Airflow into the venv first (shipped lock)
    broker_url_file: Path | None = None  # the URLs hold passwords: they may come from files
    db_url_file: Path | None = None
    advertise_address: str | None = None
    join: str | None = None  # a worker's join token (from --join, --join-file or the environment)
    # set up this host's Redis / PostgreSQL for the cluster (None: as the last init did)
    with_redis: bool | None = None
    with_postgres: bool | None = None
    db_allow: str | None = None  # comma-separated networks our PostgreSQL admits; "" clears them

    def given_cluster_options(self) -> dict[str, object]:
        return {attr: getattr(self, attr) for attr in CLUSTER_OPTIONS if getattr(self, attr) is not None}


@dataclass(frozen=True)
class InitOutcome:
    preview: Preview
    cluster: ClusterConfig
    node: NodeSettings
    notes: tuple[str, ...]


def _read_existing(target: Target, path: str) -> bytes | None:
    return statefile.read_bytes(target.path(path), limit=1 << 20)


def with_secret_files(request: InitRequest) -> InitRequest:
    """Return the request with --broker-url-file / --db-url-file read into the URLs they stand for."""
    values = {}
    for attr in ("broker_url", "db_url"):
        path = getattr(request, f"{attr}_file")
        option = f"--{attr.replace('_', '-')}"
        if path is None:
            continue
        if getattr(request, attr) is not None:
            raise UserError(f"{option}-file: give {option} one way only (option, variable or file)")
        values[attr] = statefile.read_secret_file(path, f"{option}-file")
    return dataclasses.replace(request, **values, broker_url_file=None, db_url_file=None) if values else request


def master_cluster(request: InitRequest, install: AirflowInstall, existing: ClusterConfig | None) -> ClusterConfig:
    """Return the master's cluster config: the existing one updated by the options given, or a new one.

    Secrets are generated only when there is no cluster file yet; re-running never rotates them.
    """
    version = install.version
    given = request.given_cluster_options()
    for attr, value in given.items():
        option = CLUSTER_OPTIONS[attr]
        if attr == "broker_url":
            urls.check_broker_url(value, option)
        elif attr == "db_url":
            urls.check_db_url(value, option)
        elif attr == "result_backend":
            urls.check_result_backend(value, version, option)
    if install.package_hash:  # detected, not --airflow-version: workers compare their set with it
        given["airflow_packages"] = install.package_hash
    if existing is None and given.get("floating_address"):
        raise UserError("--floating-address: it moves between masters: set it once a second master has joined")
    if existing is None:
        for attr in ("master_host", "broker_url", "db_url"):
            if attr not in given:
                raise UserError(f"{CLUSTER_OPTIONS[attr]}: required on the master's first init")
        given.setdefault("result_backend", urls.default_result_backend(given["db_url"], version))
        given.setdefault("dags_source", default_dags_source(given["master_host"]))
        config = ClusterConfig(airflow_version=version.series, secrets=ClusterSecrets.generate(), **given)
    else:
        if "db_url" in given and "result_backend" not in given:
            given["result_backend"] = urls.default_result_backend(given["db_url"], version)
        moved = "master_host" in given and "dags_source" not in given
        if moved and existing.dags_source == default_dags_source(existing.master_host, existing.airflow_user):
            # the default source names the master: it moves with it
            given["dags_source"] = default_dags_source(given["master_host"], existing.airflow_user)
        config = dataclasses.replace(existing, airflow_version=version.series, **given)
        if "floating_address" in given:
            config = with_floating_address(config, existing)
        if config != existing:  # a change: the other masters take it (masters.py orders changes by serial)
            config = dataclasses.replace(config, serial=existing.serial + 1)
    return _checked_options(validate_cluster, config)


def with_floating_address(config: ClusterConfig, existing: ClusterConfig) -> ClusterConfig:
    """The cluster file with the floating address given (normalised; "" drops it) as its cluster address.
    Raise UserError naming the option when it clashes with --api-address or there is no second master."""
    if not config.floating_address:
        return dataclasses.replace(config, api_address="" if existing.floating_address else config.api_address)
    if config.api_address != existing.api_address:
        raise UserError("--api-address: not with --floating-address, which is the cluster address")
    if len(config.masters) < 2:
        raise UserError("--floating-address: it moves between masters: join a second one first (`airflow-node "
                        "join-token --role master`); with one master, use --api-address or none")  # fmt: skip
    floating = parse_floating_address(config.floating_address)
    return dataclasses.replace(config, floating_address=f"{floating.address}/{floating.prefix}",
                               api_address=floating.address)  # fmt: skip


def check_floating(cluster: ClusterConfig, existing_text: bytes, node: NodeSettings, target: Target) -> None:
    """A floating address set now: keepalived runs as a systemd service, and on the real system nobody
    answers at the address yet. Raise UserError naming the option."""
    before = parse_cluster(existing_text.decode(errors="replace"), CLUSTER_FILE).floating_address
    if cluster.floating_address == before:
        return
    if node.init_system != "systemd":
        raise UserError(f"--floating-address: keepalived runs as a systemd service; this node runs under "
                        f"{node.init_system}: put a load balancer in front of the masters (--api-address)")  # fmt: skip
    if target.real_system:
        check_unused(cluster.api_address)


def _checked_options(validate, value):
    """Run a file schema's validation on a value built from options; the error names the option."""
    try:
        return validate(value, "init")
    except UserError as exc:
        # the check says "init: KEY: what is wrong"; the option that set KEY is what the user typed
        keyed = UserError(exc.detail) if exc.about == "init" else exc
        if keyed.about in OPTION_OF_KEY:
            raise keyed.about_instead(OPTION_OF_KEY[keyed.about]) from None
        raise keyed from None


def fetch_cluster_from_master(spec: str) -> bytes:
    """Read the master's cluster file over SSH ([user@]host[:port]), the channel the DAG sync uses.

    The bytes never touch our disk before they are validated. Extra ssh options (a key, known
    hosts) come from $AIRFLOW_NODE_SSH_OPTS, as for `airflow-node sync`.
    """
    user, host, port = parse_ssh_endpoint(spec, "--from-master")
    runner = TransferRunner(ssh_extra=ssh_extra_from_env(), failure_note="")  # an init has no DAGs published yet
    try:
        return fetch_master_cluster_file(runner, f"{user or 'airflow'}@{host}", port, "")
    except OperationError as exc:
        raise OperationError(str(exc), about="--from-master") from None


def check_role_options(request: InitRequest, role: Role) -> None:
    """Refuse, naming it, an option another role takes and this one does not (roles.py says which)."""
    given = request.given_cluster_options()
    if given and not role.creates_cluster:
        option = CLUSTER_OPTIONS[next(iter(given))]
        raise UserError(f"{option}: set on the master only; a {role.name} takes the cluster file (--config, "
                        "--from-master or --join)")  # fmt: skip
    for other in ROLES.values():
        for attr in other.options:
            if attr not in role.options and getattr(request, attr) is not None:
                option = "--config" if attr == "config_file" else "--" + attr.replace("_", "-")
                if attr == "join":  # it may come from the environment, where it is easily forgotten
                    option += " (or $AIRFLOW_NODE_JOIN_TOKEN)"
                raise UserError(f"{option}: for a {other.name}, not a {role.name}")


def worker_cluster_text(request: InitRequest, existing_text: bytes | None) -> tuple[bytes, str]:
    """Return (the cluster file's bytes, where they came from) for a worker."""
    if request.config_file and request.from_master:
        raise UserError("--config: give either --config or --from-master, not both")
    if request.config_file:
        try:
            text = statefile.read_bytes(request.config_file, limit=1 << 20, follow_links=True)
        except UserError as exc:
            raise UserError(f"--config: {exc}") from None
        if text is None:
            raise UserError(f"--config: cannot read {request.config_file} (no such file)")
        return text, str(request.config_file)
    if request.from_master:
        return fetch_cluster_from_master(request.from_master), f"{request.from_master}:{CLUSTER_FILE}"
    if existing_text is not None:
        return existing_text, CLUSTER_FILE
    raise UserError("--from-master: a worker needs its master's cluster file: pass --from-master HOST or --config FILE")


def default_airflow_node_bin() -> str:
    found = shutil.which("airflow-node")
    return str(Path(found).resolve()) if found else f"{sys.prefix}/bin/airflow-node"


def node_settings(
    request: InitRequest,
    existing: NodeSettings | None,
    installed: str,
    airflow_bin: str,
    target: Target,
    master_host: str,
) -> NodeSettings:
    """Return this node's settings: options given now, else what the last init recorded, else defaults
    (the address: this host's on its route to the master, found on the real system only)."""
    if existing and existing.role != request.role:
        raise UserError(f"--role: this node is already a {existing.role}; run `airflow-node uninstall` first")

    def pick(attr):
        value = getattr(request, attr)
        if value is not None:
            return value
        return getattr(existing, attr) if existing else NODE_DEFAULTS.get(attr)

    init_system = pick("init_system") or detect_init_system()
    address = pick("advertise_address")
    if not address and target.real_system:
        address = master_host if role_named(request.role).creates_cluster else route_address(master_host)
    settings = NodeSettings(
        role=request.role,
        airflow_version=installed,
        init_system=init_system,
        airflow_bin=airflow_bin,
        airflow_node_bin=pick("airflow_node_bin") or default_airflow_node_bin(),
        node_name=pick("node_name") or socket.gethostname(),
        concurrency=pick("concurrency"),
        queues=pick("queues"),
        stop_timeout=pick("stop_timeout"),
        supervisord_conf=pick("supervisord_conf"),
        advertise_address=urls.bare_host(address),
        writable_paths=pick("writable_paths"),
        wheelhouse=pick("wheelhouse"),
        db_allow=pick("db_allow"),
    )
    settings = _checked_options(validate_node, settings)
    return init_system_named(settings.init_system).settle(settings, target, conf_given=bool(request.supervisord_conf))


def with_moved_venv(request: InitRequest, target: Target) -> InitRequest:
    """A node set up before the venv left AIRFLOW_HOME (or whose venv another account may change) gets
    the same Airflow built again at the default venv: root must not run or build where the airflow
    account can write. Return the request asking for that install, or the request as it was."""
    text = None if request.venv or request.airflow_bin or request.install_airflow else _read_existing(target, NODE_FILE)
    if not text or not target.privileged:
        return request
    try:
        node = parse_node(text.decode(), str(target.path(NODE_FILE)))
    except (UnicodeDecodeError, UserError):
        return request  # plan_init says what is wrong with it
    airflow_bin = Path(node.airflow_bin)
    if not (first_untrusted(airflow_bin) or untrusted_in_venv(airflow_bin.parent / "python")):
        return request
    try:  # only a version we ship a lock for can be built again; otherwise detection refuses it aloud
        find_lock(node.airflow_version, python_version(sys.executable))
    except UserError:
        return request
    return dataclasses.replace(request, install_airflow=node.airflow_version, venv=DEFAULT_VENV)


def install_requested_airflow(request: InitRequest, target: Target, dry_run: bool, progress) -> tuple[InitRequest, str]:
    """With --install-airflow, install that version into the venv (from the shipped lock) before the
    node is planned, and return the request pointing at it plus what was done. Under --dry-run or
    --root nothing is installed: the command is only reported, and its version used for the plan."""
    request = with_moved_venv(request, target)
    if not request.install_airflow:
        return request, ""
    if request.wheelhouse:  # checked before anything is installed from it
        check_abs_path(request.wheelhouse, "--wheelhouse")
    try:  # a version we ship a lock for
        find_lock(request.install_airflow, python_version(sys.executable))
    except UserError as exc:  # the lock's check names the install-airflow command's option
        raise exc.about_instead("--install-airflow") if exc.about == "--version" else exc from None
    venv = Path(request.venv or DEFAULT_VENV)
    command = f"airflow-node install-airflow --version {request.install_airflow} --venv {venv}"
    if dry_run or not target.real_system:
        planned = dataclasses.replace(request, venv=str(venv), airflow_version=request.install_airflow)
        return planned, f"  would run: {command}   # the pinned Airflow this node runs"
    wheelhouse = Path(request.wheelhouse) if request.wheelhouse else None
    result = install_airflow(request.install_airflow, venv, wheelhouse=wheelhouse, progress=progress)
    return dataclasses.replace(request, venv=str(venv)), f"  ran: {command}   # {result.message}"


@dataclass(frozen=True)
class WantedServers:
    redis: bool
    postgres: bool
    postgres_cluster: str = ""  # the cluster we set up before ("15/main"): we stay with it

    def __bool__(self) -> bool:
        return self.redis or self.postgres

    @property
    def option(self) -> str:
        """The option an error about them names."""
        return "--with-postgres" if self.postgres else "--with-redis"

    def facts(self, target: Target) -> ServerFacts:
        return gather_facts(self.redis, self.postgres, target, self.postgres_cluster)


def wanted_servers(request: InitRequest, existing: NodeSettings | None) -> WantedServers:
    """Which of Redis and PostgreSQL this host runs for the cluster: as the options say, else as the last init did."""
    redis = request.with_redis if request.with_redis is not None else bool(existing and existing.local_redis)
    postgres = (
        request.with_postgres if request.with_postgres is not None else bool(existing and existing.local_postgres)
    )
    return WantedServers(redis, postgres, existing.local_postgres if existing and postgres else "")


def install_requested_servers(request: InitRequest, target: Target, dry_run: bool) -> str:
    """With --with-redis / --with-postgres, install what the distribution lacks of them (its packages, then
    a PostgreSQL cluster where they made none); return what was done, "" when nothing was. Run after
    plan_init has checked every option, before the plan is made again with what is installed. Under
    --dry-run or --root the commands are only listed."""
    if not role_named(request.role).creates_cluster:
        return ""
    wanted = wanted_servers(request, _existing_node(target))
    if not wanted:
        return ""
    facts = wanted.facts(target)
    if dry_run or not target.real_system:
        commands = [*package_commands(facts), *cluster_commands(facts)]
        return "\n".join(f"  would run: {c.text}   # {c.reason}" for c in commands)
    ran = []
    for command in package_commands(facts):
        run_checked(command.argv)
        ran.append(command)
    for command in cluster_commands(wanted.facts(target)):  # the package made one, or not
        run_checked(command.argv)
        ran.append(command)
    return "\n".join(f"  ran: {c.text}   # {c.reason}" for c in ran)


def _existing_node(target: Target) -> NodeSettings | None:
    text = _read_existing(target, NODE_FILE)
    if text is None:
        return None
    where = str(target.path(NODE_FILE))
    try:
        return parse_node(text.decode(), where)
    except UnicodeDecodeError:
        raise UserError(f"{where}: not UTF-8 text") from None


def with_server_urls(
    request: InitRequest,
    wanted: WantedServers,
    facts: ServerFacts | None,
    existing_cluster: ClusterConfig | None,
    existing_node: NodeSettings | None,
) -> tuple[InitRequest, list[str]]:
    """The request with the broker and DB URLs of the servers we set up here, as if the operator had given
    them, and notes on passwords generated. A password is generated once, when the server becomes ours;
    later inits keep it (the URL follows --master-host). Raise UserError naming the option that clashes."""
    host = request.master_host or (existing_cluster.master_host if existing_cluster else None)
    if wanted and host is not None:
        check_address(host, f"--master-host (with {wanted.option})")
    notes, values = [], {}
    servers = (  # the URL, the option, wanted now, ours before, whether the option was given now
        ("broker_url", "--with-redis", wanted.redis, bool(existing_node and existing_node.local_redis),
         request.with_redis is not None),
        ("db_url", "--with-postgres", wanted.postgres, bool(existing_node and existing_node.local_postgres),
         request.with_postgres is not None),
    )  # fmt: skip
    for attr, option, wanted_now, ours_before, option_given in servers:
        url_option = "--" + attr.replace("_", "-")
        given = getattr(request, attr) is not None
        if wanted_now and given and not option_given:
            raise UserError(f"{url_option}: this host's server is airflow-node's ({option}, as the last init "
                            f"recorded); add {option.replace('with', 'without')} to use another")  # fmt: skip
        if wanted_now and given:
            raise UserError(f"{url_option}: not with {option}, which sets up that server here and writes its URL")
        if ours_before and not wanted_now and not given:
            raise UserError(f"{option.replace('with', 'without')}: give {url_option} of the server to use instead")
        if not wanted_now or host is None:
            continue  # without --master-host on a first init, master_cluster says what is missing
        if ours_before and existing_cluster:
            password = urls.parse_url(getattr(existing_cluster, attr), attr).password
        else:
            password = generated_password()
            notes.append(f"generated the password of this host's {'Redis' if attr == 'broker_url' else 'PostgreSQL'}")
        if attr == "broker_url":
            values[attr] = urls.redis_url(host, REDIS_PORT, password)
        else:
            values[attr] = urls.postgres_url(DB_USER, password, host, facts.postgres_port, DB_NAME)
    return dataclasses.replace(request, **values), notes


def check_address_and_ports(master_host: str, wanted: WantedServers, facts: ServerFacts) -> None:
    """On the real system: the master's address is one of this host's, and the servers' ports are free or
    held by the services we configure. Raise UserError naming the option."""
    option = f"--master-host (with {wanted.option})"
    check_address(master_host, option)
    check_local_address(master_host, option)
    if wanted.redis:
        check_port_free(REDIS_PORT, REDIS_SERVICE, "--with-redis")
    if wanted.postgres:
        check_port_free(facts.postgres_port, facts.postgres_service, "--with-postgres")


def check_servers(cluster: ClusterConfig, wanted: WantedServers, facts: ServerFacts) -> ServerFacts:
    """On the real system, before anything changes: the address and the ports (check_address_and_ports),
    and PostgreSQL lets us in. Return the facts with what the database holds. Raise UserError naming the option."""
    check_address_and_ports(cluster.master_host, wanted, facts)
    if not wanted.postgres or not facts.postgres_cluster_exists:
        return facts
    password = urls.parse_url(cluster.db_url, "database.url").password
    return dataclasses.replace(facts, database_ready=database_ready(facts, password))


def plan_init(request: InitRequest, target: Target, force: bool = False) -> InitOutcome:
    """Given the init options and the node, return the previewed change. Raise UserError on bad input."""
    role = role_named(request.role)
    check_creatable_dir(target.root, "--root")
    request = with_secret_files(request)
    existing_node = _existing_node(target)
    existing_cluster_text = _read_existing(target, CLUSTER_FILE)
    cluster_where = str(target.path(CLUSTER_FILE))
    install = detect_airflow(
        request.venv,
        request.airflow_bin or (existing_node.airflow_bin if existing_node and not request.venv else None),
        request.airflow_version,
        target.node_root,
    )
    notes = []
    credentials = None
    facts = None

    check_role_options(request, role)
    wanted = wanted_servers(request, existing_node) if role.creates_cluster else WantedServers(False, False)
    if request.join and role.creates_cluster:  # another master: it takes the cluster as the first one made it
        given = [CLUSTER_OPTIONS[attr] for attr in request.given_cluster_options()]
        if given or wanted:
            raise UserError(f"{(given or [wanted.option])[0]}: not with --join; a master that joined takes the "
                            "cluster file, and changes it afterwards like any master")  # fmt: skip
    if role.creates_cluster and not request.join:
        existing = None
        if not (existing_cluster_text or b"").strip() and CLUSTER_FILE in read_manifest(target).files:
            state = "empty" if existing_cluster_text is not None else "gone"
            raise UserError(
                f"{cluster_where}: airflow-node wrote this cluster file and it is {state}; it held the cluster's "
                "secrets (the Fernet key of every encrypted connection): restore it (each worker has the same "
                "file) and run init again, or `airflow-node uninstall --purge` to start a new cluster"
            )
        if existing_cluster_text:
            try:
                existing = parse_cluster(existing_cluster_text.decode(), cluster_where)
            except UnicodeDecodeError:
                raise UserError(f"{cluster_where}: the cluster file is not UTF-8 text") from None
        if wanted:
            facts = wanted.facts(target)
        request, generated = with_server_urls(request, wanted, facts, existing, existing_node)
        notes += generated
        cluster = master_cluster(request, install, existing)
        first = existing and existing_node and existing_node.advertise_address == urls.bare_host(existing.master_host)
        if first and request.advertise_address is None:  # the first master's own address moves with --master-host
            request = dataclasses.replace(request, advertise_address=cluster.master_host)
        if existing == cluster:
            cluster_text = existing_cluster_text  # hand formatting and comments are kept
        else:
            cluster_text = dump_cluster(cluster).encode()
            if existing is None:
                notes.append("generated the cluster secrets (fernet key, secret key, JWT secret, flower password)")
    elif request.join:
        cluster_text, credentials, request = join_master(request, existing_node, role, install, target)
        source = "--join: the master's cluster file"
        cluster = parse_cluster(cluster_text.decode(errors="replace"), source)
    else:
        cluster_text, source = worker_cluster_text(request, existing_cluster_text)
        try:
            decoded = cluster_text.decode()
        except UnicodeDecodeError:
            raise UserError(f"{source}: the cluster file is not UTF-8 text") from None
        cluster = parse_cluster(decoded, source)
    if (not role.creates_cluster or request.join) and target.privileged:  # root hands the account its home
        check_account_and_home(cluster, target.path(cluster.airflow_home), source)

    node = node_settings(request, existing_node, str(install.version), install.airflow_bin, target, cluster.master_host)
    if role.creates_cluster and existing_cluster_text and cluster.floating_address:
        check_floating(cluster, existing_cluster_text, node, target)
    if node.db_allow and not wanted.postgres:
        raise UserError("--db-allow: only with --with-postgres (who may reach this host's PostgreSQL)")
    if facts:
        if node.init_system != "systemd":
            raise UserError(f"{wanted.option}: the distribution's Redis and PostgreSQL run as systemd services; this "
                            f"node runs under {node.init_system}: give --broker-url and --db-url instead")  # fmt: skip
        node = dataclasses.replace(node, local_redis=wanted.redis,
                                   local_postgres=facts.postgres_cluster if wanted.postgres else "")  # fmt: skip
        if target.real_system:
            facts = check_servers(cluster, wanted, facts)
    prev = reconcile_node(
        cluster, cluster_text, node, target, force=force, previous=existing_node, credentials=credentials, servers=facts
    )
    return InitOutcome(prev, cluster, node, tuple(notes))


def after_init(outcome: InitOutcome, target: Target, start: bool, joined: bool = False) -> str:
    """What follows an applied init: with --start (and on a node that joined, as the join command
    promises) the role starts; the master then says where its UI is, and prints the command that joins a
    worker (a fresh token). A master that joined first copies the DAG releases the others hold: its DAG
    processor may take the lead the moment it starts, and must not find an empty DAG folder."""
    lines = []
    if outcome.node.duties.creates_cluster and target.real_system:  # a master's config comes from init, not sync
        record_rendered_config(target, NodeContext(outcome.cluster, outcome.node).airflow_cfg)
    if joined and outcome.node.duties.creates_cluster and target.real_system:
        try:
            lines.append(sync(SyncRequest(target, dags_only=True)).summary)
        except (UserError, OperationError) as exc:
            lines.append(f"warning: no DAG release copied yet ({exc}); its follower tries again")
    lines += [control("start", target).summary()] if start else []
    if not outcome.node.duties.creates_cluster:
        return "\n".join(lines or ["start it: airflow-node start"])
    lines.append(web_ui_note(outcome.cluster) if start else "start it: airflow-node start")
    if dags_source_is_default(outcome.cluster):
        lines.append(f"DAGs: put them in {DAGS_AUTHORING_DIR}, then run `airflow-node sync` (cron runs it too)")
    if not any(note.startswith("generated the cluster secrets") for note in outcome.notes):
        lines.append("join a worker: run `airflow-node join-token` here for its command (a token valid for an hour)")
        return "\n".join(lines)
    try:  # the first init of a cluster: print how to join, as kubeadm init does
        token = master_join_token(target)
    except (UserError, OperationError) as exc:
        lines.append(f"no join token: {exc}")
    else:
        lines.append(
            f"join a worker (valid for an hour; `airflow-node join-token` mints more):\n  {token_command(token)}"
        )
    return "\n".join(lines)


def web_ui_note(cluster: ClusterConfig) -> str:
    """Where the UI is and how to log in (never the password itself: this output may end up in a log)."""
    if cluster.version.line.has_execution_api:  # Airflow 3: the simple auth manager's generated password
        passwords = f"{cluster.airflow_home}/simple_auth_manager_passwords.json.generated"
        if shared_admin_password(cluster):  # several masters: the one every master reads
            passwords = cluster.admin_passwords_file
        return (f"the UI: {cluster.web_url} (user admin; its password, once the api-server has started: "
                f"cat {passwords})")  # fmt: skip
    return (f"the UI: {cluster.web_url} (make a user first: sudo -u {cluster.airflow_user} airflow users create "
            "--role Admin --username admin ...)")  # fmt: skip


def join_master(
    request: InitRequest, existing: NodeSettings | None, role: Role, install: AirflowInstall, target: Target
) -> tuple[bytes, NodeCredentials, InitRequest]:
    """Enroll with the master a join token names; return its cluster file, this node's credentials and
    the request with the address it enrolled with. Everything is checked before anything is sent."""
    if request.config_file or request.from_master:
        raise UserError("--join: give --join, --config or --from-master, one of them")
    token = parse_token(request.join)
    if token.role != role.name:
        raise UserError(f"--join: this token joins a {token.role}, not a {role.name}; mint one with "
                        f"`airflow-node join-token --role {role.name}` on a master")  # fmt: skip
    host_key = ""
    if role.creates_cluster:
        if not install.version.several_schedulers:
            raise UserError(f"--join: this host runs Airflow {install.version}; several masters need Airflow 3.2 or "
                            "later (before it two schedulers can run a task twice)")  # fmt: skip
        host_key = host_key_of(target)
    name = request.node_name or (existing.node_name if existing else socket.gethostname())
    check_host(name, "--node-name")  # before anything is enrolled on the master
    address = urls.bare_host(request.advertise_address or route_address(token.host) or name)
    joined = join(token, name, address, host_key=host_key)
    request = dataclasses.replace(request, advertise_address=request.advertise_address or address)
    return joined.cluster_text, NodeCredentials(joined.key_file, joined.known_hosts), request


ADMIT_ROUNDS = 5  # a worker that enrolls while admit applies is planned in the next round


def admit(target: Target) -> list[ApplyResult]:
    """`airflow-node admit`: this master planned again as its last init recorded it, so its pg_hba admits
    exactly the workers enrolled now, and applied; again while a new plan differs (systemd drops a path
    unit's trigger that comes while its service runs). Return what each apply did."""
    node = _existing_node(target)
    if node is None or not node.local_postgres:
        raise UserError(f"{target.path(NODE_FILE)}: this node runs no PostgreSQL of airflow-node's "
                        "(`init --with-postgres`): nothing to admit to")  # fmt: skip
    applied = []
    for _ in range(ADMIT_ROUNDS):
        with node_lock(target):
            outcome = plan_init(InitRequest(role=node.role), target)
            if outcome.preview.nothing_to_do:
                break
            applied.append(apply(outcome.preview))
    return applied
