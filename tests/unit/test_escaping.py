"""Escaping per target format, tested with values full of %, $ and quotes."""

from __future__ import annotations

import configparser

import pytest

from airflow_nodes.errors import UserError
from airflow_nodes.render import escape_cfg, escape_cron, escape_supervisor, escape_systemd


def test_cfg_escape_round_trips_through_configparser_interpolation():
    value = "postgresql://u:p%25s%28x%29@h/db%"
    parser = configparser.ConfigParser()
    parser.read_string(f"[s]\nk = {escape_cfg(value)}\n")
    assert parser["s"]["k"] == value


def test_systemd_escape_doubles_specifiers_and_dollars():
    assert escape_systemd("a%sb$HOME") == "a%%sb$$HOME"
    assert escape_systemd("has space") == '"has space"'


def test_supervisor_escape_doubles_percent_in_environment():
    assert escape_supervisor({"A": "x%(ENV_X)s"}) == 'A="x%%(ENV_X)s"'


def test_cron_escape_protects_percent():
    assert escape_cron(["/bin/x", "50%"]) == "/bin/x 50\\%"


@pytest.mark.parametrize("escape", [escape_cfg, escape_systemd, escape_supervisor, escape_cron])
def test_line_breaks_are_refused_everywhere(escape):
    with pytest.raises(UserError):
        escape("a\nb")
