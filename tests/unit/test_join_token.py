"""Join tokens and the master's authorized_keys, without a network: parsing, minting, the gate's rules."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import tempfile
import time

import pytest

from airflow_nodes.cluster import MASTER, WORKER, Member
from airflow_nodes.cluster import key_fingerprint as fingerprint_of
from airflow_nodes.errors import UserError
from airflow_nodes.init import InitRequest, plan_init
from airflow_nodes.join import TOKEN_PREFIX, JoinToken, _b64, _unb64, gate, mint, parse_token
from airflow_nodes.sshkeys import (
    MASTER_TAG,
    MAX_ENROLMENTS_PER_TOKEN,
    MAX_MASTERS,
    MAX_WORKERS,
    TOKEN_TAG,
    WORKER_TAG,
    KeyLine,
    KeysFile,
    public_key_line,
)
from airflow_nodes.target import Target

from conftest import make_cluster

HOST_KEY = public_key_line(b"h" * 32)
MASTER_HOST_KEY = public_key_line(b"H" * 32)  # the joining master's
TOKEN_ID = "AbCdEf012+/9"  # the id a token's forced command hands the gate
ZONES = "/usr/share/zoneinfo"


@pytest.fixture(autouse=True)
def connection(monkeypatch):
    """The gate runs under sshd, which names the client in SSH_CONNECTION."""
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.11 50022 10.0.0.1 22")


def sent(data: bytes):
    """The gate's stdin: a real file holding what the client sent, then its end."""
    handle = tempfile.TemporaryFile()  # noqa: SIM115 - the gate reads it; it goes with the test
    handle.write(data)
    handle.seek(0)
    return handle


def keys_file(tmp_path) -> KeysFile:
    (tmp_path / "home").mkdir(exist_ok=True)  # the airflow user's home exists; .ssh is made on demand
    return KeysFile(tmp_path / "home/.ssh/authorized_keys", "/opt/airflow-node/bin/airflow-node", str(tmp_path))


def test_a_token_round_trips_and_carries_the_host_key_fingerprint(tmp_path):
    token = mint(keys_file(tmp_path), "10.0.0.1", 22, "airflow", HOST_KEY, 3600)
    again = parse_token(token.encode())
    assert again == token and again.fingerprint == fingerprint_of(HOST_KEY)
    assert len(token.encode()) < 250  # one line to paste, like kubeadm's join command


@pytest.mark.parametrize(
    "text",
    ["", "afn1-", "afn1-!!!", "K10abc::def", "afn1-" + "A" * 2000, "afn1-eyJoIjoxfQ",
     JoinToken("bad host!", 22, "airflow", "SHA256:" + "A" * 43, b"x" * 32, 0).encode(),
     JoinToken("m", 22, "-oProxyCommand=x", "SHA256:" + "A" * 43, b"x" * 32, 0).encode(),
     JoinToken("m", 22, "airflow", "MD5:aa", b"x" * 32, 0).encode(),
     JoinToken("m", 22, "airflow", "SHA256:" + "A" * 43, b"short", 0).encode()],
)  # fmt: skip
def test_a_malformed_token_is_one_line_that_never_repeats_it(text):
    with pytest.raises(UserError) as caught:
        parse_token(text)
    assert "--join" in str(caught.value) and (not text or text not in str(caught.value))


def test_mint_keeps_other_keys_and_drops_expired_tokens(tmp_path):
    keys = keys_file(tmp_path)
    keys.path.parent.mkdir()
    keys.path.write_text("ssh-ed25519 AAAApersonal admin@laptop\n")
    old = mint(keys, "m", 22, "airflow", HOST_KEY, 60)
    keys.add_token(b"o" * 32, int(time.time()) - 10)  # already expired: dropped at the next mint
    new = mint(keys, "m", 22, "airflow", HOST_KEY, 3600)
    text = keys.path.read_text()
    assert "admin@laptop" in text.splitlines()[0]
    assert {line.tag for line in keys.tokens()} == {f"airflow-node-token:{old.id}", f"airflow-node-token:{new.id}"}
    line = next(line for line in keys.tokens() if line.tag.endswith(new.id))
    assert line.options.startswith('restrict,expiry-time="') and "ssh-gate" in line.options and "join" in line.options
    assert oct(keys.path.stat().st_mode & 0o777) == "0o600"


def test_ttl_is_bounded(tmp_path):
    for ttl in (0, 59, 10**9):
        with pytest.raises(UserError, match="--ttl"):
            mint(keys_file(tmp_path), "m", 22, "airflow", HOST_KEY, ttl)


def enroll(keys: KeysFile, name="worker1", address="10.0.0.11", token_id=TOKEN_ID, seed=None) -> bytes:
    key = public_key_line(seed or name.encode().ljust(32, b"\0"))
    request = json.dumps({"name": name, "key": key, "address": address})
    return gate(keys, ["join", token_id], "join", sent(request.encode()))


def test_the_gate_enrolls_a_worker_with_a_restricted_key_and_hands_out_the_cluster_file(tmp_path):
    keys = keys_file(tmp_path)
    cluster = tmp_path / "etc/airflow-node/cluster.toml"
    cluster.parent.mkdir(parents=True)
    cluster.write_text("# the cluster file\n")
    assert enroll(keys) == b"# the cluster file\n"
    assert keys.workers() == [("worker1", "10.0.0.11")]
    line = next(line for line in keys.read() if not isinstance(line, str))
    assert line.options.startswith('restrict,from="10.0.0.11",command=') and "ssh-gate" in line.options
    assert "worker worker1" in line.options
    cat = gate(keys, ["worker", "worker1"], "cat /etc/airflow-node/cluster.toml", io.BytesIO())
    assert cat == b"# the cluster file\n"
    assert gate(keys, ["worker", "worker1"], "leave", io.BytesIO()) == b"left\n"
    assert keys.workers() == []


@pytest.mark.parametrize(
    "command",
    ["sh", "bash -i", "cat /etc/shadow", "cat /etc/airflow-node/cluster.toml; sh",
     "rsync --server . /srv/airflow/dags/", "rsync --server --sender -e.LsfxC . /etc/", "leave; sh", ""],
)  # fmt: skip
def test_a_worker_key_may_not_run_anything_else(tmp_path, command):
    keys = keys_file(tmp_path)
    with pytest.raises(UserError, match="may not run"):
        gate(keys, ["worker", "worker1"], command, io.BytesIO())


@pytest.mark.parametrize(
    "request_body",
    [{}, {"name": "-x", "key": "ssh-ed25519 " + "A" * 68, "address": "10.0.0.1"},
     {"name": "w", "key": "ssh-rsa AAAA", "address": "10.0.0.1"},
     {"name": "w", "key": "ssh-ed25519 " + "A" * 68, "address": "x; rm -rf /"}],
)  # fmt: skip
def test_a_join_request_that_is_not_what_we_send_changes_nothing(tmp_path, request_body):
    keys = keys_file(tmp_path)
    with pytest.raises(UserError):
        gate(keys, ["join", TOKEN_ID], "join", sent(json.dumps(request_body).encode()))
    assert not keys.path.exists()


def test_revoke_removes_a_token_or_a_worker(tmp_path):
    keys = keys_file(tmp_path)
    (tmp_path / "etc/airflow-node").mkdir(parents=True)
    (tmp_path / "etc/airflow-node/cluster.toml").write_text("x")
    token = mint(keys, "m", 22, "airflow", HOST_KEY, 3600)
    enroll(keys)
    assert keys.revoke_worker(token.id) == []  # a worker name never matches a token, nor the reverse
    assert keys.revoke_token(token.id) == [f"airflow-node-token:{token.id}"]
    assert keys.revoke_token("worker1") == []
    assert keys.revoke_worker("worker1") == [f"airflow-node-worker:worker1@10.0.0.11,token:{TOKEN_ID}"]
    assert keys.tokens() == [] and keys.workers() == []


def test_a_join_request_cannot_smuggle_a_second_line(tmp_path):
    """A trailing newline in the key, name or address would put an unrevokable key line in the file."""
    keys = keys_file(tmp_path)
    key = public_key_line(b"w" * 32)
    for request_body in ({"name": "w", "key": key + "\n", "address": "10.0.0.1"},
                         {"name": "w\n", "key": key, "address": "10.0.0.1"},
                         {"name": "w", "key": key, "address": "10.0.0.1\n"}):  # fmt: skip
        with pytest.raises(UserError):
            gate(keys, ["join", TOKEN_ID], "join", sent(json.dumps(request_body).encode()))
    assert not keys.path.exists()
    for body in (b"[1, 2]", b"not json", b"\xff\xfe", b"[" * 8000):
        with pytest.raises(UserError, match="one JSON object"):
            gate(keys, ["join", TOKEN_ID], "join", sent(body))
    with pytest.raises(UserError, match="at most 8192 bytes"):
        gate(keys, ["join", TOKEN_ID], "join", sent(b"[" * 100000))
    assert not keys.path.exists()


# -- what a review found: sshd's time zone, squatting, bounds, pinned worker keys ------------------


@pytest.fixture
def far_tz(monkeypatch):
    """Our process in Kiritimati (UTC+14), as a root shell with TZ set may be; sshd does not see it."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def sshd_reads(stamp: str, localtime, monkeypatch) -> int:
    """What sshd makes of an expiry-time: OpenSSH's parse_absolute_time (strptime, then mktime with
    tm_isdst 0) in sshd's zone, the system's /etc/localtime."""
    with monkeypatch.context() as env:
        env.setenv("TZ", f":{localtime}")
        time.tzset()
        read = int(time.mktime((*time.strptime(stamp, "%Y%m%d%H%M%S")[:8], 0)))
    time.tzset()
    return read


@pytest.mark.parametrize("system_zone", [None, "Europe/Berlin", "Australia/Sydney", "America/St_Johns"])
def test_a_token_expires_when_sshd_reads_it_whatever_tz_we_run_in(tmp_path, far_tz, monkeypatch, system_zone):
    """sshd reads expiry-time in the system's zone (UTC without /etc/localtime); summer time included:
    Berlin or Sydney is always in it."""
    localtime = tmp_path / "etc/localtime"
    if system_zone:
        localtime.parent.mkdir(parents=True)
        shutil.copy(f"{ZONES}/{system_zone}", localtime)
    keys = keys_file(tmp_path)
    token = mint(keys, "m", 22, "airflow", HOST_KEY, 60)
    stamp = re.search(r'expiry-time="(\d{14})"', keys.tokens()[0].options)[1]
    assert sshd_reads(stamp, localtime, monkeypatch) == token.expires
    assert os.environ["TZ"] == "Pacific/Kiritimati"  # ours is left as it was


def test_a_name_enrolled_already_is_refused_and_its_key_kept(tmp_path):
    keys = keys_file(tmp_path)
    enroll(keys)
    before = keys.path.read_bytes()
    with pytest.raises(UserError, match=r"worker1 is enrolled already.*--revoke worker1") as caught:
        enroll(keys, seed=b"s" * 32)  # a token holder claiming worker1's name with a key of its own
    assert "\n" not in str(caught.value)
    assert keys.path.read_bytes() == before
    keys.revoke_worker("worker1")  # the operator's choice: then the name is free again
    enroll(keys, seed=b"s" * 32)
    assert next(line for line in keys.read() if isinstance(line, KeyLine)).key == public_key_line(b"s" * 32)


def test_a_key_in_the_file_already_is_not_enrolled_again(tmp_path):
    keys = keys_file(tmp_path)
    keys.path.parent.mkdir()
    keys.path.write_text(f'from="192.0.2.1" {public_key_line(b"p" * 32)} admin@laptop\n')
    token = mint(keys, "m", 22, "airflow", HOST_KEY, 3600)
    enroll(keys)
    before = keys.path.read_bytes()
    for seed in (b"p" * 32, token.seed, b"worker1".ljust(32, b"\0")):  # a person's, the token's, a worker's
        with pytest.raises(UserError, match="in the master's authorized_keys already"):
            enroll(keys, name="worker2", seed=seed)
    assert keys.path.read_bytes() == before


def test_one_token_enrolls_a_bounded_number_of_workers_and_the_file_holds_a_bounded_number(tmp_path):
    keys = keys_file(tmp_path)
    for number in range(MAX_ENROLMENTS_PER_TOKEN):
        enroll(keys, name=f"w{number}")
    before = keys.path.read_bytes()
    with pytest.raises(UserError, match="this token has enrolled .* its limit"):
        enroll(keys, name="one-more")
    assert keys.path.read_bytes() == before
    enroll(keys, name="one-more", token_id="ZZZZZZZZZZZZ")  # another token has its own count

    lines = [f'restrict {public_key_line(str(n).encode().ljust(32, b"k"))} airflow-node-worker:w{n}@10.0.0.1,token:x'
             for n in range(MAX_WORKERS)]  # fmt: skip
    keys.path.write_text("\n".join(lines) + "\n")
    before = keys.path.read_bytes()
    with pytest.raises(UserError, match=f"{MAX_WORKERS} workers are enrolled"):
        enroll(keys, name="another", token_id="YYYYYYYYYYYY")
    assert keys.path.read_bytes() == before


def test_a_worker_key_works_only_from_the_address_it_enrolled_from(tmp_path, monkeypatch):
    """from= is sshd's client address, not the address the request claims."""
    keys = keys_file(tmp_path)
    monkeypatch.setenv("SSH_CONNECTION", "2001:db8:0:0::7 50022 2001:db8::1 22")
    enroll(keys, address="10.0.0.11")
    line = next(line for line in keys.read() if isinstance(line, KeyLine))
    assert line.options.startswith('restrict,from="2001:db8::7",command="') and "expiry-time" not in line.options
    before = keys.path.read_bytes()
    for connection in (None, "", "nonsense 1 2 3", '10.0.0.1",command="sh 1 2 3', 'fe80::1%x",y 1 2 3'):
        if connection is None:
            monkeypatch.delenv("SSH_CONNECTION")
        else:
            monkeypatch.setenv("SSH_CONNECTION", connection)
        with pytest.raises(UserError, match="SSH_CONNECTION"):
            enroll(keys, name="worker2")
    assert keys.path.read_bytes() == before


def test_a_token_names_itself_to_the_gate_and_a_token_without_an_id_is_refused(tmp_path):
    keys = keys_file(tmp_path)
    token = mint(keys, "m", 22, "airflow", HOST_KEY, 3600)
    assert keys.tokens()[0].options.endswith(f' join {token.id}"')
    with pytest.raises(UserError, match="older airflow-node"):
        gate(keys, ["join"], "join", sent(b"{}"))
    with pytest.raises(UserError, match="may not run"):
        gate(keys, ["join", "x; sh"], "join", sent(b"{}"))


def test_minting_waits_a_bounded_time_for_the_keys_lock_and_names_it(tmp_path, monkeypatch):
    keys = keys_file(tmp_path)
    mint(keys, "m", 22, "airflow", HOST_KEY, 3600)
    before = keys.path.read_bytes()
    lock = keys.path.with_name(".airflow-node-keys.lock")
    monkeypatch.setattr("airflow_nodes.sshkeys.KEYS_LOCK_WAIT", 1)
    with open(lock, "rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what the airflow account can do for ever
        started = time.monotonic()
        with pytest.raises(UserError, match=f"^{re.escape(str(lock))}: another process has held this lock"):
            mint(keys, "m", 22, "airflow", HOST_KEY, 3600)
    assert time.monotonic() - started < 5 and keys.path.read_bytes() == before


# -- several masters: a token's role, a master's join, the members' lines on every master ---------------


def master_request(name="m2", address="10.0.0.12", host_key=MASTER_HOST_KEY, role=MASTER, **more) -> bytes:
    body = {"name": name, "key": public_key_line(name.encode().ljust(32, b"\0")), "address": address, **more}
    if role:
        body["role"] = role
    if host_key:
        body["host_key"] = host_key
    return json.dumps(body).encode()


def test_a_token_carries_its_role_and_an_old_token_without_one_is_a_workers(tmp_path):
    token = mint(keys_file(tmp_path), "10.0.0.1", 22, "airflow", HOST_KEY, 3600, MASTER)
    assert parse_token(token.encode()).role == MASTER
    assert keys_file(tmp_path).tokens()[0].options.endswith(f' join-master {token.id}"')
    body = json.loads(_unb64(token.encode()[len(TOKEN_PREFIX) :]))
    del body["r"]
    old = TOKEN_PREFIX + _b64(json.dumps(body).encode())
    assert parse_token(old) == dataclasses.replace(token, role=WORKER)
    with pytest.raises(UserError, match="--join"):
        parse_token(TOKEN_PREFIX + _b64(json.dumps({**body, "r": "boss"}).encode()))


@pytest.mark.parametrize(
    ("verb", "body", "says"),
    [
        ("join", master_request(), "this token joins a worker, not a master"),
        ("join-master", master_request(role="", host_key=""), "this token joins a master, not a worker"),
        ("join-master", master_request(role=WORKER), "this token joins a master, not a worker"),
        ("join-master", master_request(host_key=""), "a master's join needs its ed25519 SSH host key"),
        ("join-master", master_request(host_key="ssh-rsa AAAA"), "a master's join needs its ed25519 SSH host key"),
    ],
)
def test_the_gate_enrolls_only_what_the_token_is_for(tmp_path, verb, body, says):
    keys = keys_file(tmp_path)
    with pytest.raises(UserError, match=f"^ssh-gate: {says}") as caught:
        gate(keys, [verb, TOKEN_ID], verb, sent(body))
    assert "\n" not in str(caught.value)
    assert not keys.path.exists()


def test_a_master_token_enrolls_a_master_with_its_host_key(tmp_path):
    keys = keys_file(tmp_path)
    gate(keys, ["join-master", TOKEN_ID], "join-master", sent(master_request()))
    (line,) = [line for line in keys.read() if isinstance(line, KeyLine)]
    assert line.tag == f"{MASTER_TAG}m2@10.0.0.12,token:{TOKEN_ID},host:{MASTER_HOST_KEY.split()[1]}"
    assert line.options.startswith('restrict,from="10.0.0.11",command="') and " ssh-gate " in line.options
    assert line.options.endswith(' master m2"')
    key = public_key_line(b"m2".ljust(32, b"\0"))
    assert keys.enrolled() == [Member("m2", MASTER, "10.0.0.12", "10.0.0.11", key, MASTER_HOST_KEY)]
    assert gate(keys, ["master", "m2"], "cat /etc/airflow-node/cluster.toml", io.BytesIO()) == b""


def test_at_most_max_masters_are_enrolled(tmp_path):
    keys = keys_file(tmp_path)
    for number in range(MAX_MASTERS):
        gate(keys, ["join-master", TOKEN_ID], "join-master", sent(master_request(name=f"m{number}")))
    before = keys.path.read_bytes()
    with pytest.raises(UserError, match=f"{MAX_MASTERS} masters are enrolled"):
        gate(keys, ["join-master", TOKEN_ID], "join-master", sent(master_request(name="one-more")))
    assert keys.path.read_bytes() == before


def node(name: str, role: str = WORKER, address: str = "10.0.0.20") -> Member:
    host_key = public_key_line(name.encode().ljust(32, b"h")) if role == MASTER else ""
    return Member(name, role, address, address, public_key_line(name.encode().ljust(32, b"k")), host_key)


def test_converge_gives_every_member_but_this_master_a_line_and_keeps_everything_else(tmp_path):
    keys = keys_file(tmp_path)
    me, m2, w1, gone, bad = node("m1", MASTER), node("m2", MASTER), node("w1"), node("gone"), node("bad")
    personal = f'from="192.0.2.1" {public_key_line(b"p" * 32)} admin@laptop'
    keys.write([personal, keys.member_line(gone), keys.member_line(bad)])
    token = mint(keys, "10.0.0.1", 22, "airflow", HOST_KEY, 3600)
    enroll(keys, name="pending")  # enrolled here, not yet a member: its line stays
    enroll(keys, name="revoked-one")  # enrolled here, but its key revoked on another master
    revoked = fingerprint_of(public_key_line(b"revoked-one".ljust(32, b"\0")))
    cluster = make_cluster(members=(me, m2, w1, bad), revoked=",".join(sorted([revoked, fingerprint_of(bad.key)])))

    assert keys.converge(cluster, "m1") is True
    lines = keys.read()
    assert lines[0] == personal
    assert [line.tag for line in keys.tokens()] == [f"airflow-node-token:{token.id}"]
    tags = sorted(line.tag for line in lines if isinstance(line, KeyLine) and not line.tag.startswith(TOKEN_TAG))
    assert tags == sorted([f"{MASTER_TAG}m2@10.0.0.20,member", f"{WORKER_TAG}w1@10.0.0.20,member",
                           f"{WORKER_TAG}pending@10.0.0.11,token:{TOKEN_ID}"])  # fmt: skip
    line = next(line for line in lines if isinstance(line, KeyLine) and line.tag.startswith(f"{MASTER_TAG}m2@"))
    assert line.options.startswith('restrict,from="10.0.0.20",command="') and line.options.endswith(' master m2"')
    before = keys.path.read_bytes()
    assert keys.converge(cluster, "m1") is False
    assert keys.path.read_bytes() == before


def test_init_refuses_a_token_of_another_role_before_anything_is_sent(tmp_path):
    token = JoinToken("10.0.0.1", 22, "airflow", fingerprint_of(HOST_KEY), b"s" * 32, int(time.time()) + 600, MASTER)
    worker_token = dataclasses.replace(token, role=WORKER)
    for role, given, other in (("worker", token, MASTER), ("master", worker_token, WORKER)):
        request = InitRequest(role=role, airflow_version="3.3.2", join=given.encode())
        with pytest.raises(UserError, match=f"^--join: this token joins a {other}, not a {role}; mint one with"):
            plan_init(request, Target.at(str(tmp_path)))
        assert list(tmp_path.iterdir()) == []


CLUSTER_OPTION = [({"web_port": 8081}, "--web-port"), ({"with_redis": True}, "--with-redis")]


@pytest.mark.parametrize(("option", "says"), CLUSTER_OPTION)
def test_a_master_that_joins_takes_the_cluster_file_as_it_is(tmp_path, option, says):
    token = JoinToken("10.0.0.1", 22, "airflow", fingerprint_of(HOST_KEY), b"s" * 32, int(time.time()) + 600, MASTER)
    request = InitRequest(role="master", airflow_version="3.3.2", join=token.encode(), **option)
    with pytest.raises(UserError, match=f"^{says}: not with --join"):
        plan_init(request, Target.at(str(tmp_path)))
    assert list(tmp_path.iterdir()) == []
