"""Jinja2 templates for the files airflow-node writes (installed as airflow_nodes.unit_templates)."""
