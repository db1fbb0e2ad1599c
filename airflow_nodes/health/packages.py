"""Packages probe: this node runs the same Airflow package set as the master recorded in the cluster file.

Two nodes installed a week apart get different dependency sets unless both come from the same lock;
the cluster file records a hash of the master's set (`airflow-node init` on the master). A node on
another Python line installs that line's lock: equal where it matters (Airflow, providers, Celery).
"""

from __future__ import annotations

import time
from pathlib import Path

from airflow_nodes.detect import interpreter_of, package_set_hash, probe_interpreter
from airflow_nodes.errors import UserError
from airflow_nodes.health.model import ANY_ROLE, Probe, ProbeInput, Result, Status
from airflow_nodes.install import lock_with_hash

NAME = "packages"


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result comparing its installed package set with the master's."""
    ctx = probe_input.ctx
    try:
        python = interpreter_of(Path(ctx.node.airflow_bin))
    except UserError as exc:
        return [Result(Status.CRITICAL, NAME, ctx.node.airflow_bin, None, str(exc))]
    started = time.monotonic()
    probed = probe_interpreter(python, timeout=probe_input.remaining())
    latency = time.monotonic() - started
    if probed is None or not probed[0]:
        return [Result(Status.UNKNOWN, NAME, str(python), None, "cannot read the installed Airflow packages")]
    version, packages = probed
    local = package_set_hash(packages)
    expected = ctx.cluster.airflow_packages
    if not version.startswith(ctx.cluster.airflow_version + "."):
        detail = f"Airflow {version} here, the cluster runs {ctx.cluster.airflow_version}"
        return [Result(Status.CRITICAL, NAME, str(python), latency, detail)]
    if not expected:
        detail = f"Airflow {version}, set {local}; the master recorded no set to compare with"
        return [Result(Status.OK, NAME, str(python), latency, detail)]
    if local == expected:
        return [Result(Status.OK, NAME, str(python), latency, f"Airflow {version}, same set as the master ({local})")]
    here, master = lock_with_hash(local), lock_with_hash(expected)
    if here and master and here.airflow_version == master.airflow_version:
        differing = sorted(set(here.cluster_pins.items()) ^ set(master.cluster_pins.items()))
        if not differing:  # another Python line: its lock shares Airflow, providers and Celery
            detail = (f"Airflow {version}, the lock for Python {here.python}: same Airflow, providers and Celery "
                      f"as the master's (Python {master.python})")  # fmt: skip
            return [Result(Status.OK, NAME, str(python), latency, detail)]
        name = differing[0][0]
        detail = (f"Airflow {version}, the lock for Python {here.python} has {name} "
                  f"{here.cluster_pins.get(name, 'missing')}, the master's (Python {master.python}) "
                  f"{master.cluster_pins.get(name, 'missing')}")  # fmt: skip
        return [Result(Status.WARNING, NAME, str(python), latency, detail)]
    detail = f"Airflow {version}, set {local} differs from the master's {expected} (install from the same lock)"
    return [Result(Status.WARNING, NAME, str(python), latency, detail)]


PROBE = Probe(NAME, ANY_ROLE, check, description="installed package set equals the master's")
