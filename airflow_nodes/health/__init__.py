"""`airflow-node health`: probes of a node and its cluster, run concurrently, each with its own deadline.

One small module per probe behind one interface (`model.Probe`); `runner.PROBES` lists them and runs
them in threads under a hard deadline; `model` holds the values that travel, `formatting` the table,
JSON and node_exporter output, `netio` the stdlib HTTP and error wording the network probes share.

Nothing here imports redis-py, psycopg or jinja2 at module level: `airflow-node health` must start fast.
"""
