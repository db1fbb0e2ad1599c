"""DAG versions through the gate, against a real sshd playing the master's and a real Redis as the broker.

A joined worker holds exactly the master's releases, under the same names (the DAG versions of Airflow 3's
bundle); its no-change check is one small request; its follower fetches an older release a task asks for
(publishing nothing) and a new one the broker's doorbell names. The tests play the airflow account where
it is the one that asks.
"""

from __future__ import annotations

import filecmp
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from servers import RedisServer
from test_join import join, mint, ssh_as_worker, start_master

from airflow_nodes.context import load_context
from airflow_nodes.follow import Follower
from airflow_nodes.syncing.offer import release_key, ring
from airflow_nodes.target import Target

pytestmark = pytest.mark.integration
RELEASES = "var/lib/airflow-node/dags/releases"


@dataclass
class Joined:
    master: Path  # the master's --root
    worker: Path  # the worker's --root
    home: str  # AIRFLOW_HOME on both
    sshd: object

    def releases(self, root: Path) -> set[str]:
        return {p.name for p in (root / RELEASES).iterdir()}

    def published(self, root: Path) -> str:
        return Path(os.readlink(root / self.home.lstrip("/") / "dags")).name

    def author(self, name: str, text: str) -> None:
        """What a DAG author does on the master: a file in /srv/airflow/dags."""
        (self.master / "srv/airflow/dags" / name).write_text(text)


@pytest.fixture
def joined(tmp_path, run_cli):
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    master, home_on_master, sshd = start_master(tmp_path, run_cli, broker_url=redis.url())
    assert join(run_cli, tmp_path, mint(run_cli, master, sshd)).code == 0
    yield Joined(master, tmp_path / "worker1", str(tmp_path / "home"), sshd)
    sshd.stop()
    redis.stop()


def sync(run_cli, root: Path, *args: str) -> str:
    result = run_cli("sync", "--root", root, "-v", *args)
    assert result.code == 0, result.err
    return result.out


def test_a_worker_holds_the_masters_release_by_name_and_asks_for_it_cheaply(joined, run_cli):
    sync(run_cli, joined.master)
    first = joined.published(joined.master)
    out = sync(run_cli, joined.worker)
    assert "dags published" in out and joined.published(joined.worker) == first, out
    logins = joined.sshd.log.read_text().count("Accepted publickey")
    again = sync(run_cli, joined.worker)
    # the no-change check: one answer from the gate (the release and the cluster file's hash), one
    # connection, no rsync walk of the tree, no fetch of the cluster file
    assert re.search(rf"the master \S+ offers {first}", again) and "fetched from" not in again, again
    assert "config unchanged" in again, again
    assert joined.sshd.log.read_text().count("Accepted publickey") == logins + 1

    joined.author("hello.py", "HELLO = 2\n")
    joined.author("added.py", "ADDED = 1\n")
    sync(run_cli, joined.master)
    second = joined.published(joined.master)
    assert second != first
    sync(run_cli, joined.worker)
    assert joined.published(joined.worker) == second
    tree = lambda root: root / RELEASES / second  # noqa: E731
    assert not filecmp.dircmp(tree(joined.master), tree(joined.worker)).diff_files
    assert (tree(joined.worker) / "added.py").read_text() == "ADDED = 1\n"

    # the master's guards decide: a mass delete forced there is followed, not refused again here
    (joined.master / "srv/airflow/dags/hello.py").unlink()
    (joined.master / "srv/airflow/dags/added.py").unlink()
    assert run_cli("sync", "--root", joined.master).code != 0  # an empty source: refused on the master
    sync(run_cli, joined.master, "--force")
    sync(run_cli, joined.worker)
    assert joined.published(joined.worker) == joined.published(joined.master) not in (first, second)


def test_the_follower_fetches_exactly_the_release_a_task_asks_for_and_publishes_nothing(joined, run_cli):
    sync(run_cli, joined.master)
    sync(run_cli, joined.worker)
    old = joined.published(joined.worker)
    joined.author("hello.py", "HELLO = 2\n")
    sync(run_cli, joined.master)
    sync(run_cli, joined.worker, "--keep", "1", "--keep-days", "0")  # the operator prunes: `old` goes
    new = joined.published(joined.worker)
    assert joined.releases(joined.worker) == {new}

    requests = joined.worker / "var/lib/airflow-node/release-requests"
    (requests / old).touch()  # what the bundle does as the airflow account
    # what a hostile task could put there: a link named like a release, a name that is none, and a
    # flood of directories (which unlink cannot remove), one named like a release, with files inside
    (requests / "0123456789abcdef").symlink_to("/etc/passwd")
    (requests / "..passwd").touch()
    for index in range(300):
        (requests / f"junk{index}" / "deeper").mkdir(parents=True)
    (requests / "fedcba9876543210" / "inside").mkdir(parents=True)
    (requests / "fedcba9876543210" / "inside" / "file").write_text("x")
    result = run_cli("follow", "--root", joined.worker, "--passes", "1", "--splay", "0")
    assert result.code == 0, result.err
    assert joined.releases(joined.worker) == {old, new}
    assert joined.published(joined.worker) == new  # nothing published: the task reads releases/<old>
    assert (joined.worker / RELEASES / old / "hello.py").read_text() == "HELLO = 1\n"
    assert not any(requests.iterdir())
    failures = joined.worker / "var/lib/airflow-node/release-failures"
    assert not (failures / old).exists()
    # taken by their names only: releases the master does not hold, said to the waiting tasks
    for name in ("0123456789abcdef", "fedcba9876543210"):
        assert "the master does not hold it" in (failures / name).read_text()
        assert name not in joined.releases(joined.worker)
    assert Path("/etc/passwd").stat().st_size > 0


def test_the_gate_serves_a_release_by_its_name_only(joined, run_cli):
    sync(run_cli, joined.master)
    name = joined.published(joined.master)
    rsync = "rsync --server --sender -logDtpre.iLsfxCIvu . "
    served = ssh_as_worker(joined.worker, joined.sshd, "root@127.0.0.1", rsync + f"/{RELEASES}/{name}/")
    assert "may not run" not in served.stderr, served.stderr  # rsync's server started (no client talks to it)
    for path in (f"/{RELEASES}/{name}/../../../../../etc/", f"/{RELEASES}/", "/var/lib/airflow-node/"):
        refused = ssh_as_worker(joined.worker, joined.sshd, "root@127.0.0.1", rsync + path)
        assert refused.returncode != 0 and "may not run" in refused.stderr, (path, refused.stderr)
    offered = ssh_as_worker(joined.worker, joined.sshd, "root@127.0.0.1", "release")
    assert offered.stdout.strip().startswith(name), offered


def test_the_doorbell_brings_a_new_release_and_a_false_one_changes_nothing(joined, run_cli):
    sync(run_cli, joined.master)
    sync(run_cli, joined.worker)
    joined.author("hello.py", "HELLO = 3\n")
    sync(run_cli, joined.master)
    offered = joined.published(joined.master)
    master_ctx = load_context(Target.at(joined.master))
    revision = (joined.master / "var/lib/airflow-node/dags/offered").read_text().strip()
    assert ring(master_ctx, revision) == ""  # what the master's sync does on a real system

    result = run_cli("follow", "--root", joined.worker, "--passes", "1", "--splay", "0")
    assert result.code == 0, result.err
    assert joined.published(joined.worker) == offered, result.out

    # anyone with the broker's password can ring: the worker asks the master, and stays where it is
    assert ring(master_ctx, "f" * 64) == ""
    result = run_cli("follow", "--root", joined.worker, "--passes", "1", "--splay", "0")
    assert result.code == 0 and "unchanged" in result.out, result.out
    assert joined.published(joined.worker) == offered

    # a doorbell of 64 MiB, or of no revision: 65 bytes of it read, ignored
    client = redis.Redis.from_url(master_ctx.cluster.broker_url)
    client.setrange(release_key(master_ctx.cluster.name), (64 << 20) - 1, b"x")
    client.close()
    result = run_cli("follow", "--root", joined.worker, "--passes", "1", "--splay", "0")
    assert result.code == 0 and result.out == "", result.out


def test_a_look_that_fails_is_said_in_one_line_and_the_follower_goes_on(joined):
    lines: list[str] = []
    follower = Follower(Target.at(joined.worker), poll=0.01, splay=0, say=lines.append)
    cluster_file = joined.worker / "etc/airflow-node/cluster.toml"
    text = cluster_file.read_text()
    cluster_file.write_text("not [ toml\n")  # mid-change, say
    try:
        follower.run(passes=2)
    finally:
        cluster_file.write_text(text)
    assert len(lines) == 2 and all(line.startswith("look failed: ") and "\n" not in line for line in lines), lines
