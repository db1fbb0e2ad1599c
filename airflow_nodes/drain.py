"""`airflow-node drain` and `resume` on a node that runs tasks: maintenance without failed tasks.

drain: the node's Celery worker stops consuming every queue it consumes (Celery's remote control, as the
upgrade's drain does for all workers), so no new task goes there while its running tasks go on (and the
ones it had already taken, Celery's prefetch); then it waits for them to finish, within a timeout, and
says how many still run. resume: the worker consumes again what the drain stopped (else its -q list, or
Airflow's default queue).

A drain lasts until `resume` or until the worker process restarts (a restart consumes its queues again).
The flag the fleet view reads names that process (celerycontrol.DrainFlag): it counts only while that
process runs, however the worker restarted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes.celerycontrol import (
    DrainFlag,
    celery_control,
    read_drain_flag,
    set_consuming,
    stop_consuming,
    worker_process,
)
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.fleet import publish_record
from airflow_nodes.install import venv_of
from airflow_nodes.node import DRAINED_FLAG
from airflow_nodes.polling import wait_until
from airflow_nodes.target import Target
from airflow_nodes.versions import DEFAULT_QUEUE

# seconds between looks at the worker's tasks; each look is two runs of Celery's CLI, a few seconds each
ACTIVE_POLL = 2.0


@dataclass(frozen=True)
class DrainOutcome:
    worker: str  # celery@NAME
    queues: tuple[str, ...]  # the queues it no longer consumes
    running: tuple[str, ...] | None  # the Celery ids of the tasks it still has; None: it never answered
    waited: float  # seconds
    timeout: float


def _worker(target: Target, command: str) -> tuple[NodeContext, Path]:
    ctx = load_context(target)
    if not ctx.role.runs_tasks:
        raise UserError(f"{command}: this node runs no Celery worker (a {ctx.node.role})")
    if not target.real_system:
        raise UserError(f"{command}: only on the node itself (--root renders files; a worker runs on a host)")
    venv, _ = venv_of(ctx.node, target)
    return ctx, venv


def tasks_of(ctx: NodeContext, venv: Path, worker: str) -> tuple[str, ...] | None:
    """The Celery ids of the tasks a worker has taken from a queue to run next (Celery's prefetch: they run
    although it consumes no more) or runs now, asked in that order (a task moves from the one to the other),
    or None when it did not answer."""
    found = []
    for kind in ("reserved", "active"):
        replies = celery_control(ctx, venv, "inspect", kind, "--destination", worker)
        if not isinstance(replies, dict) or not isinstance(replies.get(worker), list):
            return None
        found += [str(task.get("id", "?"))[:64] if isinstance(task, dict) else "?" for task in replies[worker][:1000]]
    return tuple(found)


def drain(target: Target, timeout: float) -> DrainOutcome:
    """Stop this node's worker taking tasks, flag it drained, and wait up to `timeout` seconds until it has
    no task (two looks in a row). Raise OperationError when the worker does not answer or confirm."""
    ctx, venv = _worker(target, "drain")
    worker = ctx.node.celery_name
    process = worker_process(ctx, venv, worker)
    if process is None:
        raise OperationError(f"drain: {worker} did not answer; is its worker running? (`airflow-node status`)")
    before = read_drain_flag(target.path(DRAINED_FLAG))
    consumed, unconfirmed = stop_consuming(ctx, venv, (worker,))
    queues = tuple(consumed.get(worker, ()))
    if not queues and before and before.current:  # drained already: what resume gives back stays recorded
        queues = before.queues
    # written even when a queue was not confirmed: resume then knows what to give back
    DrainFlag(*process, queues).write(target.path(DRAINED_FLAG))
    if unconfirmed:
        raise OperationError(f"drain: {worker} did not confirm it stopped consuming {', '.join(unconfirmed)}; "
                             "`airflow-node resume` gives back what it did stop")  # fmt: skip
    publish_record(ctx, target, {})  # the fleet view shows it drained now, not at the next health run
    started, looks = time.monotonic(), []

    def idle_twice() -> bool:
        looks.append(tasks_of(ctx, venv, worker))
        return looks[-2:] == [(), ()]

    wait_until(idle_twice, timeout, ACTIVE_POLL)
    answered = [look for look in looks if look is not None]
    return DrainOutcome(worker, queues, answered[-1] if answered else None, time.monotonic() - started, timeout)


def resume(target: Target) -> tuple[str, tuple[str, ...]]:
    """This node's worker consumes again what the drain stopped; the flag goes. Return (worker, queues).
    Raise UserError when the node does not run the cluster's Airflow (a follow that failed left it taking
    no tasks on purpose), OperationError when the worker does not confirm."""
    ctx, venv = _worker(target, "resume")
    if ctx.node.version.series != ctx.cluster.version.series:
        raise UserError(f"resume: this worker runs Airflow {ctx.node.airflow_version}, the cluster "
                        f"{ctx.cluster.airflow_version}: `airflow-node sync` moves it first")  # fmt: skip
    worker = ctx.node.celery_name
    flag = read_drain_flag(target.path(DRAINED_FLAG))
    queues = (flag.queues if flag else ()) or ctx.node.queue_list or (DEFAULT_QUEUE,)
    if unconfirmed := set_consuming(ctx, venv, {worker: list(queues)}, on=True):
        raise OperationError(f"resume: {worker} did not confirm it consumes {', '.join(unconfirmed)} again")
    target.path(DRAINED_FLAG).unlink(missing_ok=True)
    publish_record(ctx, target, {})
    return worker, queues
