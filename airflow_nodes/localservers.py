"""The broker and the database on the master itself (`init --with-redis --with-postgres`).

The distribution's own redis-server and PostgreSQL, from its packages, configured through files of our
own and never by editing the distribution's in place:

- Redis: /etc/airflow-node/redis.conf includes the distribution's redis.conf and sets what the cluster
  needs after it (the last value of a setting wins): the master's address and loopback, protected mode,
  a generated password; a systemd drop-in starts redis-server with it.
- PostgreSQL: a file in the cluster's conf.d (listen on the master's address, read our
  pg_hba), and our pg_hba.conf: this host, each enrolled worker and each --db-allow network, for the
  Airflow role and database only, then the distribution's own rules (included on PostgreSQL 16+,
  copied on 15, which has no include in pg_hba.conf).

What is read from the host (the distribution, what is installed, the role and database PostgreSQL
holds) is gathered into ServerFacts before planning, so plan_servers stays a pure function.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute, statefile, urls
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.node import CONFIG_DIR, SYSTEMD_DIR, NodeSettings
from airflow_nodes.plan import Command, PlannedFile, Retirement, Trigger
from airflow_nodes.render import render
from airflow_nodes.sshkeys import enrolled_sources
from airflow_nodes.target import Target

REDIS_PORT = 6379
REDIS_CONF = f"{CONFIG_DIR}/redis.conf"
REDIS_SERVICE = "redis-server.service"
REDIS_DROP_IN = f"{SYSTEMD_DIR}/{REDIS_SERVICE}.d/airflow-node.conf"
PG_HBA = f"{CONFIG_DIR}/pg_hba.conf"
# the role and database Airflow gets in a PostgreSQL of ours
DB_USER = DB_NAME = "airflow"
POSTGRES = "postgres"  # the distribution's account of the server: root's SQL runs as it
# a systemd path unit on the master runs `airflow-node admit` when a worker enrolls (or leaves)
ADMIT_UNIT = "airflow-node-admit"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)

# Distribution families we set the servers up on: their package manager's commands and package names.
APT = {"redis": "redis-server", "postgres": "postgresql"}
# The PostgreSQL major each release's `postgresql` package installs: a plan for a host that has none yet
# (a dry run, --root) names that one's files. Once installed, the installed version is used.
POSTGRES_OF_RELEASE = {("debian", "12"): 15, ("debian", "13"): 17, ("ubuntu", "22.04"): 14, ("ubuntu", "24.04"): 16}


@dataclass(frozen=True)
class Distribution:
    id: str  # /etc/os-release ID: debian, ubuntu, rhel ...
    version: str  # VERSION_ID
    like: tuple[str, ...] = ()  # ID_LIKE

    @property
    def apt(self) -> bool:
        return "debian" in (self.id, *self.like)


def read_distribution(target: Target) -> Distribution:
    """The distribution of the host under target, from its /etc/os-release. Raise UserError naming the
    file when it is missing or says nothing we can use."""
    path = target.path("/etc/os-release")
    text = statefile.read_bytes(path, limit=64 << 10, follow_links=True)  # a link to /usr/lib/os-release
    fields = {}
    for line in (text or b"").decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z_]+", key):
            try:
                fields[key] = " ".join(shlex.split(value))
            except ValueError:
                continue
    if not fields.get("ID"):
        raise UserError(f"{path}: no ID= line: cannot tell which distribution's packages to set up")
    return Distribution(fields["ID"], fields.get("VERSION_ID", ""), tuple(fields.get("ID_LIKE", "").split()))


@dataclass(frozen=True)
class ServerFacts:
    """What the host holds, read before planning (gather_facts)."""

    distribution: Distribution
    missing_packages: tuple[str, ...]  # to install with the distribution's package manager first
    postgres_version: int = 0  # the cluster's major (installed, else the release's), 0 without --with-postgres
    postgres_cluster_exists: bool = False
    postgres_port: int = 5432
    distribution_hba: str = ""  # PostgreSQL 15: the rules of the distribution's pg_hba.conf, copied into ours
    enrolled: tuple[tuple[str, str], ...] = ()  # (worker name, address) of each worker enrolled with the master
    database_ready: bool = False  # the role (with the cluster's password) and its database exist

    @property
    def postgres_cluster(self) -> str:
        return f"{self.postgres_version}/main"

    @property
    def postgres_service(self) -> str:
        return postgres_service(self.postgres_cluster)

    @property
    def postgres_conf_dir(self) -> str:
        return f"/etc/postgresql/{self.postgres_cluster}"


def _installed_postgres(target: Target) -> list[int]:
    base = target.path("/usr/lib/postgresql")
    try:
        names = [entry.name for entry in base.iterdir()]
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and len(n) < 4 and (base / n / "bin" / "postgres").exists())


def _postgres_port(conf_text: str) -> int:
    """The port a postgresql.conf sets (its last `port =` line), else PostgreSQL's default."""
    ports = re.findall(r"(?m)^\s*port\s*=\s*'?(\d{1,5})'?", conf_text)
    port = int(ports[-1]) if ports else 5432
    if not 1 <= port <= 65535:
        raise UserError(f"postgresql.conf: port {port} is not a TCP port")
    return port


def hba_rules(text: str) -> str:
    """The rule lines of a pg_hba.conf (no comments, no blank lines)."""
    lines = (line.strip() for line in text.splitlines())
    return "".join(f"{line}\n" for line in lines if line and not line.startswith("#"))


def gather_facts(redis: bool, postgres: bool, target: Target, postgres_cluster: str = "") -> ServerFacts:
    """Read what plan_servers needs from the host for the servers wanted: the distribution, what is
    installed, the PostgreSQL cluster (the one named, else the newest installed version's main). Raise
    UserError naming the option when this host's distribution is not one we set up."""
    distribution = read_distribution(target)
    option = "--with-postgres" if postgres else "--with-redis"
    if not distribution.apt:
        raise UserError(f"{option}: airflow-node sets up Redis and PostgreSQL on Debian and Ubuntu (apt), not on "
                        f"{distribution.id}; install them yourself and give --broker-url and --db-url")  # fmt: skip
    missing = []
    if redis and not target.path("/usr/bin/redis-server").exists():
        missing.append(APT["redis"])
    if not postgres:
        return ServerFacts(distribution, tuple(missing))
    versions = _installed_postgres(target)
    if postgres_cluster:
        version = int(postgres_cluster.partition("/")[0])
    elif versions:
        version = versions[-1]
    else:
        missing.append(APT["postgres"])
        version = POSTGRES_OF_RELEASE.get((distribution.id, distribution.version), 0)
        if not version:
            raise UserError(f"--with-postgres: PostgreSQL is not installed and airflow-node does not know which "
                            f"version {distribution.id} {distribution.version} installs: `apt-get install "
                            "postgresql` first")  # fmt: skip
    conf_dir = f"/etc/postgresql/{version}/main"
    conf = statefile.read_text(target.path(f"{conf_dir}/postgresql.conf"))
    hba = statefile.read_text(target.path(f"{conf_dir}/pg_hba.conf")) if version < 16 else None
    return ServerFacts(
        distribution,
        tuple(missing),
        postgres_version=version,
        postgres_cluster_exists=conf is not None,
        postgres_port=_postgres_port(conf or ""),
        distribution_hba=hba_rules(hba or ""),
    )


def server_facts(ctx: NodeContext, target: Target, facts: ServerFacts | None = None) -> ServerFacts | None:
    """What a node whose init set up Redis or PostgreSQL here needs for its plan (None for any other): the
    facts (gathered unless given) and, for PostgreSQL, the workers enrolled now, whom pg_hba admits."""
    node = ctx.node
    if not (node.local_redis or node.local_postgres):
        return None
    facts = facts or gather_facts(node.local_redis, bool(node.local_postgres), target, node.local_postgres)
    return dataclasses.replace(facts, enrolled=enrolled_sources(target, ctx)) if node.local_postgres else facts


def package_commands(facts: ServerFacts) -> list[Command]:
    """The missing packages, with the distribution's package manager. Run before planning; listed under
    --dry-run and --root."""
    if not facts.missing_packages:
        return []
    apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get")
    return [
        Command((*apt, "update", "-qq"), "the package lists, for what follows"),
        Command((*apt, "install", "-y", "-qq", *facts.missing_packages), "the distribution's servers"),
    ]


def cluster_commands(facts: ServerFacts) -> list[Command]:
    """A PostgreSQL cluster, started, where the package made none (Debian's makes `main` on install,
    unless told not to). Facts read after the packages are installed."""
    if not facts.postgres_version or facts.postgres_cluster_exists:
        return []
    return [Command(("pg_createcluster", "--start", str(facts.postgres_version), "main"), "a PostgreSQL cluster")]


# -- SCRAM-SHA-256: PostgreSQL keeps a verifier, never the password ---------------------------------
# Computed here (RFC 5802/7677, PostgreSQL's own format) so the password itself never reaches the server,
# its log or a command line: libpq's PQencryptPasswordConn does the same, but needs a connection, which
# root has not (peer authentication admits only the postgres account).


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """PostgreSQL's SCRAM-SHA-256$ITER:SALT$STOREDKEY:SERVERKEY for a password (ASCII: our generated ones)."""
    salt = salt or secrets.token_bytes(16)
    stored, server = _scram_keys(password, salt, iterations)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def scram_matches(password: str, verifier: str) -> bool:
    """Whether a verifier PostgreSQL holds was made from this password."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d{1,7}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)", verifier)
    if not match or not 1 <= int(match[1]) <= 1_000_000:
        return False
    salt = base64.b64decode(match[2])
    return hmac.compare_digest(scram_verifier(password, salt, int(match[1])), verifier)


# -- asking PostgreSQL, as its own account -----------------------------------------------------------


def _psql_argv(facts: ServerFacts) -> tuple[str, ...]:
    """psql over the cluster's socket, run as the postgres account (its peer login); the SQL goes on stdin."""
    return ("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-p", str(facts.postgres_port), "-d", "postgres")


def psql(facts: ServerFacts, sql: str, what: str) -> str:
    """Run SQL as the postgres account (none of our environment, no terminal of ours); return its
    unaligned output. Raise CommandError naming `what`."""
    return execute.run(_psql_argv(facts), what=what, input=sql, timeout=60, user=POSTGRES, clean_env=True).stdout


def database_ready(facts: ServerFacts, password: str) -> bool:
    """Whether the cluster holds our role with this password and our database, owned by it. Raise
    UserError naming --with-postgres when we cannot log in, or when a role or database of that name is
    someone else's (we never take one over): another password or none, more rights than LOGIN, another
    owner."""
    # the role's verifier ("" without a password, "privileged" with a right we never give), or "-" without one
    query = (
        "SELECT coalesce((SELECT CASE WHEN rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR "
        f"rolbypassrls THEN 'privileged' ELSE coalesce(rolpassword, '') END FROM pg_authid WHERE rolname = '{DB_USER}'"
        f"), '-'), coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DB_NAME}'), '-');"
    )
    try:
        answer = psql(facts, query, f"PostgreSQL {facts.postgres_cluster}").strip()
    except OperationError as exc:
        raise UserError(f"--with-postgres: cannot log in to PostgreSQL {facts.postgres_cluster} as postgres "
                        f"(its peer login): {exc}; give --db-url of a database set up yourself") from None  # fmt: skip
    verifier, _, owner = answer.rpartition("|")
    if verifier != "-" and not scram_matches(password, verifier):
        what = "more rights than LOGIN" if verifier == "privileged" else "another password, or none"
        raise UserError(f"--with-postgres: PostgreSQL {facts.postgres_cluster} has a role {DB_USER!r} with {what}; "
                        "airflow-node never takes over a role it did not make: drop it, or give --db-url")  # fmt: skip
    if owner not in ("-", DB_USER):
        raise UserError(f"--with-postgres: PostgreSQL {facts.postgres_cluster} has a database {DB_NAME!r} owned by "
                        f"{owner!r}; give --db-url to use it, or drop it")  # fmt: skip
    return verifier != "-" and owner == DB_USER


def create_database_sql(password: str) -> str:
    """Our role (its SCRAM verifier) and database, each made only when missing."""
    verifier = scram_verifier(password)
    return (
        f"SELECT 'CREATE ROLE {DB_USER} LOGIN PASSWORD ' || quote_literal('{verifier}') "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}')\n\\gexec\n"
        f"SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_USER}' "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}')\n\\gexec\n"
    )


def drop_database_sql() -> str:
    return f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE);\nDROP ROLE IF EXISTS {DB_USER};\n"


def psql_command(facts: ServerFacts, sql: str, reason: str) -> Command:
    return Command(_psql_argv(facts), reason, input=sql, user=POSTGRES)


# -- checks before anything changes ------------------------------------------------------------------


def check_address(address: str, option: str) -> None:
    """Redis binds, PostgreSQL listens on and pg_hba admits addresses, not names. Raise UserError naming the option."""
    try:
        ipaddress.ip_address(urls.bare_host(address))
    except ValueError:
        raise UserError(f"{option}: {address[:60]!r} is not an IP address; the servers listen on addresses") from None


def check_local_address(address: str, option: str = "--master-host") -> None:
    """Redis and PostgreSQL listen on the master's address: it must be one of this host's. Raise
    UserError naming the option (binding a socket to it tells, and sends nothing)."""
    bare = urls.bare_host(address)
    try:
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((bare, 0))
    except (OSError, ValueError):
        raise UserError(f"{option}: {bare} is not an address of this host; Redis and PostgreSQL listen on it") from None


def listening_sockets(port: int) -> set[int]:
    """The inodes of the sockets listening on a TCP port in this network namespace (/proc/net/tcp, tcp6:
    the kernel's own table, no program's name to parse)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for fields in (row.split() for row in rows):
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets a process holds open."""
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target.startswith("socket:[") and target[8:-1].isdigit():
                inodes.add(int(target[8:-1]))
    return inodes


def main_pid(service: str) -> int:
    output = execute.run(("systemctl", "show", "--property=MainPID", "--value", service), timeout=10, ok_codes=None)
    value = output.stdout.strip()
    return int(value) if value.isdigit() else 0


def check_port_free(port: int, service: str, option: str) -> None:
    """The port is free, or every socket listening on it is the service's (the one we configure). Raise
    UserError naming the option otherwise."""
    listening = listening_sockets(port)
    if not listening:
        return
    pid = main_pid(service)
    if pid and listening <= sockets_of(pid):
        return
    raise UserError(f"{option}: port {port} is taken by another program than {service} (`ss -ltnp sport = "
                    f":{port}` names it); stop it, or give the URL of that server instead")  # fmt: skip


# -- the plan --------------------------------------------------------------------------------------


def admitted_networks(ctx: NodeContext, facts: ServerFacts) -> list[tuple[str, str]]:
    """(network, who) that pg_hba admits to our database: this host, each enrolled worker, --db-allow."""
    found = [("127.0.0.1/32", "this host"), ("::1/128", "this host")]
    found.append((host_network(ctx.cluster.master_host), "this host, the master's address"))
    found += [(host_network(address), f"worker {name}, enrolled") for name, address in facts.enrolled]
    found += [(str(ipaddress.ip_network(network)), "--db-allow") for network in ctx.node.db_allow_list]
    unique: dict[str, str] = {}
    for network, who in found:
        unique.setdefault(network, who)
    return list(unique.items())


def listen_addresses(master_host: str, *loopback: str) -> list[str]:
    """Loopback, and the master's address unless it is loopback itself: Redis will not start when told to
    bind one address twice ("-" marks an address Redis may skip when it is missing, as ::1 may be)."""
    master = urls.bare_host(master_host)
    return list(loopback) if ipaddress.ip_address(master).is_loopback else [master, *loopback]


def host_network(address: str) -> str:
    return str(ipaddress.ip_network(urls.bare_host(address)))


def plan_servers(ctx: NodeContext, facts: ServerFacts) -> tuple[list[PlannedFile], list[Trigger], list[Command]]:
    """Our files for the local Redis and PostgreSQL, the commands their changes need, and the commands
    that make what PostgreSQL lacks (the role and database)."""
    node, cluster = ctx.node, ctx.cluster
    files: list[PlannedFile] = []
    triggers: list[Trigger] = []
    final: list[Command] = []
    reload = Command(("systemctl", "daemon-reload"), "unit files changed")
    if node.local_redis:
        password = urls.parse_url(cluster.broker_url, "broker.url").password
        conf = render("servers/redis.conf.j2", cluster=cluster.name, include="/etc/redis/redis.conf",
                      bind=listen_addresses(cluster.master_host, "127.0.0.1", "-::1"), port=REDIS_PORT,
                      password=password, drop_in=REDIS_DROP_IN)  # fmt: skip
        drop_in = render("servers/redis-server.service.d.j2", conf=REDIS_CONF)
        files += [
            PlannedFile(REDIS_CONF, conf.encode(), 0o640, "root", "redis", secret=True),
            PlannedFile(REDIS_DROP_IN, drop_in.encode(), 0o644),
        ]
        triggers.append(Trigger((REDIS_CONF, REDIS_DROP_IN), (
            reload,
            Command(("systemctl", "enable", REDIS_SERVICE), "the broker starts at boot"),
            Command(("systemctl", "restart", REDIS_SERVICE), "the broker's settings changed"),
        )))  # fmt: skip
    if node.local_postgres:
        conf_file = f"{facts.postgres_conf_dir}/conf.d/airflow-node.conf"
        listen = ",".join(listen_addresses(cluster.master_host, "localhost"))
        conf = render("servers/postgresql.conf.j2", cluster=cluster.name, listen=listen, hba_file=PG_HBA)
        hba = render("servers/pg_hba.conf.j2", cluster=cluster.name, database=DB_NAME, user=DB_USER,
                     admitted=admitted_networks(ctx, facts), version=facts.postgres_version,
                     distribution_hba_file=f"{facts.postgres_conf_dir}/pg_hba.conf",
                     distribution_hba=facts.distribution_hba)  # fmt: skip
        files += [
            PlannedFile(conf_file, conf.encode(), 0o644),
            PlannedFile(PG_HBA, hba.encode(), 0o640, "root", "postgres"),
        ]
        service = facts.postgres_service
        triggers += [
            Trigger((conf_file,), (
                Command(("systemctl", "enable", service), "the database starts at boot"),
                Command(("systemctl", "restart", service), "the addresses it listens on changed"),
            )),
            Trigger((PG_HBA,), (Command(("systemctl", "reload", service), "who may connect changed"),),
                    unless=(conf_file,)),
        ]  # fmt: skip
        admit = plan_admit_units(ctx)
        files += admit
        triggers.append(Trigger(tuple(f.path for f in admit), (
            reload,
            Command(("systemctl", "enable", "--now", f"{ADMIT_UNIT}.path"), "a worker's enrolment admits it"),
        )))  # fmt: skip
        if not facts.database_ready:
            password = urls.parse_url(cluster.db_url, "database.url").password
            reason = f"role {DB_USER} and database {DB_NAME} in PostgreSQL {facts.postgres_cluster}, where missing"
            final.append(psql_command(facts, create_database_sql(password), reason))
    return files, triggers, final


def plan_admit_units(ctx: NodeContext) -> list[PlannedFile]:
    """The path unit that runs `airflow-node admit` when the airflow account's authorized_keys changes
    (a worker enrolled or left), and its service."""
    keys = f"{ctx.airflow_home}/.ssh/authorized_keys"
    path_unit = render("servers/airflow-node-admit.path.j2", keys=keys, service=f"{ADMIT_UNIT}.service")
    service = render("servers/airflow-node-admit.service.j2", argv=(ctx.node.airflow_node_bin, "admit"))
    return [
        PlannedFile(f"{SYSTEMD_DIR}/{ADMIT_UNIT}.path", path_unit.encode(), 0o644),
        PlannedFile(f"{SYSTEMD_DIR}/{ADMIT_UNIT}.service", service.encode(), 0o644),
    ]


def retirements(node: NodeSettings | None) -> list[Retirement]:
    """When our files go (uninstall, or --without-redis/--without-postgres): the servers go back to the
    distribution's own settings."""
    reload = Command(("systemctl", "daemon-reload"), "unit files removed")
    rules = [
        Retirement(REDIS_DROP_IN, after=(reload, Command(("systemctl", "try-restart", REDIS_SERVICE),
                                                         "back to the distribution's settings"))),  # fmt: skip
        Retirement(f"{SYSTEMD_DIR}/{ADMIT_UNIT}.path",
                   (Command(("systemctl", "disable", "--now", "{name}"), "no longer planned"),), (reload,)),
    ]  # fmt: skip
    if node and node.local_postgres:
        service = postgres_service(node.local_postgres)
        rules.append(
            Retirement(
                "/etc/postgresql/*/conf.d/airflow-node.conf",
                after=(Command(("systemctl", "try-restart", service), "back to its own settings"),),
            )
        )
    return rules


def generated_password() -> str:
    """A password for our Redis or PostgreSQL: 48 hex digits, safe in every file and URL they go in."""
    return secrets.token_hex(24)


def server_services(node: NodeSettings) -> tuple[str, ...]:
    """The systemd services of the servers init set up on this node."""
    services = (REDIS_SERVICE,) if node.local_redis else ()
    if node.local_postgres:
        services += (postgres_service(node.local_postgres),)
    return services


def postgres_service(cluster: str) -> str:
    """Debian's unit of a PostgreSQL cluster: 15/main -> postgresql@15-main.service."""
    return f"postgresql@{cluster.replace('/', '-')}.service"
