"""The one copy of each small mechanism: atomic writes, the symlink flip, the polling loop, hosts in URLs."""

from __future__ import annotations

import os
import stat
import time

import pytest

from airflow_nodes.apply import _LEFTOVER
from airflow_nodes.atomicfile import replace_symlink, write_atomically
from airflow_nodes.polling import wait_until
from airflow_nodes.schema import LOGIN_NAME
from airflow_nodes.urls import bare_host, http_url, url_host


def test_an_atomic_write_has_its_final_mode_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "secret.conf"
    path.write_text("old\n")
    write_atomically(path, b"new\n", 0o640)
    assert path.read_bytes() == b"new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["secret.conf"]


def test_a_killed_writes_temp_file_is_a_leftover_apply_recognises(tmp_path, monkeypatch):
    from airflow_nodes import atomicfile

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomicfile.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "airflow.cfg", b"x")
    assert os.listdir(tmp_path) == []  # cleaned up on the way out
    temp = atomicfile.write_temp_beside(tmp_path / "airflow.cfg", b"x")
    match = _LEFTOVER.match(temp.name)
    assert match and match["name"] == "airflow.cfg" and int(match["tmp"]) == os.getpid()


def test_a_symlink_flip_replaces_the_link_and_leaves_nothing_beside_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "current"
    replace_symlink(link, tmp_path / "a")
    replace_symlink(link, tmp_path / "b")
    assert os.readlink(link) == str(tmp_path / "b")
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "current"]


def test_a_symlink_flip_never_replaces_a_real_directory(tmp_path):
    (tmp_path / "dags").mkdir()
    with pytest.raises(OSError):
        replace_symlink(tmp_path / "dags", tmp_path)
    assert (tmp_path / "dags").is_dir() and os.listdir(tmp_path) == ["dags"]


def test_waiting_ends_when_the_condition_comes_true_or_at_the_deadline():
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) == 3, 5, 0.01) and len(calls) == 3
    started = time.monotonic()
    assert not wait_until(lambda: False, 0.2, 0.05)
    assert 0.2 <= time.monotonic() - started < 1


@pytest.mark.parametrize(
    "written,bare,in_url",
    [("db1", "db1", "db1"), ("10.0.0.1", "10.0.0.1", "10.0.0.1"), ("fe80::1", "fe80::1", "[fe80::1]"),
     ("[fe80::1]", "fe80::1", "[fe80::1]")],
)  # fmt: skip
def test_a_host_is_bare_for_ssh_and_bracketed_in_a_url(written, bare, in_url):
    assert bare_host(written) == bare and url_host(written) == in_url
    assert http_url(written, 8080) == f"http://{in_url}:8080"


@pytest.mark.parametrize("name", ["airflow", "airflow_svc", "deploy.bot", "_x"])
def test_every_account_a_cluster_may_name_is_a_login_ssh_accepts(name):
    assert LOGIN_NAME.fullmatch(name)


@pytest.mark.parametrize("name", ["-oProxyCommand=x", "bob\n", "a" * 33, "", "a b"])
def test_a_login_that_ssh_could_misread_is_refused(name):
    assert not LOGIN_NAME.fullmatch(name)
