"""Packages probe: this node runs the same Airflow package set as the master recorded in the cluster file.

Two nodes installed a week apart get different dependency sets unless both come from the same lock;
the cluster file records a hash of the master's set (`airflow-node init` on the master). A node on
another Python line installs that line's lock: equal where it matters (Airflow, providers, Celery).
"""

from __future__ import annotations

import time

from airflow_nodes.detect import interpreter_of, package_set_hash, probe_interpreter
from airflow_nodes.errors import UserError
from airflow_nodes.health.model import Probe, ProbeInput, Result, Status
from airflow_nodes.install import compare_package_sets

NAME = "packages"


def check(probe_input: ProbeInput) -> list[Result]:
    """Given a node, return one Result comparing its installed package set with the master's."""
    ctx = probe_input.ctx
    try:
        target = probe_input.target  # under --root, the node's Airflow is the one in the tree, not ours
        python = interpreter_of(target.path(ctx.node.airflow_bin), target.node_root)
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
    compatible, how = compare_package_sets(local, expected)
    status = Status.OK if compatible else Status.WARNING
    return [Result(status, NAME, str(python), latency, f"Airflow {version}, {how}")]


PROBE = Probe(NAME, check, description="installed package set equals the master's, or is its Python's lock")
