"""airflow-nodes: turn plain Linux hosts into a multi-node Apache Airflow CeleryExecutor cluster."""
