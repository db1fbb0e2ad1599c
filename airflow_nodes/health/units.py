"""Local units probe: the role's systemd units or supervisor programs are active.

Uses the init system's own `status` command and parser (airflow_nodes.initsystems). Under --root the
systemd state of the real host says nothing about the rendered node, so the probe runs there only where
the init system says it can ask (supervisor: its supervisord.conf path is explicit).
"""

from __future__ import annotations

import time

from airflow_nodes import execute
from airflow_nodes.execute import CommandError
from airflow_nodes.health.model import MANAGED_HERE, Probe, ProbeInput, Result, Status, worst
from airflow_nodes.initsystems import init_system as init_system_named
from airflow_nodes.localservers import server_services

NAME = "units"
_RUNNING = ("active", "RUNNING")
_STARTING = ("activating", "reloading", "STARTING")


def classify(name: str, state: str, oneshot: bool) -> Status:
    """Given a unit/program and its state text, return its status (a finished one-shot is fine)."""
    word = state.split(None, 1)[0] if state else ""
    if word in _RUNNING:
        return Status.OK
    if oneshot and word in ("inactive", "EXITED"):
        return Status.OK
    if word in _STARTING:
        return Status.WARNING
    return Status.CRITICAL


def applies(probe_input: ProbeInput) -> bool:
    node = probe_input.ctx.node
    return probe_input.target.real_system or init_system_named(node.init_system).observable_under_root(node)


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result summarizing the state of its role's units or programs, and one for
    the Redis and PostgreSQL init set up here, if any."""
    return [_role_units(probe_input), *_servers(probe_input)]


def _role_units(probe_input: ProbeInput) -> Result:
    ctx = probe_input.ctx
    init_system = init_system_named(ctx.node.init_system)
    target = f"{ctx.node.init_system} {ctx.role_name}"
    started = time.monotonic()
    output = []
    for argv in init_system.control_argv(ctx, "status", installed=init_system.installed(ctx.node, probe_input.target)):
        try:
            completed = execute.run(argv, timeout=probe_input.remaining(), ok_codes=None)
        except CommandError as exc:
            return Result(Status.UNKNOWN, NAME, target, None, f"{argv[0]}: {exc.reason}")
        output.append(completed.stdout)
        if not completed.stdout.strip():
            reason = (completed.stderr or "no output").strip().splitlines()[-1]
            return Result(Status.UNKNOWN, NAME, target, time.monotonic() - started, f"{argv[0]}: {reason}")
    latency = time.monotonic() - started
    rows = init_system.parse_status("".join(output))
    if not rows:
        return Result(Status.UNKNOWN, NAME, target, latency, "the init system listed no units for the role")
    return _graded(target, latency, rows, {d.name for d in ctx.daemons if d.oneshot})


def _graded(
    target: str, latency: float | None, rows: list[tuple[str, str]], oneshots: set[str] = frozenset()
) -> Result:
    """One Result for units or programs and their states: how many are active, and what the others are."""
    graded = [(name, state, classify(name, state, any(o in name for o in oneshots))) for name, state in rows]
    bad = [f"{name} {state}" for name, state, status in graded if status != Status.OK]
    status = worst(status for _, _, status in graded)
    detail = f"{len(rows) - len(bad)}/{len(rows)} active" + (f"; {'; '.join(bad)}" if bad else "")
    return Result(status, NAME, target, latency, detail)


def _servers(probe_input: ProbeInput) -> list[Result]:
    """The redis-server and PostgreSQL services init set up on this host (their units are systemd's)."""
    services = server_services(probe_input.ctx.node)
    if not services or not probe_input.target.real_system:
        return []
    started = time.monotonic()
    systemd = init_system_named("systemd")
    argv = ("systemctl", "show", "--property=Id,ActiveState,SubState,NRestarts", *services)
    try:
        completed = execute.run(argv, timeout=probe_input.remaining(), ok_codes=None)
    except CommandError as exc:
        return [Result(Status.UNKNOWN, NAME, "local servers", None, f"systemctl: {exc.reason}")]
    rows = systemd.parse_status(completed.stdout) or [(s, "unknown") for s in services]
    return [_graded(f"local servers ({MANAGED_HERE})", time.monotonic() - started, rows)]


PROBE = Probe(NAME, check, applies=applies, description="the role's units/programs are active")
