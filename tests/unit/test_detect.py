"""Finding the installed Airflow through the target interpreter's package metadata (no Airflow import)."""

from __future__ import annotations

import pytest

from airflow_nodes.detect import detect_airflow
from airflow_nodes.errors import UserError


def test_airflow_3_is_recognised_by_apache_airflow_core(make_venv):
    venv = make_venv(**{"apache-airflow-core": "3.3.2", "apache-airflow": "3.3.2"})
    found = detect_airflow(str(venv), None, None)
    assert str(found.version) == "3.3.2" and found.version.major == 3
    assert found.airflow_bin == f"{venv}/bin/airflow"


def test_airflow_2_is_recognised_by_apache_airflow(make_venv):
    venv = make_venv(**{"apache-airflow": "2.11.2"})
    found = detect_airflow(None, f"{venv}/bin/airflow", None)  # interpreter from the script's shebang
    assert str(found.version) == "2.11.2" and found.version.line.web_command == "webserver"


def test_a_venv_without_airflow_is_a_clear_error(make_venv):
    venv = make_venv()
    with pytest.raises(UserError, match="--venv: Airflow is not installed"):
        detect_airflow(str(venv), None, None)


def test_an_unsupported_installed_version_is_refused(make_venv):
    venv = make_venv(**{"apache-airflow": "2.6.3"})
    with pytest.raises(UserError, match=r"Airflow 2\.6 is not supported"):
        detect_airflow(str(venv), None, None)


def test_the_override_needs_no_airflow_at_all(tmp_path):
    found = detect_airflow(str(tmp_path / "no-venv"), None, "2.9.3")
    assert str(found.version) == "2.9.3"


def test_master_records_the_installed_package_set_and_a_changed_set_changes_it(make_venv, tmp_path):
    from airflow_nodes.init import InitRequest, plan_init
    from airflow_nodes.target import Target

    request = dict(role="master", master_host="m", broker_url="redis://m:6379/0",
                   db_url="postgresql://a@m/db", node_name="m", init_system="systemd",
                   airflow_node_bin="/usr/local/bin/airflow-node")  # fmt: skip
    one = make_venv(root=tmp_path, **{"apache-airflow-core": "3.3.2", "celery": "5.6.3"})
    two = make_venv(root=tmp_path, **{"apache-airflow-core": "3.3.2", "celery": "5.7.0"})
    first = plan_init(InitRequest(venv=str(one), **request), Target.at(tmp_path)).cluster.airflow_packages
    second = plan_init(InitRequest(venv=str(two), **request), Target.at(tmp_path)).cluster.airflow_packages
    assert len(first) == 16 and len(second) == 16 and first != second
