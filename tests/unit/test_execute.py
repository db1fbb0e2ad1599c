"""failure_reason: the one line a failed command is reported by."""

from __future__ import annotations

import os

import pytest

from airflow_nodes import execute
from airflow_nodes.execute import failure_reason

SSH_REFUSED = "ssh: connect to host 127.0.0.1 port 40555: Connection refused"


@pytest.mark.parametrize(
    "stderr",
    [
        # the order seen most often: ssh's line, then rsync's generic ending
        f"{SSH_REFUSED}\nrsync: connection unexpectedly closed (0 bytes received so far) [Receiver]\n"
        "rsync error: unexplained error (code 255) at io.c(232) [Receiver=3.2.7]\n",
        # the order CI once saw: rsync's write into the dead pipe failed after ssh had said why
        f"{SSH_REFUSED}\nrsync: [Receiver] safe_write failed to write 4 bytes to socket: Broken pipe (32)\n"
        "rsync error: unexplained error (code 255) at io.c(232) [Receiver=3.2.7]\n",
        f"rsync: [sender] write error: Broken pipe (32)\n{SSH_REFUSED}\n",
        # git over ssh ends with advice
        f"{SSH_REFUSED}\nfatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n",
    ],
)
def test_a_transfer_over_a_dead_ssh_is_reported_by_what_ssh_said(stderr):
    assert failure_reason(["rsync"], 255, stderr) == f"{SSH_REFUSED} (exit 255)"


def test_a_python_error_line_wins_over_the_statement_that_follows_it():
    stderr = "Traceback (most recent call last):\n  File x\nsqlalchemy.exc.ProgrammingError: no table\n[SQL: SELECT]\n"
    assert failure_reason(["airflow"], 1, stderr) == "sqlalchemy.exc.ProgrammingError: no table (exit 1)"


def test_a_killed_command_says_which_signal():
    assert failure_reason(["pg_dump"], -9, "") == "pg_dump was killed by signal 9"


def test_no_output_falls_back_to_the_exit_code():
    assert failure_reason(["false"], 3, "\n  \n") == "false failed (exit 3)"


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another account: needs root")
def test_a_command_run_as_another_account_gets_no_terminal_or_input_of_ours():
    """Its code could push keystrokes into root's terminal (TIOCSTI) if it shared root's session."""
    probe = "import os, sys; print(os.getsid(0) == os.getpid(), sys.stdin.read() == '')"
    result = execute.run(["/usr/bin/python3", "-I", "-c", probe], user="nobody")
    assert result.stdout.split() == ["True", "True"]
