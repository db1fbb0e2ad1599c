"""Web/api health JSON (shapes from airflow-versions.md section (c)), served by a real local HTTP server."""

from __future__ import annotations

import http.server
import json
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest

from airflow_nodes.cli import main

# Heartbeats relative to the moment the response is served (see the web fixture).
RECENT, OLD = "__4_SECONDS_AGO__", "__10_MINUTES_AGO__"


def served(body: object) -> bytes:
    now = datetime.now(timezone.utc)
    text = json.dumps(body)
    text = text.replace(RECENT, (now - timedelta(seconds=4)).isoformat())
    return text.replace(OLD, (now - timedelta(minutes=10)).isoformat()).encode()


# Verified on 3.3.2 (fresh cluster, scheduler not yet heartbeating).
AIRFLOW_3_UNHEALTHY = {
    "metadatabase": {"status": "healthy"},
    "scheduler": {"status": "unhealthy", "latest_scheduler_heartbeat": None},
    "triggerer": {"status": None, "latest_triggerer_heartbeat": None},
    "dag_processor": {"status": None, "latest_dag_processor_heartbeat": None},
}
AIRFLOW_3_HEALTHY = {
    "metadatabase": {"status": "healthy"},
    "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": RECENT},
    "triggerer": {"status": "healthy", "latest_triggerer_heartbeat": RECENT},
    "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": RECENT},
}
# 2.x: dag_processor null unless standalone; scheduler heartbeat stale.
AIRFLOW_2_UNHEALTHY = {
    "metadatabase": {"status": "healthy"},
    "scheduler": {"status": "unhealthy", "latest_scheduler_heartbeat": OLD},
    "triggerer": {"status": "healthy", "latest_triggerer_heartbeat": RECENT},
    "dag_processor": {"status": "healthy", "latest_dag_processor_heartbeat": RECENT},  # standalone, as we set it
}
AIRFLOW_2_HEALTHY = {**AIRFLOW_2_UNHEALTHY, "scheduler": {"status": "healthy", "latest_scheduler_heartbeat": RECENT}}
DB = "postgresql://a:long-db-password@127.0.0.1:1/a"
MOVED = {"error": "Moved in Airflow 3. Please change config to check /api/v2/monitor/health"}


@pytest.fixture
def web():
    """A real HTTP server; set .routes[path] = (status, JSON-able body or bytes)."""
    routes: dict[str, tuple[int, object]] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            status, body = routes.get(self.path, (404, {"detail": "Not Found"}))
            data = body if isinstance(body, bytes) else served(body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.routes = routes
    yield server
    server.shutdown()
    server.server_close()


def health_json(tmp_path, capsys, version: str, port: int, only: str = "web", role: str = "master") -> tuple[int, dict]:
    root = tmp_path / "node"
    cluster = tmp_path / "cluster.toml"
    common = ["--root", root, "--airflow-version", version, "--node-name", "n1", "--init-system", "supervisor",
              "--airflow-node-bin", "/usr/local/bin/airflow-node"]  # fmt: skip
    if role == "master":
        args = ["init", "--role", "master", "--master-host", "127.0.0.1", "--web-port", port,
                "--broker-url", "redis://127.0.0.1:1/0", "--db-url", DB, *common]  # fmt: skip
    else:
        master = tmp_path / "master"
        args = ["init", "--role", "master", "--master-host", "127.0.0.1", "--web-port", port,
                "--broker-url", "redis://127.0.0.1:1/0", "--db-url", DB,
                *[master if a == root else a for a in common]]  # fmt: skip
        assert main([str(a) for a in args]) == 0
        cluster = master / "etc/airflow-node/cluster.toml"
        args = ["init", "--role", "worker", "--config", cluster, *common]
    assert main([str(a) for a in args]) == 0
    capsys.readouterr()
    code = main(["health", "--root", str(root), "--only", only, "--json"])
    return code, json.loads(capsys.readouterr().out)


def components(document: dict) -> dict[str, tuple[str, str]]:
    return {r["target"].rsplit(" ", 1)[-1]: (r["status"], r["detail"]) for r in document["results"]}


def test_airflow_3_unhealthy_scheduler_is_critical_although_http_200(tmp_path, capsys, web):
    web.routes["/api/v2/monitor/health"] = (200, AIRFLOW_3_UNHEALTHY)
    code, document = health_json(tmp_path, capsys, "3.3.2", web.server_address[1])
    found = components(document)
    assert code == 2
    assert found["metadatabase"] == ("OK", "healthy")
    assert found["scheduler"] == ("CRITICAL", "unhealthy, no heartbeat ever")
    assert found["triggerer"][0] == "WARNING"
    assert found["dag_processor"][0] == "WARNING"  # Airflow 3 runs a dag-processor: null means it never ran


def test_airflow_3_healthy_reports_heartbeat_ages(tmp_path, capsys, web):
    web.routes["/api/v2/monitor/health"] = (200, AIRFLOW_3_HEALTHY)
    code, document = health_json(tmp_path, capsys, "3.3.2", web.server_address[1])
    assert code == 0
    status, detail = components(document)["scheduler"]
    assert status == "OK" and detail.startswith("healthy, heartbeat ") and detail.endswith("s ago")
    age = int(detail.split("heartbeat ")[1].split("s")[0])
    assert 3 <= age <= 10


def test_airflow_2_unhealthy_scheduler_shows_its_stale_heartbeat(tmp_path, capsys, web):
    web.routes["/health"] = (200, AIRFLOW_2_UNHEALTHY)
    code, document = health_json(tmp_path, capsys, "2.11.2", web.server_address[1])
    found = components(document)
    assert code == 2
    assert found["scheduler"][0] == "CRITICAL" and re.search(r"heartbeat 6[01]\ds ago", found["scheduler"][1])
    assert found["dag_processor"][0] == "OK"


def test_airflow_2_without_its_dag_processor_warns(tmp_path, capsys, web):
    """Our 2.x masters run the DAG processor standalone: no status means it is not running."""
    never = {"status": None, "latest_dag_processor_heartbeat": None}
    web.routes["/health"] = (200, {**AIRFLOW_2_HEALTHY, "dag_processor": never})
    code, document = health_json(tmp_path, capsys, "2.11.2", web.server_address[1])
    assert code == 1 and components(document)["dag_processor"][0] == "WARNING"


def test_airflow_2_healthy(tmp_path, capsys, web):
    web.routes["/health"] = (200, AIRFLOW_2_HEALTHY)
    code, document = health_json(tmp_path, capsys, "2.11.2", web.server_address[1])
    assert code == 0, document
    assert {status for status, _ in components(document).values()} == {"OK"}


def test_tolerates_extra_fields_and_a_missing_dag_processor(tmp_path, capsys, web):
    body = {**AIRFLOW_2_HEALTHY, "scheduler": {**AIRFLOW_2_HEALTHY["scheduler"], "detailed_status": {"x": 1}}}
    web.routes["/health"] = (200, body)
    code, _ = health_json(tmp_path, capsys, "2.11.2", web.server_address[1])
    assert code == 0
    web.routes["/health"] = (200, {k: v for k, v in body.items() if k != "dag_processor"})
    code, document = health_json(tmp_path, capsys, "2.11.2", web.server_address[1])
    assert code == 1 and components(document)["dag_processor"][0] == "WARNING"


def test_a_2x_cluster_file_against_an_airflow_3_server_names_the_move(tmp_path, capsys, web):
    web.routes["/health"] = (404, MOVED)
    code, document = health_json(tmp_path, capsys, "2.11.2", web.server_address[1])
    assert code == 2
    assert "Moved in Airflow 3" in document["results"][0]["detail"]


def test_non_json_answer_is_critical(tmp_path, capsys, web):
    web.routes["/api/v2/monitor/health"] = (200, b"<html>ok</html>")
    code, document = health_json(tmp_path, capsys, "3.3.2", web.server_address[1])
    assert code == 2 and "without a JSON body" in document["results"][0]["detail"]


def test_worker_checks_the_execution_api_and_its_clock(tmp_path, capsys, web):
    web.routes["/execution/health"] = (200, {"status": "healthy"})
    web.routes["/api/v2/monitor/health"] = (200, AIRFLOW_3_HEALTHY)
    code, document = health_json(tmp_path, capsys, "3.3.2", web.server_address[1], "execution-api,clock", "worker")
    by_probe = {r["probe"]: r for r in document["results"]}
    assert by_probe["execution-api"]["status"] == "OK"
    assert by_probe["clock"]["status"] == "OK" and "the master" in by_probe["clock"]["detail"]
    assert code == 0
    web.routes["/execution/health"] = (500, {"ok": [], "failing": {"db": "down"}})
    code, document = health_json(tmp_path, capsys, "3.3.2", web.server_address[1], "execution-api", "worker")
    assert code == 2
