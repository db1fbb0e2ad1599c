"""The one gateway for running commands: argv in, a finished command or an OperationError out.

Every subprocess airflow-node starts goes through `run` (borgmatic's execute.py is the model): one
place decides the environment, dropping to another user, timeouts, and how a failure is worded
(the command and the tail of its output, never a traceback). No other module imports subprocess.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from airflow_nodes.errors import OperationError, UserError


class CommandError(OperationError):
    """A command could not run, timed out, or exited with a code the caller did not accept."""

    def __init__(self, what: str, reason: str, returncode: int | None = None):
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
        self.returncode = returncode


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str | bytes
    stderr: str | bytes


def _user_switch(user: str | None) -> tuple[dict, dict[str, str]]:
    """Return (subprocess keyword arguments, environment) that run a command as `user`."""
    if not user:
        return {}, {}
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise CommandError(f"running as {user}", f"no account {user!r} on this host") from None
    kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    return kwargs, {"HOME": account.pw_dir, "USER": user, "LOGNAME": user}


# Lines that only repeat that a command failed, after the line saying why:
FOLLOW_UP_LINES = re.compile(
    r"""
      rsync\ error: | rsync:\ connection\ unexpectedly     # rsync's ending, whatever the cause
    | rsync:\ \[\w+\]\ (safe_write|safe_read|write)\ (failed|error)  # its pipe to an ssh that has died
    | fatal:\ Could\ not\ read\ from\ remote\ repository  # git's, after ssh's own line
    | Please\ make\ sure\ you\ have\ the\ correct | and\ the\ repository\ exists
    | \(Background\ on\ this\ error\ at: | \[SQL: | \[parameters:  # SQLAlchemy's statement and link
    """,
    re.VERBOSE,
)


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def failure_reason(argv: Sequence[str], returncode: int, stderr: str | bytes, stdout: str | bytes = "") -> str:
    """Return one line saying why a command failed: its last meaningful error line, or how it died."""
    if returncode < 0:
        return f"{argv[0]} was killed by signal {-returncode}"
    lines = [line.strip() for line in (_text(stderr) or _text(stdout)).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Warning: Permanently")]
    useful = [line for line in lines if not FOLLOW_UP_LINES.match(line)]
    # a Python program's own error line ("sqlalchemy.exc.ProgrammingError: ..."), else the last line
    errors = [line for line in useful if re.match(r"^[\w.]*(Error|Exception)\b[^ ]*:", line)]
    reason = (errors or useful or lines or [f"{argv[0]} failed"])[-1]
    return f"{reason} (exit {returncode})"


def run(
    argv: Sequence[str | os.PathLike],
    *,
    what: str | None = None,
    timeout: float | None = None,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    binary: bool = False,
    ok_codes: tuple[int, ...] | None = (0,),
    errors: str = "strict",
    cwd: str | os.PathLike | None = None,
    clean_env: bool = False,
) -> Completed:
    """Run argv and return what it did. `env` is added to our environment; `user` drops to that account.

    Raise CommandError (an OperationError) naming `what` (default: the command) when the program is
    missing, does not finish within `timeout` seconds, or exits with a code outside `ok_codes`
    (None accepts every exit code). With clean_env, the command gets none of our environment (a daemon
    we start must not inherit a join token or a password that came to us that way).
    """
    argv = tuple(str(arg) for arg in argv)
    what = what or " ".join(argv)
    switch, user_env = _user_switch(user)
    inherited = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"} if clean_env else os.environ
    environment = {**inherited, **(env or {}), **user_env}
    if user:
        # no terminal of ours for the other account: its code could push keystrokes into it (TIOCSTI)
        switch.update(start_new_session=True, stdin=None if input is not None else subprocess.DEVNULL)
        cwd = cwd or "/"  # the other account may not enter ours (root's home, say)
    text = {} if binary else {"text": True, "errors": errors}
    try:
        result = subprocess.run(
            argv, capture_output=True, env=environment, timeout=timeout, input=input, cwd=cwd, check=False,
            **text, **switch,
        )  # fmt: skip
    except FileNotFoundError:
        raise CommandError(what, f"{argv[0]} is not installed") from None
    except PermissionError:
        raise CommandError(what, f"{argv[0]} cannot be executed") from None
    except subprocess.TimeoutExpired:
        raise CommandError(what, f"no answer within {timeout:g} s") from None
    if ok_codes is not None and result.returncode not in ok_codes:
        reason = failure_reason(argv, result.returncode, result.stderr, result.stdout)
        raise CommandError(what, reason, result.returncode)
    return Completed(argv, result.returncode, result.stdout, result.stderr)


def run_streaming(
    argv: Sequence[str | os.PathLike], what: str, on_line: Callable[[str], None], env: Mapping[str, str] | None = None
) -> None:
    """Run a long command, handing each line of its output to on_line as it comes. Raise CommandError."""
    argv = tuple(str(arg) for arg in argv)
    try:
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
    except FileNotFoundError:
        raise CommandError(what, f"{argv[0]} is not installed") from None
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-5:]
        if line:
            on_line(line)
    if process.wait() != 0:
        raise CommandError(what, f"{tail[-1] if tail else 'no output'} (exit {process.returncode})", process.returncode)


def run_checked(argv: Sequence[str], input: str | None = None, user: str | None = None) -> None:
    """Run a system command for apply (useradd, systemctl, supervisorctl; psql as postgres with SQL on
    stdin: as another account, with none of our environment, which may hold a password). Raise
    CommandError on failure."""
    run(argv, timeout=600, input=input, user=user, clean_env=user is not None)


class NoSuchAccount(UserError):
    """as_user: the account does not exist (yet)."""


def as_user(user: str | None, action, *args):
    """Run action(*args) as `user` in a child process (root edits the airflow user's files only as that
    user: a link that user planted then leads nowhere root could not otherwise go). Return its result,
    which must be JSON; the child's UserError or OperationError is raised here."""
    if not user:
        return action(*args)
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise NoSuchAccount(f"{user}: no such user here (run `airflow-node init` first)") from None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            try:
                outcome = {"ok": True, "value": action(*args)}
            except (UserError, OperationError) as exc:
                outcome = {"ok": False, "user_error": isinstance(exc, UserError), "message": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, never run on as the caller
                outcome = {"ok": False, "user_error": False, "message": f"{exc.__class__.__name__}: {exc}"}
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read(1 << 20)
    os.waitpid(pid, 0)
    try:
        outcome = json.loads(data)
    except ValueError:
        outcome = {"ok": False, "user_error": False, "message": f"editing as {user} failed"}
    if outcome["ok"]:
        return outcome["value"]
    raise (UserError if outcome["user_error"] else OperationError)(outcome["message"])


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """Return the preexec function of start_child: runs in the child between fork and exec."""

    def preexec() -> None:
        os.setpgid(0, 0)
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM)) != 0:
            raise OSError("prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would signal us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def start_child(argv: Sequence[str | os.PathLike], what: str | None = None) -> subprocess.Popen:
    """Given a long-running command, start it and return its Popen (the caller waits for it).

    It runs in its own process group (one killpg stops it and whatever it started), and the kernel sends
    it SIGTERM when the process that started it dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG): no
    orphan keeps running after its wrapper. It gets our environment, stdout and stderr (the init
    system's log) and no stdin. Raise CommandError naming `what` when it cannot start.
    """
    import ctypes

    argv = tuple(str(arg) for arg in argv)
    what = what or " ".join(argv)
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: the child between fork and exec loads nothing
    except AttributeError:
        raise CommandError(what, "needs Linux (prctl) to tie the command's life to ours") from None
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with(os.getpid(), prctl))
    except FileNotFoundError:
        raise CommandError(what, f"{argv[0]} is not installed") from None
    except PermissionError:
        raise CommandError(what, f"{argv[0]} cannot be executed") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise CommandError(what, f"cannot start {argv[0]}: {exc}") from None
