"""Running the transfer tools (rsync, ssh, git): as whom, with which SSH options, and how they fail."""

from __future__ import annotations

import os
import random
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_nodes import execute
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.execute import CommandError, Completed

SSH_OPTS_ENV = "AIRFLOW_NODE_SSH_OPTS"  # extra ssh options, e.g. "-i /path/key -o StrictHostKeyChecking=no"
TRANSFER_TIMEOUT = 1800  # seconds; a stuck transfer must not hold the lock for ever
# what ssh says when sshd turned the connection away before authentication: MaxStartups (10:30:100 by
# default) drops unauthenticated connections at random past ten at once, as when many workers sync together
DROPPED = re.compile(r"kex_exchange_identification|Connection (closed|reset) by|Not allowed at this time")
# seconds before each new try, each taken at random between half and one and a half times it: the
# workers sshd turned away come back spread out, not as the same herd
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class TransferRunner:
    """How transfers run: as the airflow user when we are root on the real system, else as ourselves."""

    user: str | None = None  # drop to this user (root on the real system only)
    ssh_key: str | None = None
    ssh_extra: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # what a failed transfer means, said after it: a sync's leaves the published DAGs as they were
    failure_note: str = "; the published DAGs are unchanged"

    def ssh_argv(self, port: int | None = None) -> list[str]:
        """Return the ssh command line shared by rsync -e, `ssh cat` and git."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15"]
        if port:
            argv += ["-p", str(port)]
        if self.ssh_key:
            argv += ["-i", self.ssh_key, "-o", "IdentitiesOnly=yes"]
        return argv + list(self.ssh_extra)

    def ask(self, destination: str, port: int | None, *words: str) -> bytes:
        """Run one request on an SSH host (the master's gate answers these) and return what it printed.
        Raise OperationError."""
        argv = [*self.ssh_argv(port), "--", destination, *words]
        return self.run(argv, f"asking {destination} for {' '.join(words)}").stdout

    def run(self, argv: Sequence[str], what: str, ok_codes: tuple[int, ...] = (0,)) -> Completed:
        """Run argv (as the transfer user); return its result, output as bytes. A connection sshd turned
        away is tried again after a growing, random delay (RETRY_DELAYS). Raise OperationError."""
        for tries, delay in enumerate((*RETRY_DELAYS, None), 1):
            try:
                return execute.run(
                    argv, what=what, timeout=TRANSFER_TIMEOUT, user=self.user, env={**self.env, "LC_ALL": "C"},
                    binary=True, ok_codes=ok_codes,
                )  # fmt: skip
            except CommandError as exc:
                dropped = bool(DROPPED.search(exc.reason))
                if delay is None or not dropped:
                    after = f" ({tries} tries)" if dropped else ""
                    raise OperationError(f"{exc}{after}{self.failure_note}") from None
                time.sleep(delay * random.uniform(0.5, 1.5))
        raise AssertionError("the last try raises")


def ssh_extra_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Return the extra ssh options of $AIRFLOW_NODE_SSH_OPTS, split like a shell would. Raise UserError
    naming the variable when it does not split (an unclosed quote)."""
    try:
        return tuple(shlex.split((environ if environ is not None else os.environ).get(SSH_OPTS_ENV, "")))
    except ValueError as exc:
        raise UserError(f"${SSH_OPTS_ENV}: cannot split it like a shell would ({exc})") from None
