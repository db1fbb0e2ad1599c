"""Join tokens and the master's authorized_keys, without a network: parsing, minting, the gate's rules."""

from __future__ import annotations

import io
import json
import time

import pytest

from airflow_nodes.errors import UserError
from airflow_nodes.join import (
    JoinToken,
    KeysFile,
    fingerprint_of,
    gate,
    mint,
    parse_token,
    public_key_line,
)

HOST_KEY = public_key_line(b"h" * 32)


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


def enroll(keys: KeysFile, name="worker1", address="10.0.0.11") -> bytes:
    request = json.dumps({"name": name, "key": public_key_line(name.encode().ljust(32, b"0")), "address": address})
    return gate(keys, ["join"], "join", io.BytesIO(request.encode()))


def test_the_gate_enrolls_a_worker_with_a_restricted_key_and_hands_out_the_cluster_file(tmp_path):
    keys = keys_file(tmp_path)
    cluster = tmp_path / "etc/airflow-node/cluster.toml"
    cluster.parent.mkdir(parents=True)
    cluster.write_text("# the cluster file\n")
    assert enroll(keys) == b"# the cluster file\n"
    assert enroll(keys, address="10.0.0.12") == b"# the cluster file\n"  # re-enrolled: one line, new address
    assert keys.workers() == [("worker1", "10.0.0.12")]
    line = next(line for line in keys.read() if not isinstance(line, str))
    assert line.options.startswith("restrict,command=") and "ssh-gate" in line.options
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
        gate(keys, ["join"], "join", io.BytesIO(json.dumps(request_body).encode()))
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
    assert keys.revoke_worker("worker1") == ["airflow-node-worker:worker1@10.0.0.11"]
    assert keys.tokens() == [] and keys.workers() == []


def test_a_join_request_cannot_smuggle_a_second_line(tmp_path):
    """A trailing newline in the key, name or address would put an unrevokable key line in the file."""
    keys = keys_file(tmp_path)
    key = public_key_line(b"w" * 32)
    for request_body in ({"name": "w", "key": key + "\n", "address": "10.0.0.1"},
                         {"name": "w\n", "key": key, "address": "10.0.0.1"},
                         {"name": "w", "key": key, "address": "10.0.0.1\n"}):  # fmt: skip
        with pytest.raises(UserError):
            gate(keys, ["join"], "join", io.BytesIO(json.dumps(request_body).encode()))
    assert not keys.path.exists()
    for body in (b"[1, 2]", b"not json", b"\xff\xfe", b"[" * 100000):
        with pytest.raises(UserError, match="one JSON object"):
            gate(keys, ["join"], "join", io.BytesIO(body))
