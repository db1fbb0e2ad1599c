"""`airflow-node health`: probes of a node and its cluster, run concurrently, each with its own deadline.

Layout (one small module per probe behind one interface, see `model.Probe`):
  model.py         Status, Result, Probe, ProbeInput: the values that travel
  runner.py        which probes apply to this node, running them in threads under a hard deadline
  formatting.py    table, JSON and node_exporter textfile output
  netio.py         stdlib HTTP and error wording shared by the network probes
  broker.py, database.py, flower.py, webserver.py, scheduler.py, execution_api.py,
  units.py, consistency.py, clock.py   the probes

Nothing here imports redis-py, psycopg or jinja2 at module level: `airflow-node health` must start fast.
"""
