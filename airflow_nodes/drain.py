"""`airflow-node drain` and `resume` on a node that runs tasks: maintenance without failed tasks.

drain: the node's Celery worker stops consuming every queue it consumes (Celery's remote control, as the
upgrade's drain does for all workers), so no new task goes there while its running tasks go on (and the
ones it had already taken, Celery's prefetch); then it waits for them to finish, within a timeout, and
says how many still run. resume: the worker consumes
its queues again (its -q list, or Airflow's default queue).

A drain lasts until `resume` or until the worker restarts (a restart consumes its queues again). The flag
that the fleet view shows lives in /run (a reboot ends a drain, and the flag with it); `start` and
`restart` clear it too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.celerycontrol import celery_control, consumed_queues, set_consuming
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.fleet import publish_record
from airflow_nodes.install import venv_of
from airflow_nodes.node import DRAINED_FLAG
from airflow_nodes.polling import wait_until
from airflow_nodes.target import Target
from airflow_nodes.versions import DEFAULT_QUEUE

ACTIVE_POLL = 2.0  # seconds between looks at the worker's running tasks


@dataclass(frozen=True)
class DrainOutcome:
    worker: str  # celery@NAME
    queues: tuple[str, ...]  # the queues it stopped consuming
    running: tuple[str, ...]  # the Celery ids of the tasks still running when the wait ended: none when drained
    waited: float  # seconds
    timeout: float


def _worker(target: Target, command: str) -> tuple[NodeContext, object]:
    ctx = load_context(target)
    if not ctx.role.runs_tasks:
        raise UserError(f"{command}: this node runs no Celery worker (a {ctx.node.role})")
    if not target.real_system:
        raise UserError(f"{command}: only on the node itself (--root renders files; a worker runs on a host)")
    venv, _ = venv_of(ctx.node, target)
    return ctx, venv


def running_tasks(ctx: NodeContext, venv, worker: str) -> tuple[str, ...] | None:
    """The Celery ids of the tasks a worker runs now or has taken from a queue to run next (Celery's
    prefetch: they run although it consumes no more), or None when it did not answer."""
    found = []
    for kind in ("active", "reserved"):
        replies = celery_control(ctx, venv, "inspect", kind, "--destination", worker)
        if not isinstance(replies, dict) or not isinstance(replies.get(worker), list):
            return None
        found += [str(task.get("id", "?"))[:64] if isinstance(task, dict) else "?" for task in replies[worker][:1000]]
    return tuple(found)


def drain(target: Target, timeout: float) -> DrainOutcome:
    """Stop this node's worker taking tasks, flag it drained, and wait up to `timeout` seconds for its
    running tasks. Raise OperationError when the worker does not answer or does not confirm."""
    ctx, venv = _worker(target, "drain")
    worker = ctx.node.celery_name
    consumed = consumed_queues(ctx, venv, (worker,))
    if worker not in consumed:
        raise OperationError(f"drain: {worker} did not answer; is its worker running? (`airflow-node status`)")
    queues = tuple(consumed[worker])
    if unconfirmed := set_consuming(ctx, venv, {worker: list(queues)}, on=False):
        raise OperationError(f"drain: {worker} did not confirm it stopped consuming {', '.join(unconfirmed)}")
    write_atomically(target.path(DRAINED_FLAG), f"{','.join(queues)}\n".encode(), 0o644)
    publish_record(ctx, target, {})  # the fleet view shows it drained now, not at the next health run
    started, last = time.monotonic(), [()]

    def idle() -> bool:
        tasks = running_tasks(ctx, venv, worker)
        last[0] = tasks if tasks is not None else last[0]
        return tasks == ()

    wait_until(idle, timeout, ACTIVE_POLL)
    return DrainOutcome(worker, queues, last[0], time.monotonic() - started, timeout)


def resume(target: Target) -> tuple[str, tuple[str, ...]]:
    """This node's worker consumes its queues again; the drained flag goes. Return (worker, queues).
    Raise OperationError when the worker does not confirm."""
    ctx, venv = _worker(target, "resume")
    worker = ctx.node.celery_name
    queues = ctx.node.queue_list or (DEFAULT_QUEUE,)
    if unconfirmed := set_consuming(ctx, venv, {worker: list(queues)}, on=True):
        raise OperationError(f"resume: {worker} did not confirm it consumes {', '.join(unconfirmed)} again")
    target.path(DRAINED_FLAG).unlink(missing_ok=True)
    publish_record(ctx, target, {})
    return worker, queues
