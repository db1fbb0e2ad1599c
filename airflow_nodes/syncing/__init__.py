"""How DAGs travel: the engine under `airflow-node sync` (sync.py) and the follower (follow.py).

The contract (as kubernetes/git-sync's): a complete new tree is built beside the published one, then
{airflow_home}/dags (Airflow's dags_folder, a symlink) is flipped to it with one rename. See
releases.py for the layout and the flip, source.py for the DAG source interface (one module per
kind), offer.py for the master's offer to its workers. The commands that drive it live one layer up.
"""
