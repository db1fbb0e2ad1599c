"""`airflow-node sync`: bring DAGs and the cluster config in line with the master.

The contract (as kubernetes/git-sync's): a complete new tree is built beside the published one, then
{airflow_home}/dags (Airflow's dags_folder, a symlink) is flipped to it with one rename. See
releases.py for the layout, source.py for the DAG source interface, config_sync.py for the config.

Entry points: `run.sync` (with `run.SyncRequest` and `checks.Guards`) and `run.format_status`. This
package module imports nothing, so `spec` (used by the cluster file's checks) stays cheap.
"""
