"""Managed by airflow-node: the address this node gives the others ([core] hostname_callable).

Airflow records it as a task's hostname, and the API server fetches the task's log from it. Each
node's own address comes from its environment (AIRFLOW_NODE_ADVERTISE_ADDRESS, set in
/etc/airflow-node/airflow.env), so airflow.cfg stays byte-identical on every node and no host name
needs to resolve anywhere. Without it: the FQDN, as Airflow does by default.
"""

import os
import socket


def advertised_address() -> str:
    return os.environ.get("AIRFLOW_NODE_ADVERTISE_ADDRESS") or socket.getfqdn()
