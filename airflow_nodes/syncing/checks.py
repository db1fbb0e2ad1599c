"""Guards before a release is published: an empty source, a mass delete, DAG files that do not parse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from airflow_nodes import defaults
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.sanitise import one_line
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


COMPILE_MEMORY = 1 << 30  # bytes of address space the compiler child may use
COMPILE_SECONDS = 30  # per file: the kernel ends the child (SIGALRM) when one file takes longer

# Run as `python -I -S -c _COMPILER memory seconds` in the release directory; reads NUL-separated
# paths on stdin and writes one line per file, in order: empty when it compiles, else JSON [line, message].
# A hostile file (a 200,000-deep expression, a huge literal) costs the child its limits, never root's
# memory or a traceback; if the child dies, the parent knows which file it was on by the lines written.
_COMPILER = """
import json, os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
# made here, so that the handler of a MemoryError has nothing to allocate
too_big = json.dumps([None, f"needs more than {int(sys.argv[1]) >> 20} MiB to compile"])
too_deep = json.dumps([None, "nested too deeply to compile"])
for path in sys.stdin.buffer.read().split(b"\\0"):
    signal.alarm(int(sys.argv[2]))
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as source:
            compile(source.read(), os.fsdecode(path), "exec", dont_inherit=True)
        line = ""
    except MemoryError:
        line = too_big
    except RecursionError:
        line = too_deep
    except Exception as exc:  # SyntaxError; ValueError for null bytes; OSError; anything else compile raises
        line = json.dumps([getattr(exc, "lineno", None), getattr(exc, "msg", None) or str(exc) or repr(exc)])
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()
"""


def _compile_files(directory: Path, paths: list[str]) -> tuple[list[tuple[int | None, str] | None], str]:
    """Compile paths (relative to directory) in one limited child process. Return a result per file it
    finished (None: it compiles; else (line, message)) and, if it stopped before the last, why.
    Raise OperationError if the child could not run at all."""
    child = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _COMPILER, str(COMPILE_MEMORY), str(COMPILE_SECONDS)],
        input=b"\0".join(os.fsencode(path) for path in paths), capture_output=True, cwd=directory,
    )  # fmt: skip
    results = [tuple(json.loads(line)) if line else None for line in child.stdout.split(b"\n")[:-1]]
    if len(results) == len(paths):
        return results, ""
    if child.returncode == -signal.SIGALRM:
        return results, f"takes more than {COMPILE_SECONDS} s to compile"
    if child.returncode < 0:
        return results, f"the compiler died on it ({signal.strsignal(-child.returncode) or -child.returncode})"
    last = (child.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    raise OperationError(f"{sys.executable}: cannot compile DAG files: {one_line(last)}")


def invalid_python_files(built: BuiltRelease) -> list[str]:
    """Return "path:line: message" (one printable line) for each changed .py file of the built tree that
    does not compile within COMPILE_MEMORY and COMPILE_SECONDS. Raise OperationError if no compiler runs."""
    paths = [relative for relative in built.changed if relative.endswith(".py")]
    problems = []
    while paths:
        results, stopped = _compile_files(built.path, paths)
        for relative, result in zip(paths, results, strict=False):  # results stop where the child did
            if result is not None:
                line, message = result
                problems.append(one_line(f"{relative}:{line or '?'}: {message}"))
        if not stopped:
            break
        problems.append(one_line(f"{paths[len(results)]}:?: {stopped}"))
        paths = paths[len(results) + 1 :]
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
