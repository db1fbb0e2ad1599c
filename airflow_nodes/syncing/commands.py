"""Running the transfer tools (rsync, ssh, git): as whom, with which SSH options, and how they fail."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_nodes.errors import OperationError

SSH_OPTS_ENV = "AIRFLOW_NODE_SSH_OPTS"  # extra ssh options, e.g. "-i /path/key -o StrictHostKeyChecking=no"
TRANSFER_TIMEOUT = 1800  # seconds; a stuck transfer must not hold the lock for ever


@dataclass(frozen=True)
class TransferRunner:
    """How transfers run: as the airflow user when we are root on the real system, else as ourselves."""

    user: str | None = None  # drop to this user (root on the real system only)
    ssh_key: str | None = None
    ssh_extra: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def ssh_argv(self, port: int | None = None) -> list[str]:
        """Return the ssh command line shared by rsync -e, `ssh cat` and git."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15"]
        if port:
            argv += ["-p", str(port)]
        if self.ssh_key:
            argv += ["-i", self.ssh_key, "-o", "IdentitiesOnly=yes"]
        return argv + list(self.ssh_extra)

    def run(
        self, argv: Sequence[str], what: str, ok_codes: tuple[int, ...] = (0,), **kwargs
    ) -> subprocess.CompletedProcess:
        """Run argv (as the transfer user); return the result. Raise OperationError naming `what`."""
        env = {**os.environ, **self.env, "LC_ALL": "C"}
        extra = {}
        if self.user:
            account = pwd.getpwnam(self.user)
            extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            env.update(HOME=account.pw_dir, USER=self.user, LOGNAME=self.user)
        try:
            result = subprocess.run(
                list(argv), capture_output=True, env=env, timeout=TRANSFER_TIMEOUT, check=False, **extra, **kwargs
            )
        except FileNotFoundError:
            raise OperationError(f"{what}: {argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise OperationError(
                f"{what}: no result after {TRANSFER_TIMEOUT} s; the published DAGs are unchanged"
            ) from None
        if result.returncode not in ok_codes:
            raise OperationError(f"{what}: {failure_reason(result)}; the published DAGs are unchanged")
        return result


def failure_reason(result: subprocess.CompletedProcess) -> str:
    """Given a failed command, return one line: its last meaningful error line or how it died."""
    if result.returncode < 0:
        return f"{result.args[0]} was killed by signal {-result.returncode}"
    err = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else (result.stderr or "")
    lines = [line.strip() for line in err.splitlines() if line.strip() and not line.startswith("Warning: Permanently")]
    # rsync ends with a generic "rsync error: ... (code N)" line; the cause is usually the line before
    useful = [line for line in lines if not line.startswith(("rsync error:", "rsync: connection unexpectedly"))]
    reason = (useful or lines or [f"exit {result.returncode}"])[-1]
    return f"{reason} (exit {result.returncode})"


def ssh_extra_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Return the extra ssh options of $AIRFLOW_NODE_SSH_OPTS, split like a shell would."""
    return tuple(shlex.split((environ if environ is not None else os.environ).get(SSH_OPTS_ENV, "")))
