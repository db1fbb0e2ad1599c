"""A long run as a list of steps, each with its undo (certbot's reverter, in small).

The dry run prints the descriptions of the very steps the run carries out, so the two cannot drift apart;
when a step fails (or Ctrl-C comes), the steps done are undone, newest first, and the error says what was
undone and what could not be. The steps share what they learn (the path of a backup, say) through one
mutable state object the run passes to every `do` and `undo`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from airflow_nodes.errors import OperationError, UserError

State = TypeVar("State")


@dataclass(frozen=True)
class Step(Generic[State]):
    """One step of a run: `do` changes the system, `undo` (if any) puts back what `do` changed. Both are
    given the run's state, which `do` may write for the steps and undos after it."""

    name: str  # short: the progress lines, the timings and the failure message name the step by it
    description: str  # the line the dry run prints: what it does, and how it is undone
    do: Callable[[State], None]
    undo: Callable[[State], None] | None = None
    # its `do` can fail halfway (a half-migrated DB, some daemons started): its undo runs then too, so it
    # must be safe on a change half made, or not made at all
    undo_if_failed: bool = False


class StepFailed(OperationError):
    """A step failed (or was interrupted), and the steps done before it were undone as far as they could
    be: `undone` in the order they ran, `not_undone` with what each undo raised."""

    def __init__(self, step: Step, cause: BaseException, undone: list[Step],
                 not_undone: list[tuple[Step, BaseException]]) -> None:  # fmt: skip
        self.step, self.cause, self.undone, self.not_undone = step, cause, undone, not_undone
        text = f"{step.name} failed ({reason_of(cause)}); undone: {', '.join(s.name for s in undone) or 'nothing'}"
        if not_undone:
            text += "; not undone: " + "; ".join(f"{s.name} ({reason_of(exc)})" for s, exc in not_undone)
        super().__init__(text)


def reason_of(exc: BaseException) -> str:
    """Given what a step raised, return it as a clause of a one-line message."""
    if isinstance(exc, (OperationError, UserError)):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted: KeyboardInterrupt"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def run_steps(steps: Sequence[Step[State]], state: State, progress: Callable[[str], None]) -> list[tuple[str, float]]:
    """Run the steps in order, each given the state; return each one's name and seconds taken.

    When a step fails (any BaseException, Ctrl-C included), run the undos of exactly the steps that
    completed, newest first (preceded by the failed step's own when it is `undo_if_failed`); an undo that
    fails is reported and the others still run. Then raise StepFailed, saying what was undone and what
    could not be; when there was nothing to undo, re-raise the failure as it came.
    """
    timings: list[tuple[str, float]] = []
    for index, step in enumerate(steps):
        started = time.monotonic()
        try:
            step.do(state)
        except BaseException as exc:
            done = [*steps[:index], *([step] if step.undo_if_failed else [])]
            to_undo = [s for s in reversed(done) if s.undo is not None]
            if not to_undo:
                raise
            progress(f"  FAILED: {step.name}: {reason_of(exc)}; undoing: {', '.join(s.name for s in to_undo)}")
            undone, not_undone = undo_steps(to_undo, state, progress)
            raise StepFailed(step, exc, undone, not_undone) from exc
        timings.append((step.name, time.monotonic() - started))
        progress(f"  done: {step.name} {timings[-1][1]:.1f}s")
    return timings


def undo_steps(steps: Sequence[Step[State]], state: State,
               progress: Callable[[str], None]) -> tuple[list[Step], list[tuple[Step, BaseException]]]:  # fmt: skip
    """Run the undos of the steps in the order given; return the steps undone and those whose undo
    failed, with why. A second Ctrl-C stops the undoing (after saying what is left as it is)."""
    undone: list[Step] = []
    not_undone: list[tuple[Step, BaseException]] = []
    for position, step in enumerate(steps):
        if step.undo is None:
            continue
        try:
            step.undo(state)
        except Exception as exc:
            progress(f"  could not undo {step.name}: {reason_of(exc)}")
            not_undone.append((step, exc))
            continue
        except BaseException:
            progress(f"  interrupted while undoing {step.name}; left as it is: "
                     + ", ".join(s.name for s in steps[position:]))  # fmt: skip
            raise
        progress(f"  undone: {step.name}")
        undone.append(step)
    return undone, not_undone
