"""flowd/_redis/replies.py parsers, on literal replies and on a real server; RESP3 end to end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import flowd
from flowd._consumer.group_loss import last_delivered
from flowd._redis.replies import id_key, parse_xautoclaim, parse_xpending_range, parse_xreadgroup
from flowd._redis.session import Session
from tests.helpers import Numbered, as_str, numbered_queue, wait_until

GROUP = "g"
WAIT = 25.0


# ---------------------------------------------------------------------------
# parse_xreadgroup


def test_xreadgroup_resp2_list_shape() -> None:
    # Given a RESP2 reply: [[stream, [[id, [k, v, ...]], ...]]]
    reply = [
        [b"s", [[b"1-0", [b"n", b"1", b"x", b"y"]], [b"1-1", [b"n", b"2"]]]],
    ]
    # When it is parsed / Then ids are str and fields a bytes dict, in order
    assert parse_xreadgroup(reply) == [
        ("1-0", {b"n": b"1", b"x": b"y"}),
        ("1-1", {b"n": b"2"}),
    ]


def test_xreadgroup_resp3_dict_shape() -> None:
    # Given a RESP3 reply: {stream: [[id, [k, v, ...]], ...]}
    reply = {b"s": [[b"1-0", [b"n", b"1"]], [b"2-0", [b"n", b"2"]]]}
    # When it is parsed / Then it matches the RESP2 result
    assert parse_xreadgroup(reply) == [("1-0", {b"n": b"1"}), ("2-0", {b"n": b"2"})]


def test_xreadgroup_field_maps_and_str_values() -> None:
    # Given entries whose fields come as a map, and str instead of bytes
    reply = {"s": [["1-0", {"n": "1"}], [b"2-0", {b"n": b"2"}]]}
    # Then both are normalised to str ids and bytes fields
    assert parse_xreadgroup(reply) == [("1-0", {b"n": b"1"}), ("2-0", {b"n": b"2"})]


@pytest.mark.parametrize("reply", [None, [], {}], ids=repr)
def test_xreadgroup_timeout_is_empty(reply: Any) -> None:
    # Given a BLOCK that timed out / Then there are no entries
    assert parse_xreadgroup(reply) == []


def test_xreadgroup_history_with_deleted_entry_has_none_fields() -> None:
    # Given a read of own pending history where one entry was deleted
    reply = [[b"s", [[b"1-0", [b"n", b"1"]], [b"1-1", None]]]]
    # Then the deleted one comes back with None fields
    assert parse_xreadgroup(reply) == [("1-0", {b"n": b"1"}), ("1-1", None)]


# ---------------------------------------------------------------------------
# parse_xautoclaim


def test_xautoclaim_7x_shape_lists_deleted_ids() -> None:
    # Given a Redis 7.x reply: [cursor, entries, deleted ids]
    reply = [b"5-0", [[b"1-0", [b"n", b"1"]], [b"3-0", [b"n", b"3"]]], [b"2-0", b"4-0"]]
    # When it is parsed
    cursor, claimed, deleted = parse_xautoclaim(reply)
    # Then the cursor, the claimed entries and the deleted ids come apart
    assert cursor == "5-0"
    assert claimed == [("1-0", {b"n": b"1"}), ("3-0", {b"n": b"3"})]
    assert deleted == ["2-0", "4-0"]


def test_xautoclaim_7x_shape_without_deletions() -> None:
    reply = [b"0-0", [[b"1-0", [b"n", b"1"]]], []]
    assert parse_xautoclaim(reply) == ("0-0", [("1-0", {b"n": b"1"})], [])


def test_xautoclaim_6_2_shape_nil_fields_are_deleted() -> None:
    # Given a 2-element reply whose deleted entry carries nil fields
    reply = [b"0-0", [[b"1-0", [b"n", b"1"]], [b"2-0", None], [b"3-0", [b"n", b"3"]]]]
    # When it is parsed
    cursor, claimed, deleted = parse_xautoclaim(reply)
    # Then the nil-field entry is reported deleted, not claimed
    assert cursor == "0-0"
    assert claimed == [("1-0", {b"n": b"1"}), ("3-0", {b"n": b"3"})]
    assert deleted == ["2-0"]


def test_xautoclaim_6_2_real_shape_bare_nil_entry_does_not_break_parsing() -> None:
    # Given what Redis 6.2 really sends for a deleted entry: a bare nil in
    # place of the whole [id, fields] pair (captured from redis-server 6.2.14)
    reply = [b"0-0", [[b"1-0", [b"n", b"1"]], None, [b"3-0", [b"n", b"3"]]]]
    # When it is parsed
    result = parse_xautoclaim(reply)
    # Then the cursor and the live entries still come out (the deleted entry's
    # id is not in the reply; finding it is the claimer's job)
    assert result[0] == "0-0"
    assert result[1] == [("1-0", {b"n": b"1"}), ("3-0", {b"n": b"3"})]


@pytest.mark.parametrize("reply", [[b"0-0", []], [b"0-0", [], []], ["0-0", [], []]], ids=repr)
def test_xautoclaim_nothing_claimed(reply: Any) -> None:
    assert parse_xautoclaim(reply) == ("0-0", [], [])


# ---------------------------------------------------------------------------
# parse_xpending_range


def test_xpending_range_extended_form() -> None:
    # Given XPENDING's extended form: [[id, consumer, idle ms, deliveries], ...]
    reply = [[b"1-0", b"alice", 1500, 2], ["2-0", "bob", b"10", b"1"]]
    # Then it maps id -> (consumer, idle ms, deliveries)
    assert parse_xpending_range(reply) == {"1-0": ("alice", 1500, 2), "2-0": ("bob", 10, 1)}


@pytest.mark.parametrize("reply", [None, []], ids=repr)
def test_xpending_range_empty(reply: Any) -> None:
    assert parse_xpending_range(reply) == {}


# ---------------------------------------------------------------------------
# The parsers against the real server


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def resp_client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """A client speaking RESP2, then one speaking RESP3."""
    with redis.Redis.from_url(redis_url, protocol=request.param) as client:
        yield client


def _pending_with_one_deleted(client: redis.Redis, stream: str) -> list[str]:
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [client.xadd(stream, {"n": str(n)}) for n in range(3)]
    texts = [as_str(i) for i in ids]
    client.xreadgroup(GROUP, "dead", {stream: ">"})
    assert client.xdel(stream, texts[1]) == 1
    return texts


def test_real_xautoclaim_reports_a_deleted_pending_entry(
    any_client: redis.Redis, stream: str, redis_version: tuple[int, ...]
) -> None:
    # Given 3 entries pending under a dead consumer, the middle one deleted
    ids = _pending_with_one_deleted(any_client, stream)
    session = Session(any_client)
    try:
        # When XAUTOCLAIM runs through flowd's Session and parser
        reply = session.call("XAUTOCLAIM", stream, GROUP, "me", 0, "0-0", "COUNT", 10)
        result = parse_xautoclaim(reply)
        pel = parse_xpending_range(session.call("XPENDING", stream, GROUP, "-", "+", 10))
    finally:
        session.close()
    # Then the live entries are claimed, and the deleted one is not among them
    assert result[0] == "0-0"
    assert [msg_id for msg_id, _ in result[1]] == [ids[0], ids[2]], repr(reply)
    assert result[1][0][1] == {b"n": b"0"}
    if redis_version >= (7, 0):
        # ... 7.x names it, and has already dropped it from the PEL
        assert result[2] == [ids[1]]
        assert ids[1] not in pel
    else:
        # ... 6.2 sends a bare nil without its id and leaves it pending under
        # the claiming consumer: the claimer must find and ack it (test_claimer.py)
        assert pel[ids[1]][0] == "me"


def test_real_xpending_range_counts_deliveries(any_client: redis.Redis, stream: str) -> None:
    # Given an entry delivered to "dead" and then claimed by "me"
    ids = _pending_with_one_deleted(any_client, stream)
    session = Session(any_client)
    try:
        session.call("XAUTOCLAIM", stream, GROUP, "me", 0, "0-0", "COUNT", 10)
        # When XPENDING's extended form is parsed
        pending = parse_xpending_range(session.call("XPENDING", stream, GROUP, "-", "+", 10))
        # Then it shows the new owner and 2 deliveries
        assert pending[ids[0]][0] == "me"
        assert pending[ids[0]][2] == 2
        assert pending[ids[2]][2] == 2
    finally:
        session.close()


def test_real_xreadgroup_reply_parses_on_both_protocols(
    resp_client: redis.Redis, stream: str
) -> None:
    # Given a client speaking RESP2 or RESP3
    session = Session(resp_client)
    try:
        resp_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        first = as_str(resp_client.xadd(stream, {"n": "1"}))
        second = as_str(resp_client.xadd(stream, {"n": "2", "extra": "é"}))
        # When XREADGROUP's raw reply is parsed
        reply = session.call("XREADGROUP", "GROUP", GROUP, "c", "COUNT", 10, "STREAMS", stream, ">")
        # Then both entries come back, with bytes fields
        assert parse_xreadgroup(reply) == [
            (first, {b"n": b"1"}),
            (second, {b"n": b"2", b"extra": "é".encode()}),
        ]
        # ... and an empty BLOCK read is empty
        empty = session.call("XREADGROUP", "GROUP", GROUP, "c", "BLOCK", 10, "STREAMS", stream, ">")
        assert parse_xreadgroup(empty) == []
    finally:
        session.close()


def test_real_xinfo_groups_reply_gives_last_delivered_id(
    resp_client: redis.Redis, stream: str
) -> None:
    # Given a group that has delivered one of two entries, on RESP2 or RESP3
    session = Session(resp_client)
    try:
        resp_client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        resp_client.xgroup_create(stream, "other", id="0")
        first = as_str(resp_client.xadd(stream, {"n": "1"}))
        resp_client.xadd(stream, {"n": "2"})
        resp_client.xreadgroup(GROUP, "c", {stream: ">"}, count=1)
        # When XINFO GROUPS's raw reply is parsed
        reply = session.call("XINFO", "GROUPS", stream)
        # Then the group's last-delivered id is the entry it read, the other's 0-0
        assert last_delivered(reply, GROUP) == id_key(first)
        assert last_delivered(reply, "other") == (0, 0)
        assert last_delivered(reply, "missing") is None
    finally:
        session.close()


# ---------------------------------------------------------------------------
# RESP3 end to end


@pytest.fixture
def resp3_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, protocol=3)
    yield client
    client.close()


def test_queue_runs_end_to_end_on_a_resp3_client(resp3_client: redis.Redis, stream: str) -> None:
    # Given a RESP3 client, a queue with a claimer and a job that fails once
    lock = threading.Lock()
    runs: list[tuple[int, int]] = []
    dead: list[flowd.Task[Any]] = []

    def work(task: flowd.Task[Numbered]) -> None:
        with lock:
            runs.append((task.job.n, task.deliveries))
        if task.job.n == 0 and task.deliveries == 1:
            raise RuntimeError("first try fails")

    queue = numbered_queue(
        resp3_client,
        stream,
        work,
        block=0.5,
        claimer=flowd.Claimer(min_idle_time=0.3, interval=0.05, dlq_worker=dead.append),
    )
    handle = queue.run()
    try:
        # When 5 jobs and one undecodable message are added
        flowd.Producer(resp3_client, stream).enqueue_bulk([Numbered(n) for n in range(5)])
        bad = as_str(resp3_client.xadd(stream, {"other": "x"}))

        # Then every job succeeds (job 0 on its retry) and the bad one is dead-lettered
        wait_until(lambda: handle.stats().processed == 5, timeout=WAIT)
        wait_until(lambda: resp3_client.xlen(f"{{{stream}}}:dead") == 1, timeout=WAIT)
        wait_until(lambda: resp3_client.xpending(stream, GROUP)["pending"] == 0, timeout=WAIT)
        with lock:
            assert sorted(runs) == [(0, 1), (0, 2), (1, 1), (2, 1), (3, 1), (4, 1)]
        assert [t.id for t in dead] == [bad]
        assert handle.stats().retried == 1
    finally:
        assert handle.stop(timeout=5)
