"""Reading this node's settings and cluster file for the probes.

Same files and errors as `airflow_nodes.control.load_context`, without importing the renderers
(jinja2, the plan machinery): that import alone would take a third of the health run's budget.
"""

from __future__ import annotations

from pathlib import Path

from airflow_nodes.cluster import read_cluster
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import UserError
from airflow_nodes.node import CLUSTER_FILE, NODE_FILE, STATE_DIR, parse_node

SYNC_STATE_FILE = f"{STATE_DIR}/sync-state.json"


def under_root(root: Path, path: str) -> Path:
    """Given --root and an absolute path on the node, return the path under root."""
    return root / path.lstrip("/")


def load_node(root: Path) -> NodeContext:
    """Read node.toml and cluster.toml under root. Raise UserError if init never ran there."""
    node_path = under_root(root, NODE_FILE)
    try:
        node = parse_node(node_path.read_text(), str(node_path))
    except FileNotFoundError:
        raise UserError(f"{node_path}: not found; run `airflow-node init` first") from None
    return NodeContext(read_cluster(under_root(root, CLUSTER_FILE)), node)
