"""Guards before a release is published: an empty source, a mass delete, DAG files that do not parse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import defaults
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.syncing.releases import BuiltRelease, DagRelease

VALIDATE_MODES = ("off", "warn", "refuse")


@dataclass(frozen=True)
class Guards:
    max_delete_ratio: float = defaults.MAX_DELETE_RATIO
    validate: str = defaults.VALIDATE
    force: bool = False  # publish even an empty tree or a mass delete


def check_guards(built: BuiltRelease, current: DagRelease | None, guards: Guards, source: str) -> None:
    """Raise OperationError if the built tree is empty or deletes too much, unless forced."""
    if guards.force:
        return
    if built.file_count == 0:
        raise OperationError(f"{source}: the DAG source is empty; refusing to publish it (--force to publish anyway)")
    if current and current.file_count:
        share = built.deleted_files / current.file_count
        if share > guards.max_delete_ratio:
            raise OperationError(
                f"{source}: this sync would delete {built.deleted_files} of {current.file_count} DAG files "
                f"({share:.0%} > --max-delete-ratio {guards.max_delete_ratio:.0%}); refusing (--force to publish)"
            )


def invalid_python_files(built: BuiltRelease) -> list[str]:
    """Return "path:line: message" for each changed .py file of the built tree that does not compile."""
    problems = []
    for relative in built.changed:
        if not relative.endswith(".py"):
            continue
        path = Path(built.path, relative)
        try:
            compile(path.read_bytes(), relative, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:  # ValueError: null bytes
            line = getattr(exc, "lineno", None)
            problems.append(f"{relative}:{line or '?'}: {getattr(exc, 'msg', None) or exc}")
    return problems


def check_python(built: BuiltRelease, mode: str) -> list[str]:
    """Validate changed .py files per mode. Return warnings (mode warn). Raise OperationError (refuse)."""
    if mode not in VALIDATE_MODES:
        raise UserError(f"--validate: {mode!r} is not one of {', '.join(VALIDATE_MODES)}")
    if mode == "off":
        return []
    problems = invalid_python_files(built)
    if problems and mode == "refuse":
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OperationError(
            f"{problems[0]}{more}: DAG file does not compile; not published (--validate warn to publish)"
        )
    return [f"does not compile: {problem}" for problem in problems]
