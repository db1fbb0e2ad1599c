"""Where DAGs come from: the `[dags] source` spec of the cluster file, parsed into one value."""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_nodes.errors import UserError
from airflow_nodes.redaction import redact_url
from airflow_nodes.schema import LOGIN_NAME, check_abs_path, check_host, check_port
from airflow_nodes.urls import bare_host

SSH, PATH, GIT = "ssh", "path", "git"
# git transports that only move data (not ext::, which runs a command)
_GIT_URL = re.compile(r"^(?:(?:https?|ssh|git|file)://[^\s]+|[A-Za-z0-9_][A-Za-z0-9_.-]*@[A-Za-z0-9][^\s:]*:[^\s]+)$")

_HOST = r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\s\[\]]+)"  # an IPv6 address in brackets, as rsync and ssh:// want it
_SCP_LIKE = re.compile(rf"^(?:(?P<user>[^@/:\s]+)@)?{_HOST}:(?P<path>/.*)$")
_SSH_URL = re.compile(rf"^ssh://(?:(?P<user>[^@/:\s]+)@)?{_HOST}(?::(?P<port>\d+))?(?P<path>/.*)$")


@dataclass(frozen=True)
class DagSourceSpec:
    """A parsed DAG source. `path` is remote for ssh, on this node for path, unused for git."""

    kind: str  # SSH, PATH or GIT
    path: str = ""
    user: str | None = None
    host: str | None = None
    port: int | None = None
    url: str = ""  # git only
    ref: str = "HEAD"  # git only: a branch, tag or commit-ish on the remote

    @property
    def ssh_destination(self) -> str:
        """[user@]host for ssh's command line (no brackets: ssh takes a bare IPv6 address)."""
        host = bare_host(str(self.host))
        return f"{self.user}@{host}" if self.user else host

    def is_on(self, *hosts: str) -> bool:
        """Whether this is an SSH source on one of these hosts (given as written, IPv6 in brackets or
        not): the one check of "the DAG source is the master's"."""
        return self.kind == SSH and bare_host(str(self.host)) in {bare_host(host) for host in hosts}

    def describe(self) -> str:
        if self.kind == SSH:
            port = f":{self.port}" if self.port else ""
            return f"{self.user + '@' if self.user else ''}{self.host}{port}:{self.path}"
        if self.kind == GIT:
            return f"{redact_url(self.url)}#{self.ref}"
        return self.path


def master_endpoint(spec: DagSourceSpec, airflow_user: str, master_host: str) -> tuple[str, int | None]:
    """Return ([user@]host, port) a worker reaches the master's gate at (its cluster file, leaving): the
    DAG source's SSH endpoint when it has one, else the cluster's airflow user on the master host."""
    if spec.kind == SSH:
        return spec.ssh_destination, spec.port
    return f"{airflow_user}@{master_host}", None


def parse_dags_source(spec: str, where: str = "dags.source") -> DagSourceSpec:
    """Given a DAG source spec, return a DagSourceSpec. Raise UserError naming `where` if it is none.

    Accepted forms:
      /abs/path or file:///abs/path       a local or NFS directory
      [user@]host:/path                   rsync over SSH (port 22)
      ssh://[user@]host[:port]/path       rsync over SSH on another port
      git+URL[#ref], or URL ending .git   a git repository, at a branch/tag (default: the remote HEAD)
    """
    text = spec.strip()
    if text.startswith("git+") or re.search(r"\.git/?(#|$)", text):
        url, _, ref = text.removeprefix("git+").partition("#")
        if not _GIT_URL.match(url):
            raise UserError(
                f"{where}: {url[:60]!r} is not a git URL (https://, ssh://, git://, file:// or user@host:path)"
            )
        if ref.startswith("-") or any(ch.isspace() for ch in ref):
            raise UserError(f"{where}: {ref[:40]!r} is not a branch, tag or commit")
        return DagSourceSpec(GIT, url=url, ref=ref or "HEAD")
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if text.startswith("/"):
        check_abs_path(text.rstrip("/") or "/", where)
        return DagSourceSpec(PATH, path=text)
    match = _SSH_URL.match(text) or _SCP_LIKE.match(text)
    if match:
        port = match.groupdict().get("port")
        endpoint = check_endpoint(match["user"], match["host"], port, where)
        return DagSourceSpec(SSH, path=match["path"], user=endpoint[0], host=endpoint[1], port=endpoint[2])
    raise UserError(
        f"{where}: {spec!r} is not a DAG source "
        "(/path, [user@]host:/path, ssh://[user@]host[:port]/path, git+URL[#ref])"
    )


def check_endpoint(user: str | None, host: str, port: str | None, where: str) -> tuple[str | None, str, int | None]:
    """Given the parts of an SSH endpoint, return (user, host, port). Raise UserError naming `where`
    when one could be read by ssh as an option or is not what it says."""
    if user is not None and not LOGIN_NAME.fullmatch(user):
        raise UserError(f"{where}: {user[:40]!r} is not a user name")
    check_host(host, where)
    if port is None:
        return user, host, None
    if not re.fullmatch(r"[0-9]{1,5}", port):
        raise UserError(f"{where}: {port[:20]!r} is not a port")
    check_port(int(port), where)
    return user, host, int(port)


def parse_ssh_endpoint(text: str, where: str) -> tuple[str | None, str, int | None]:
    """Given [user@]host[:port], return (user, host, port). Raise UserError naming `where`."""
    user, at, hostport = text.rpartition("@")
    host, _, port = hostport.partition(":")
    return check_endpoint(user if at else None, host, port or None, where)


def check_source_apart(spec: DagSourceSpec, protected: tuple[str, ...], where: str) -> None:
    """Raise UserError if a path or SSH source is, contains or lies in a protected directory (AIRFLOW_HOME,
    our config and state): syncing from there copies secrets into the DAG tree and grows on every run."""
    if spec.kind == GIT:
        return
    source = spec.path.rstrip("/") or "/"
    for directory in protected:
        inside = source == directory or source.startswith(directory + "/")
        contains = source == "/" or directory.startswith(source + "/")
        if inside or contains:
            raise UserError(f"{where}: {spec.path} overlaps {directory}, which holds this node's config or state")
