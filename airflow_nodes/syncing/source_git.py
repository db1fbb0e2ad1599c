"""DAGs from a git repository: `ls-remote` to skip unchanged runs, a shallow fetch, a checkout."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from airflow_nodes.dagsource import DagSourceSpec
from airflow_nodes.errors import OperationError
from airflow_nodes.syncing.changes import Fetched
from airflow_nodes.syncing.commands import TransferRunner

_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class GitSource:
    def __init__(self, spec: DagSourceSpec, runner: TransferRunner):
        self.spec = spec
        self.runner = runner

    def _git(self, mirror: Path, *args: str) -> str:
        env_ssh = shlex.join(self.runner.ssh_argv())
        # protocol.ext.allow=never: a git URL must never name a command to run (ext::)
        argv = ["git", "-c", "core.sshCommand=" + env_ssh, "-c", "protocol.ext.allow=never", "-C", str(mirror), *args]
        result = self.runner.run(argv, f"git {args[0]} {self.spec.describe()}")
        return result.stdout.decode(errors="replace")

    def remote_commit(self, mirror: Path) -> str | None:
        """Return the commit the ref points to on the remote (None for a commit-ish ls-remote cannot list)."""
        output = self._git(mirror, "ls-remote", "--", self.spec.url, self.spec.ref)
        for line in output.splitlines():
            commit, _, name = line.partition("\t")
            if name in (self.spec.ref, f"refs/heads/{self.spec.ref}", f"refs/tags/{self.spec.ref}^{{}}"):
                return commit
        if output.strip():
            return output.split()[0]
        if _COMMIT.match(self.spec.ref):
            return None
        raise OperationError(
            f"git ls-remote {self.spec.describe()}: no such branch or tag; the published DAGs are unchanged"
        )

    def fetch(self, mirror: Path, last_source_revision: str | None) -> Fetched:
        if not (mirror / ".git").exists():
            self._git(mirror, "init", "-q")
        remote = self.remote_commit(mirror)
        if remote is not None and remote == last_source_revision:
            return Fetched(changes=(), source_revision=remote, unchanged=True)
        self._git(mirror, "fetch", "-q", "--depth=1", "--no-tags", "--", self.spec.url, self.spec.ref)
        self._git(mirror, "checkout", "-q", "-f", "--detach", "FETCH_HEAD")
        self._git(mirror, "clean", "-q", "-ffdx")
        commit = self._git(mirror, "rev-parse", "HEAD").strip()
        return Fetched(changes=None, source_revision=commit)
