"""Several masters sharing one cluster file: the [members] table, the merge every master computes, and
what a master adds to it. No network: configs are built in memory, files written under tmp_path."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from airflow_nodes.cluster import (
    MASTER,
    MAX_MEMBERS,
    WORKER,
    Member,
    cluster_digest,
    dump_cluster,
    key_fingerprint,
    merge_clusters,
    parse_cluster,
    settings_of,
)
from airflow_nodes.errors import UserError
from airflow_nodes.masters import lost_to, with_members
from airflow_nodes.sshkeys import public_key_line

from conftest import make_cluster

WHERE = "cluster.toml"


def member(name: str, role: str = WORKER, address: str = "10.0.0.11", **overrides: str) -> Member:
    key = public_key_line(name.encode().ljust(32, b"k"))
    host_key = public_key_line(name.encode().ljust(32, b"h")) if role == MASTER else ""
    return dataclasses.replace(Member(name, role, address, address, key, host_key), **overrides)


def revoked(*members: Member) -> str:
    return ",".join(sorted(key_fingerprint(m.key) for m in members))


M2, W1, W2 = member("m2", MASTER, "10.20.0.2"), member("w1"), member("w2", address="10.0.0.12")


def test_members_round_trip_through_the_cluster_file():
    cluster = make_cluster(serial=7, members=(W2, M2, W1), revoked=revoked(member("gone")))
    text = dump_cluster(cluster)
    assert "\n[members]\n" in text
    again = parse_cluster(text, WHERE)
    assert again == dataclasses.replace(cluster, members=(M2, W1, W2))  # sorted by name
    assert again.member("m2").host_key == M2.host_key and again.member("w1").host_key == ""


def members_text(entry: str) -> str:
    return dump_cluster(make_cluster()) + "\n[members]\n" + entry + "\n"


def entry(name: str = "w1", **values: object) -> str:
    """A [members] line: a good worker's, but for `values` (None drops one)."""
    values = {"role": WORKER, "address": "10.0.0.11", "source": "10.0.0.11", "key": W1.key, **values}
    fields = ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None)
    return f"{json.dumps(name)} = {{ {fields} }}"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (entry("bad name!"), "'bad name!'"),
        (entry("w\nx"), "'w\\nx'"),  # the message stays one line
        (entry(role="boss"), "w1"),
        (entry(key=W1.key + "\n"), "w1"),
        (entry(source="worker1"), "w1"),  # a name: sshd's from= would look it up
        (entry(source='fe80::1%x,*",port-forwarding,x="'), "w1"),  # an IPv6 scope may hold anything
        (entry(address="10.0.0.11\n"), "w1"),
        (entry(host_key=M2.host_key), "w1"),  # a worker with a host key
        (entry("m2", role=MASTER), "m2"),  # a master without one
        (entry(extra="x"), "w1"),
        (entry(address=1), "w1"),
    ],
)
def test_a_hostile_members_entry_is_one_user_error_naming_it(line, shown):
    with pytest.raises(UserError) as caught:
        parse_cluster(members_text(line), WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: members.{shown}: ") and "\n" not in message


def test_at_most_max_members_entries():
    entries = "\n".join(entry(f"w{n}") for n in range(MAX_MEMBERS + 1))
    with pytest.raises(UserError, match=f"^{WHERE}: members: at most {MAX_MEMBERS}$"):
        parse_cluster(members_text(entries), WHERE)


# -- the merge ----------------------------------------------------------------------------------


def test_every_master_computes_the_same_merge_whichever_order_it_sees_the_files_in():
    a = make_cluster(serial=3, members=(M2, W1))
    b = make_cluster(serial=3, web_port=8081, members=(W2,))
    c = make_cluster(serial=2, members=(dataclasses.replace(W2, address="10.0.0.99", source="10.0.0.99"),))
    for files in ((a, b), (a, b, c)):
        merges = {merge_clusters(*order) for order in itertools.permutations(files)}
        assert len(merges) == 1


def test_the_highest_serial_wins_the_settings_and_the_members_are_a_union():
    old = make_cluster(serial=4, web_port=8081, members=(W1,))
    new = make_cluster(serial=5, web_port=8082, members=(M2,))
    merged = merge_clusters(old, new)
    assert merged.web_port == 8082
    assert merged.members == (M2, W1)  # the union
    assert merged.serial == 5  # members need no serial: only settings are ordered


def test_a_tie_of_serials_is_broken_by_the_digest_of_the_settings():
    a, b = make_cluster(serial=5, web_port=8081), make_cluster(serial=5, web_port=8082)
    winner = max(a, b, key=lambda c: cluster_digest(settings_of(c)))
    assert merge_clusters(a, b) == merge_clusters(b, a) == winner  # nothing else differs: no new serial


def test_an_enrolment_never_outranks_a_change_of_settings():
    base = make_cluster(serial=5, members=(W1, W2))
    assert merge_clusters(base, make_cluster(serial=2, members=(W1,))) == base
    assert merge_clusters(base, base) == base
    enrolled = with_members(make_cluster(serial=5, members=(W1, W2)), M2, [])  # a node added: no new serial
    changed = make_cluster(serial=6, web_port=8085, members=(W1, W2))  # an operator's init elsewhere
    merged = merge_clusters(enrolled, changed)
    assert merged.web_port == 8085 and merged.members == (M2, W1, W2) and merged.serial == 6


def test_a_key_revoked_on_one_master_goes_everywhere_and_is_never_taken_back():
    revoking = make_cluster(serial=4, members=(M2,), revoked=revoked(W1))
    holding = make_cluster(serial=6, members=(M2, W1, W2))
    merged = merge_clusters(holding, revoking)
    assert merged == merge_clusters(revoking, holding)
    assert merged.members == (M2, W2) and merged.revoked == revoked(W1) and merged.serial == 6
    assert with_members(merged, M2, [W1]) is merged  # enrolled here, but revoked: not taken back
    again = with_members(merged, M2, [W1, member("w3")])
    assert [m.name for m in again.members] == ["m2", "w2", "w3"] and again.serial == 6


def test_with_members_adds_this_master_and_keeps_a_known_name():
    cluster = make_cluster(serial=1, members=(W1,))
    other_w1 = member("w1", address="10.0.0.50")
    added = with_members(cluster, M2, [other_w1])
    assert added.members == (M2, W1) and added.serial == 1  # w1 keeps its entry (revoke it first)
    assert with_members(added, M2, [other_w1]) is added
    moved = with_members(added, dataclasses.replace(M2, address="10.20.0.9", source="10.20.0.9"), [])
    assert moved.member("m2").address == "10.20.0.9" and moved.serial == 1


def test_lost_to_only_a_peer_of_our_serial_with_other_settings_and_a_higher_digest():
    a, b = make_cluster(serial=5, web_port=8081), make_cluster(serial=5, web_port=8082)
    loser, winner = sorted((a, b), key=lambda c: cluster_digest(settings_of(c)))
    assert lost_to(winner, loser) and not lost_to(loser, winner)
    assert not lost_to(dataclasses.replace(winner, serial=6), loser)  # a later change, not a lost one
    assert not lost_to(dataclasses.replace(loser, members=(W1,), revoked=revoked(W2)), loser)  # members only


def test_web_url_uses_the_api_address_and_several_masters_needs_a_master_member():
    cluster = make_cluster(members=(W1,))
    assert cluster.web_url == "http://10.20.0.1:8080" and not cluster.several_masters
    assert cluster.masters == ("10.20.0.1",)
    shared = make_cluster(api_address="10.20.0.100", members=(M2, W1))
    assert shared.web_url == "http://10.20.0.100:8080" and shared.cluster_address == "10.20.0.100"
    assert shared.several_masters and shared.masters == ("10.20.0.1", "10.20.0.2")
