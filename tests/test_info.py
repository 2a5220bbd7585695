"""stream_info: lengths, groups, consumers, lag and the DLQ, on a real Redis (6.2 or 7.x).

Redis 7 reports a group's lag in XINFO GROUPS, except after some deletions;
Redis 6.2 never does. The expected numbers below are the same on both: run
the suite with FLOWD_REDIS_SERVER pointing at a 6.2 binary to cover both paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import flowd
from flowd.info import ConsumerInfo, GroupInfo, StreamInfo, stream_info
from tests.helpers import Numbered, as_str, numbered_queue, wait_until
from tests.redis_server import RedisServer

WAIT = 25.0


@pytest.fixture(
    params=[(False, 2), (True, 2), (True, 3)], ids=["bytes", "decoded", "decoded-resp3"]
)
def info_client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """Clients with and without decode_responses, on RESP2 and RESP3."""
    decode, protocol = request.param
    client = redis.Redis.from_url(redis_url, decode_responses=decode, protocol=protocol)
    yield client
    client.close()


def add(client: redis.Redis, stream: str, count: int) -> list[str]:
    return [as_str(client.xadd(stream, {"n": str(i)})) for i in range(count)]


def read(client: redis.Redis, stream: str, group: str, consumer: str, count: int) -> list[str]:
    reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [as_str(msg_id) for _, entries in reply for msg_id, _ in entries]


def id_ms(msg_id: str) -> int:
    return int(msg_id.split("-")[0])


def groups_by_name(info: StreamInfo) -> dict[str, GroupInfo]:
    return {group.name: group for group in info.groups}


def no_pending(name: str, last: str, lag: int, consumers: tuple[ConsumerInfo, ...]) -> GroupInfo:
    return GroupInfo(
        name=name,
        consumers=consumers,
        pending=0,
        last_delivered_id=last,
        lag=lag,
        lag_exact=True,
        oldest_pending_id=None,
        oldest_pending_age_ms=None,
        oldest_pending_idle_ms=None,
        oldest_pending_deliveries=None,
    )


# ---------------------------------------------------------------------------
# Arguments, missing and empty streams


def test_arguments_are_validated(client: redis.Redis, stream: str) -> None:
    for kwargs in (
        {"stream": ""},
        {"stream": 5},
        {"stream": stream, "group": ""},
        {"stream": stream, "dlq_stream": ""},
        {"stream": stream, "lag_scan_limit": 0},
        {"stream": stream, "lag_scan_limit": True},
    ):
        with pytest.raises(flowd.ConfigurationError):
            stream_info(client, **kwargs)
    with pytest.raises(flowd.ConfigurationError):
        stream_info(object(), stream)


def test_missing_stream_reads_as_empty(info_client: redis.Redis, stream: str) -> None:
    info = stream_info(info_client, stream)
    assert info.to_text() == (
        f"stream {stream}: 0 entries; dead letters: 0 in {{{stream}}}:dead\nno consumer groups"
    )
    assert info == StreamInfo(
        stream=stream,
        length=0,
        first_id=None,
        last_id=None,
        dlq_stream=f"{{{stream}}}:dead",
        dlq_length=0,
        groups=(),
        eviction_policy="noeviction",
    )
    assert info.to_dict() == {
        "stream": stream,
        "length": 0,
        "first_id": None,
        "last_id": None,
        "dlq_stream": f"{{{stream}}}:dead",
        "dlq_length": 0,
        "groups": [],
        "scheduled": 0,
        "schedules": [],
        "eviction_policy": "noeviction",
        "paused": False,
    }


def test_empty_stream_with_a_group(info_client: redis.Redis, stream: str) -> None:
    info_client.xgroup_create(stream, "g", id="0", mkstream=True)
    info = stream_info(info_client, stream)
    assert (info.length, info.first_id, info.last_id) == (0, None, None)
    assert info.groups == (no_pending("g", "0-0", 0, ()),)


def test_key_of_another_type_is_a_redis_error(client: redis.Redis, stream: str) -> None:
    client.set(stream, "not a stream")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        stream_info(client, stream)


# ---------------------------------------------------------------------------
# Groups: every number


def test_two_groups_one_caught_up_one_lagging(
    info_client: redis.Redis, client: redis.Redis, stream: str
) -> None:
    # Given 10 entries and two groups:
    #   "caught" read and acked all of them;
    #   "lagging" had 4 read by c1 (first one acked) and 2 by c2, none acked.
    started_ms = time.time() * 1000
    ids = add(client, stream, 10)
    client.xgroup_create(stream, "caught", id="0")
    client.xgroup_create(stream, "lagging", id="0")
    assert read(client, stream, "caught", "c", 100) == ids
    client.xack(stream, "caught", *ids)
    assert read(client, stream, "lagging", "c1", 4) == ids[:4]
    client.xack(stream, "lagging", ids[0])
    assert read(client, stream, "lagging", "c2", 2) == ids[4:6]
    client.xadd(f"{{{stream}}}:dead", {"n": "99"})
    # so that idle times are measurably above zero
    wait_until(
        lambda: all(
            row["time_since_delivered"] >= 20
            for row in client.xpending_range(stream, "lagging", min="-", max="+", count=10)
        )
    )

    # When the stream is inspected
    before_ms = time.time() * 1000
    info = stream_info(info_client, stream)
    after_ms = time.time() * 1000

    # Then the stream's numbers are exact
    assert (info.stream, info.length, info.first_id, info.last_id) == (stream, 10, ids[0], ids[-1])
    assert (info.dlq_stream, info.dlq_length) == (f"{{{stream}}}:dead", 1)
    groups = groups_by_name(info)
    assert sorted(groups) == ["caught", "lagging"]

    # And the caught-up group has nothing pending and no lag
    caught = groups["caught"]
    (c,) = caught.consumers
    assert (c.name, c.pending) == ("c", 0)
    assert 0 <= c.idle_ms <= after_ms - started_ms
    assert caught == no_pending("caught", ids[-1], 0, (c,))

    # And the lagging one: 5 pending (3 + 2), 4 never delivered, the oldest pending is ids[1]
    lagging = groups["lagging"]
    assert [(x.name, x.pending) for x in lagging.consumers] == [("c1", 3), ("c2", 2)]
    assert all(20 <= x.idle_ms <= after_ms - started_ms for x in lagging.consumers)
    assert (lagging.pending, lagging.last_delivered_id) == (5, ids[5])
    assert (lagging.lag, lagging.lag_exact) == (4, True)
    assert lagging.oldest_pending_id == ids[1]
    assert lagging.oldest_pending_deliveries == 1
    idle = lagging.oldest_pending_idle_ms
    age = lagging.oldest_pending_age_ms
    assert idle is not None and age is not None
    assert 20 <= idle <= after_ms - started_ms
    # Delivered after it was added; idle and age come from two clock readings, a few ms
    # apart on a loaded machine.
    assert idle <= age + 5
    assert before_ms - id_ms(ids[1]) - 5 <= age <= after_ms - id_ms(ids[1]) + 5

    # And the output is plain JSON, group by group
    as_dict = info.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert [g["name"] for g in as_dict["groups"]] == [g.name for g in info.groups]
    assert as_dict["groups"][0]["consumers"][0]["name"] in ("c", "c1")
    assert set(as_dict["groups"][0]) == {
        "name",
        "consumers",
        "pending",
        "last_delivered_id",
        "lag",
        "lag_exact",
        "oldest_pending_id",
        "oldest_pending_age_ms",
        "oldest_pending_idle_ms",
        "oldest_pending_deliveries",
        "paused",
    }

    # And the text form has one line for the stream, then each group and its consumers
    lines = info.to_text().splitlines()
    assert lines[0] == (
        f"stream {stream}: 10 entries ({ids[0]} .. {ids[-1]}); dead letters: 1 in {{{stream}}}:dead"
    )
    assert lines[1:3] == [
        f"group caught: pending 0, lag 0, last delivered {ids[-1]}",
        f"  consumer c: pending 0, idle {c.idle_ms} ms",
    ]
    assert lines[3] == (
        f"group lagging: pending 5, lag 4, last delivered {ids[5]}; oldest pending {ids[1]} "
        f"(age {age} ms, idle {idle} ms, 1 deliveries)"
    )
    assert lines[4].startswith("  consumer c1: pending 3, idle ")
    assert lines[5].startswith("  consumer c2: pending 2, idle ")

    # And one group can be asked for alone; an unknown group is simply absent
    only = stream_info(info_client, stream, group="lagging")
    assert [g.name for g in only.groups] == ["lagging"]
    assert only.groups[0].lag == 4 and only.groups[0].pending == 5
    assert stream_info(info_client, stream, group="nope").groups == ()


def test_redelivered_oldest_pending_counts_deliveries(client: redis.Redis, stream: str) -> None:
    ids = add(client, stream, 3)
    client.xgroup_create(stream, "g", id="0")
    read(client, stream, "g", "c1", 2)
    client.xclaim(stream, "g", "c2", 0, [ids[0]])
    client.xclaim(stream, "g", "c2", 0, [ids[0]])

    (group,) = stream_info(client, stream).groups

    assert (group.oldest_pending_id, group.oldest_pending_deliveries) == (ids[0], 3)
    assert [(c.name, c.pending) for c in group.consumers] == [("c1", 1), ("c2", 1)]
    assert (group.pending, group.lag, group.last_delivered_id) == (2, 1, ids[1])


# ---------------------------------------------------------------------------
# Lag when the server cannot tell


def test_lag_is_counted_after_a_deletion(
    info_client: redis.Redis, client: redis.Redis, stream: str
) -> None:
    # Given a group that read 3 of 10 entries, then one undelivered entry deleted
    # (Redis 7 then reports lag as nil; Redis 6.2 never reports it)
    ids = add(client, stream, 10)
    client.xgroup_create(stream, "g", id="0")
    read(client, stream, "g", "c", 3)
    client.xdel(stream, ids[6])

    # Then the lag is counted exactly: ids[3:] without ids[6]
    (group,) = stream_info(info_client, stream).groups
    assert (group.lag, group.lag_exact) == (6, True)

    # And a scan limit below the lag gives a lower bound, marked as such
    (group,) = stream_info(info_client, stream, lag_scan_limit=4).groups
    assert (group.lag, group.lag_exact) == (4, False)
    assert "lag >= 4," in stream_info(info_client, stream, lag_scan_limit=4).to_text()
    (group,) = stream_info(info_client, stream, lag_scan_limit=6).groups
    assert (group.lag, group.lag_exact) == (6, True)


def test_lag_of_groups_before_the_first_entry_and_at_the_end(
    client: redis.Redis, stream: str
) -> None:
    # Given 10 entries trimmed to their last 5 and a deletion in what is left, and
    # groups: "old" delivered 2 of the trimmed ones, "new" starts at "$",
    # "zero" starts at 0
    ids = add(client, stream, 10)
    client.xgroup_create(stream, "old", id="0")
    read(client, stream, "old", "c", 2)
    client.xtrim(stream, maxlen=5, approximate=False)
    client.xdel(stream, ids[7])
    client.xgroup_create(stream, "new", id="$")
    client.xgroup_create(stream, "zero", id="0")

    groups = groups_by_name(stream_info(client, stream))

    assert (groups["old"].lag, groups["old"].lag_exact) == (4, True)
    assert (groups["old"].pending, groups["old"].last_delivered_id) == (2, ids[1])
    assert (groups["new"].lag, groups["new"].last_delivered_id) == (0, ids[9])
    assert (groups["zero"].lag, groups["zero"].last_delivered_id) == (4, "0-0")

    # And a group that reads everything has no lag, even across the deleted entry
    assert len(read(client, stream, "zero", "c", 100)) == 4
    assert groups_by_name(stream_info(client, stream))["zero"].lag == 0


# ---------------------------------------------------------------------------
# With a real queue and its dead letters


def test_dead_letters_of_a_real_queue_are_counted(client: redis.Redis, stream: str) -> None:
    # Given a queue whose worker fails every job, dead-lettered on the first retry
    ids = flowd.Producer(client, stream).enqueue_bulk([Numbered(n) for n in range(3)])
    claimer = flowd.Claimer(min_idle_time=0.1, max_retries=0, interval=0.05)

    def fail(task: flowd.Task[Any]) -> None:
        raise RuntimeError("boom")

    queue = numbered_queue(client, stream, fail, claimer=claimer, block=0.2)
    handle = queue.run()
    try:
        wait_until(lambda: stream_info(client, stream).dlq_length == 3, timeout=WAIT)
        wait_until(lambda: stream_info(client, stream).groups[0].pending == 0, timeout=WAIT)
    finally:
        assert handle.stop(timeout=5)

    # Then the stream keeps its entries, all delivered and none pending
    info = stream_info(client, stream)
    assert (info.length, info.first_id, info.last_id, info.dlq_length) == (3, ids[0], ids[-1], 3)
    (group,) = info.groups
    assert (group.name, group.pending, group.lag, group.last_delivered_id) == ("g", 0, 0, ids[-1])
    assert [(c.name, c.pending) for c in group.consumers] == [(handle.consumer, 0)]
    assert group.oldest_pending_id is None

    # And a custom DLQ name is read when given
    assert stream_info(client, stream, dlq_stream="elsewhere").dlq_length == 0


# ---------------------------------------------------------------------------
# No connection details in the output


def test_output_holds_no_connection_details() -> None:
    # Given a private server that requires a password, and a client that knows it
    server = RedisServer()
    server.start()
    try:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            admin.config_set("requirepass", "s3cr3t-pw")
        finally:
            admin.close()
        client = redis.Redis.from_url(f"redis://:s3cr3t-pw@127.0.0.1:{server.port}/0")
        try:
            client.xadd("jobs", {"n": "1"})
            client.xgroup_create("jobs", "g", id="0")
            read(client, "jobs", "g", "c", 1)
            # When its stream is inspected
            text = json.dumps(stream_info(client, "jobs").to_dict())
        finally:
            client.close()
    finally:
        server.close()
    # Then the output names neither the password nor the address
    assert "s3cr3t" not in text
    assert "127.0.0.1" not in text and str(server.port) not in text
