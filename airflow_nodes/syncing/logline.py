"""One line per run to syslog (cron mails nobody), or to stderr where there is no /dev/log."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from airflow_nodes.sanitise import printable

_LOGGER = logging.getLogger("airflow_nodes.sync")


def log_run(line: str, failed: bool) -> None:
    """Send the run's one line to syslog (facility daemon, tag airflow-node). Never pass secrets here.
    It may quote a DAG file's name: escaped, so it is one line that cannot act on a terminal."""
    line = printable(line)
    if not os.path.exists("/dev/log"):
        if not failed:  # a failure is raised, and the CLI prints it as its one line
            print(f"airflow-node sync: {line}", file=sys.stderr)  # the current stderr, not the first one seen
        return
    if not _LOGGER.handlers:
        handler = logging.handlers.SysLogHandler("/dev/log", logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("airflow-node[%(process)d]: %(message)s"))
        _LOGGER.addHandler(handler)
        _LOGGER.setLevel(logging.INFO)
        _LOGGER.propagate = False
    _LOGGER.log(logging.ERROR if failed else logging.INFO, line)
