"""Celery's remote control of the workers (which queues they consume; stop or resume consuming), run
through a node's Airflow venv as the airflow user."""

from __future__ import annotations

import json
import re
from pathlib import Path

from airflow_nodes import execute
from airflow_nodes.context import NodeContext

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
