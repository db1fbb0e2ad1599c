"""Where DAGs come from: the `[dags] source` spec of the cluster file, parsed into one value."""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_nodes.errors import UserError

SSH, PATH, GIT = "ssh", "path", "git"

_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+):(?P<path>/.*)$")
_SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+)(?::(?P<port>\d+))?(?P<path>/.*)$")


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

    def describe(self) -> str:
        if self.kind == SSH:
            port = f":{self.port}" if self.port else ""
            return f"{self.user + '@' if self.user else ''}{self.host}{port}:{self.path}"
        if self.kind == GIT:
            return f"{self.url}#{self.ref}"
        return self.path


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
        if not url:
            raise UserError(f"{where}: {spec!r} has no git URL")
        return DagSourceSpec(GIT, url=url, ref=ref or "HEAD")
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    if text.startswith("/"):
        return DagSourceSpec(PATH, path=text)
    match = _SSH_URL.match(text) or _SCP_LIKE.match(text)
    if match:
        port = match.groupdict().get("port")
        return DagSourceSpec(
            SSH, path=match["path"], user=match["user"], host=match["host"], port=int(port) if port else None
        )
    raise UserError(
        f"{where}: {spec!r} is not a DAG source "
        "(/path, [user@]host:/path, ssh://[user@]host[:port]/path, git+URL[#ref])"
    )
