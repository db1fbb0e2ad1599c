"""`airflow-node sync`: bring DAGs and the cluster config in line with the master.

The contract (as kubernetes/git-sync's): a complete new tree is built beside the published one, then
{airflow_home}/dags (Airflow's dags_folder, a symlink) is flipped to it with one rename. See
releases.py for the layout, source.py for the DAG source interface, config_sync.py for the config.
"""

from airflow_nodes.syncing.checks import Guards
from airflow_nodes.syncing.run import SyncRequest, SyncResult, format_status, sync

__all__ = ["Guards", "SyncRequest", "SyncResult", "format_status", "sync"]
