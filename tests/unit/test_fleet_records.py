"""The fleet record schema, both sides: what a node writes (clip_record, seal) is what every reader
accepts (check_record), and what anyone else writes to the broker is refused, never a traceback."""

from __future__ import annotations

import json
import math

import pytest

from airflow_nodes.fleet import (
    FUTURE_SKEW,
    MAX_RECORD_BYTES,
    NUMBER_FIELDS,
    TEXT_FIELDS,
    check_fields,
    check_record,
    clip_record,
    seal,
)

KEY = b"k" * 32
NOW = 1_700_000_000.0


def honest(**facts: object) -> dict:
    return {"node": "w1", "role": "worker", "published": NOW - 1, **facts}


@pytest.mark.parametrize(
    "facts",
    [
        {"sync_error": "rsync: " + "x" * 308, "daemons": "d" * 382},  # the lengths that once hid a master
        {"sync_error": "line one\nline two\r\x1b[2J \u202e\udcff" + "é" * 5000},  # controls, bidi, a surrogate
        {"daemons": "\U0001f600" * 10_000, "dags": None, "worker_online": True},
        {"clock_offset": math.nan, "published": math.inf},
        {"clock_offset": -(10**400), "published": 10**400},
    ],
)
def test_what_the_writer_clips_every_reader_accepts(facts):
    record = clip_record(honest(**facts))
    value = seal(record, KEY)
    assert len(value) <= MAX_RECORD_BYTES
    accepted, why = check_record(value, "w1", KEY, NOW + 1e11)
    assert accepted is not None, why
    assert all(len(accepted[name]) <= limit for name, limit in TEXT_FIELDS.items())


def test_the_largest_record_a_node_can_write_fits_the_readers_byte_limit():
    widest = {name: "\U0001f600" * limit for name, limit in TEXT_FIELDS.items()}  # 4 UTF-8 bytes a character
    numbers = {name: -1234567890.123456 for name in NUMBER_FIELDS}
    value = seal(clip_record({**widest, **numbers, "worker_online": False}), KEY)
    assert len(value) <= MAX_RECORD_BYTES


@pytest.mark.parametrize("number", [10**400, -(10**400), math.nan, math.inf, -math.inf, 1e300, True, "1", None])
def test_a_number_out_of_its_range_or_not_finite_is_refused_not_raised(number):
    assert check_fields({"node": "w1", "published": number}) is None


@pytest.mark.parametrize("text", ["w" * 254, "a\nb", "\u202eevil", 7, ["w1"]])
def test_text_too_long_unprintable_or_not_text_is_refused(text):
    assert check_fields({"node": text}) is None


def test_a_record_must_be_signed_with_the_cluster_key_and_name_its_own_node_in_time():
    value = seal(honest(), KEY)
    assert check_record(value, "w1", KEY, NOW)[0] is not None
    record = json.loads(value)
    del record["sig"]
    assert check_record(json.dumps(record).encode(), "w1", KEY, NOW) == (None, "not signed")
    assert check_record(value, "w1", b"another key", NOW) == (None, "not signed with this cluster's key")
    assert check_record(value.replace(b"worker", b"master"), "w1", KEY, NOW)[1] == "not signed with this cluster's key"
    assert check_record(value, "w2", KEY, NOW) == (None, "it names another node ('w1')")
    future = seal(honest(published=NOW + FUTURE_SKEW + 1), KEY)
    assert check_record(future, "w1", KEY, NOW) == (None, "published in the future")
    padded = b" " * MAX_RECORD_BYTES + value
    assert check_record(padded, "w1", KEY, NOW) == (None, f"larger than {MAX_RECORD_BYTES} bytes")


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe", b"[" * 50_000, b'{"sig": "x", "node": NaN}', b'{"sig": "\\ud800"}', b"1" * 5000, b'"text"'],
)
def test_garbage_is_refused_with_a_reason_never_a_traceback(value):
    record, why = check_record(value, "w1", KEY, NOW)
    assert record is None and why
