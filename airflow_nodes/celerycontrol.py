"""Celery's remote control of the workers (which queues they consume; stop or resume consuming), run
through a node's Airflow venv as the airflow user; and the flag of a drained worker."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import execute, statefile
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import UserError

CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"  # the app every Airflow line's provider has
EX_UNAVAILABLE = 69  # celery's exit code when no worker answered
# what a worker answers goes back on a command line: a name that could read as an option is dropped
CELERY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,199}\Z")


def celery_control(ctx: NodeContext, venv: Path, *args: str) -> object:
    """Celery's own remote-control CLI from the node's Airflow venv (the provider of every lock has the
    app; `airflow celery remove-all-queues` is missing from the older ones), as the airflow user.
    Return its JSON reply, or None when no worker answered."""
    command, arguments = args[:2], args[2:]  # e.g. ("inspect", "active_queues"), then its own arguments
    argv = [venv / "bin" / "celery", "--app", CELERY_APP, *command, "--json", "--timeout", "5", *arguments]
    env = {**ctx.environment, "PATH": f"{venv}/bin:/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    result = execute.run(argv, what=f"celery {' '.join(args)}", user=ctx.cluster.airflow_user, env=env,
                         clean_env=True, timeout=120, ok_codes=(0, EX_UNAVAILABLE))  # fmt: skip
    if result.returncode != 0:
        return None
    for line in reversed(result.stdout.splitlines()):  # the reply is the last line; Airflow may log before it
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def consumed_queues(ctx: NodeContext, venv: Path, workers: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The queues each worker that answers (all, or the named ones) consumes now."""
    where = ("--destination", ",".join(workers)) if workers else ()
    return queues_of(celery_control(ctx, venv, "inspect", "active_queues", *where))


def queues_of(replies: object) -> dict[str, list[str]]:
    """Given `celery inspect active_queues --json` output, return each worker's queue names."""

    def name(value: object) -> str | None:
        return value if isinstance(value, str) and CELERY_NAME.match(value) else None

    return {
        worker: sorted(q["name"] for q in queues if isinstance(q, dict) and name(q.get("name")))
        for worker, queues in (replies if isinstance(replies, dict) else {}).items()
        if name(worker) and isinstance(queues, list)
    }


def by_queue(consumed: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Given each worker's queues, return (queue, its workers comma-separated): one command per queue."""
    queues = sorted({q for names in consumed.values() for q in names})
    return [(q, ",".join(sorted(w for w, names in consumed.items() if q in names))) for q in queues]


def set_consuming(ctx: NodeContext, venv: Path, consumed: dict[str, list[str]], on: bool) -> list[str]:
    """Make workers stop taking tasks from those queues (running tasks go on), or take them again.
    Return the "queue (workers)" that no worker confirmed."""
    command = "add_consumer" if on else "cancel_consumer"
    return [
        f"{queue} ({workers})"
        for queue, workers in by_queue(consumed)
        if celery_control(ctx, venv, "control", command, "--destination", workers, queue) is None
    ]


def stop_consuming(
    ctx: NodeContext, venv: Path, workers: tuple[str, ...] = ()
) -> tuple[dict[str, list[str]], list[str]]:
    """Make the workers that answer (all, or the named ones) stop taking tasks from every queue they consume.
    Return (what each consumed, the "queue (workers)" that no worker confirmed)."""
    consumed = consumed_queues(ctx, venv, workers)
    return consumed, set_consuming(ctx, venv, consumed, on=False)


# -- a drained worker -------------------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """When a process started (clock ticks since boot, /proc/PID/stat), or None when it does not run: with
    its pid it names one process, which a restart (a new process, maybe with the same pid) does not match."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces and ")"
    return fields[19] if len(fields) > 19 and fields[19].isdigit() else None


def worker_process(ctx: NodeContext, venv: Path, worker: str) -> tuple[int, str] | None:
    """(pid, start) of a worker's main process on this host, from its own answer, or None when it did not
    answer (or names no process running here)."""
    replies = celery_control(ctx, venv, "inspect", "stats", "--destination", worker)
    stats = replies.get(worker) if isinstance(replies, dict) else None
    pid = stats.get("pid") if isinstance(stats, dict) else None
    if not isinstance(pid, int) or not 1 < pid < 1 << 22:
        return None
    started = process_start(pid)
    return (pid, started) if started else None


@dataclass(frozen=True)
class DrainFlag:
    """`airflow-node drain` was here: which worker process stopped consuming which queues. Root's, in /run."""

    pid: int
    started: str
    queues: tuple[str, ...]

    @property
    def current(self) -> bool:
        """Whether the drained process still runs: a restarted worker consumes its queues again."""
        return process_start(self.pid) == self.started

    def write(self, path: Path) -> None:
        data = {"pid": self.pid, "started": self.started, "queues": list(self.queues)}
        write_atomically(path, (json.dumps(data) + "\n").encode(), 0o644)


def read_drain_flag(path: Path) -> DrainFlag | None:
    """The drain flag, or None when there is none or it is not one we wrote."""
    try:
        data = statefile.load_json(path, limit=64 << 10)
    except UserError:
        return None
    if not isinstance(data, dict):
        return None
    pid, started, queues = data.get("pid"), data.get("started"), data.get("queues")
    if not (isinstance(pid, int) and isinstance(started, str) and started.isdigit() and isinstance(queues, list)):
        return None
    if len(queues) > 100 or not all(isinstance(q, str) and CELERY_NAME.match(q) for q in queues):
        return None
    return DrainFlag(pid, started, tuple(queues))
