"""Housekeeping: trimming consumed entries and removing idle consumers, directly and
through a running Queue, against a real Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import flowd
from flowd._consumer.context import StreamContext
from flowd._consumer.housekeeper import HousekeepingLoop
from flowd._consumer.permits import Permits
from flowd._redis.session import Session
from flowd.flow.priorities import band_streams
from tests.helpers import Numbered, as_str, id_key, numbered_queue, wait_until

GROUP = "g"


# ---------------------------------------------------------------------------
# helpers


def add_entries(client: redis.Redis, stream: str, count: int) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"n": n})
    return [as_str(msg_id) for msg_id in pipe.execute()]


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    entries: Any = client.xrange(stream)
    return [as_str(msg_id) for msg_id, _ in entries]


def read(client: redis.Redis, stream: str, group: str, consumer: str, count: int) -> list[str]:
    """XREADGROUP of new entries as ``consumer``: the ids read."""
    reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [as_str(msg_id) for msg_id, _ in reply[0][1]] if reply else []


def consumer_info(client: redis.Redis, stream: str, group: str = GROUP) -> dict[str, Any]:
    return {as_str(row["name"]): row for row in client.xinfo_consumers(stream, group)}


def housekeeping_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flowd-housekeeping-")]


def noop(task: flowd.Task[Numbered]) -> None:
    pass


@pytest.fixture
def lagging(client: redis.Redis, stream: str) -> Iterator[tuple[list[str], str]]:
    """2,000 entries; group ``fast`` read and acked them all, group ``slow`` read the first
    1,000 and acked the first 500. Yields the ids and the slow group's oldest pending id."""
    ids = add_entries(client, stream, 2_000)
    client.xgroup_create(stream, "fast", id="0")
    client.xgroup_create(stream, "slow", id="0")
    fast = read(client, stream, "fast", "f1", 2_000)
    client.xack(stream, "fast", *fast)
    slow = read(client, stream, "slow", "s1", 1_000)
    client.xack(stream, "slow", *slow[:500])
    assert as_str(client.xpending(stream, "slow")["min"]) == ids[500]
    yield ids, ids[500]


# ---------------------------------------------------------------------------
# trim_stream


@pytest.mark.parametrize("exact", [False, True], ids=["approximate", "exact"])
def test_trim_keeps_every_entry_a_lagging_group_still_needs(
    exact: bool, client: redis.Redis, stream: str, lagging: tuple[list[str], str]
) -> None:
    # Given a caught-up group and a lagging one whose oldest pending entry is ids[500]
    ids, oldest_pending = lagging

    # When the stream is trimmed
    result = flowd.trim_stream(client, stream, exact=exact)

    # Then it trims up to the lagging group's oldest pending entry, and not past it
    assert result.min_id == oldest_pending
    left = stream_ids(client, stream)
    assert left[-1500:] == ids[500:]
    assert all(id_key(msg_id) < id_key(oldest_pending) for msg_id in left[:-1500])
    assert result.removed == 2_000 - len(left)
    if exact:
        assert left == ids[500:]
        assert result.removed == 500
    # And the lagging group can still read and claim what it has not acked
    pending = client.xpending_range(stream, "slow", min="-", max="+", count=1_000)
    assert [as_str(row["message_id"]) for row in pending] == ids[500:1000]
    claimed: Any = client.xclaim(stream, "slow", "s2", 0, list[Any](ids[500:1000]))
    assert [as_str(msg_id) for msg_id, _ in claimed] == ids[500:1000]
    assert read(client, stream, "slow", "s1", 2_000) == ids[1000:]


def test_trim_keeps_what_a_group_has_not_read_yet(client: redis.Redis, stream: str) -> None:
    # Given a group that read (and acked) the first 300 of 1,000 entries, none pending
    ids = add_entries(client, stream, 1_000)
    client.xgroup_create(stream, GROUP, id="0")
    client.xack(stream, GROUP, *read(client, stream, GROUP, "c", 300))

    # When the stream is trimmed exactly
    result = flowd.trim_stream(client, stream, exact=True)

    # Then only entries up to its last-delivered id go; the unread ones stay
    assert result.min_id == ids[299]
    assert stream_ids(client, stream) == ids[299:]
    assert read(client, stream, GROUP, "c", 1_000) == ids[300:]


def test_trim_with_a_group_that_read_nothing_removes_nothing(
    client: redis.Redis, stream: str
) -> None:
    # Given a caught-up group and a group created at 0 that has read nothing
    add_entries(client, stream, 500)
    client.xgroup_create(stream, "done", id="0")
    client.xack(stream, "done", *read(client, stream, "done", "c", 500))
    client.xgroup_create(stream, "new", id="0")

    # When the stream is trimmed, even exactly
    result = flowd.trim_stream(client, stream, exact=True)

    # Then nothing is removed
    assert result.removed == 0
    assert client.xlen(stream) == 500


def test_one_approximate_trim_removes_all_consumed_nodes(client: redis.Redis, stream: str) -> None:
    # Given 30,000 entries that the only group has read and acked
    add_entries(client, stream, 30_000)
    client.xgroup_create(stream, GROUP, id="0")
    while ids := read(client, stream, GROUP, "c", 10_000):
        client.xack(stream, GROUP, *ids)

    # When the stream is trimmed once, approximately (as housekeeping does, once an interval)
    result = flowd.trim_stream(client, stream)

    # Then every whole node below the group's position is gone, not only the first
    # 10,000 entries (XTRIM's default LIMIT with "~"): otherwise a queue faster than
    # 10,000 jobs per housekeeping interval grows without bound
    assert client.xlen(stream) < 1_000, f"{result}, XLEN {client.xlen(stream)}"


def test_stream_without_groups_is_not_trimmed(client: redis.Redis, stream: str) -> None:
    # Given a stream that no consumer group reads
    add_entries(client, stream, 300)

    # When it is trimmed
    result = flowd.trim_stream(client, stream, exact=True)

    # Then it is left alone
    assert result == flowd.TrimResult(min_id="", removed=0)
    assert client.xlen(stream) == 300


def test_trim_of_a_missing_stream_does_nothing(client: redis.Redis, stream: str) -> None:
    # Given no stream at all
    # When it is trimmed
    result = flowd.trim_stream(client, stream)

    # Then nothing happens, and no key is created
    assert result == flowd.TrimResult(min_id="", removed=0)
    assert not client.exists(stream)


def test_running_queue_keeps_its_stream_short(client: redis.Redis, stream: str) -> None:
    # Given a queue with housekeeping every 0.2 s and a fast no-op worker
    queue = numbered_queue(
        client,
        stream,
        noop,
        concurrency=32,
        housekeeping=flowd.Housekeeping(interval=0.2),
        claimer=None,
    )
    handle = queue.run()
    try:
        # When 50,000 jobs are enqueued and processed
        producer = flowd.Producer(client, stream=stream)
        for start in range(0, 50_000, 10_000):
            producer.enqueue_bulk(Numbered(n=n) for n in range(start, start + 10_000))
        wait_until(lambda: handle.stats().processed >= 50_000, timeout=90, interval=0.1)
        wait_until(lambda: client.xpending(stream, GROUP)["pending"] == 0, timeout=30)

        # Then the stream holds only a remainder that approximate trimming keeps
        wait_until(lambda: client.xlen(stream) < 1_000, timeout=30, interval=0.1)
    finally:
        assert handle.stop(timeout=5)
    assert handle.stats().processed == 50_000
    assert client.xpending(stream, GROUP)["pending"] == 0


# ---------------------------------------------------------------------------
# remove_idle_consumers


def test_remove_idle_consumers_spares_pending_owners_and_kept_names(
    client: redis.Redis, stream: str
) -> None:
    # Given four consumers: one that read nothing, one that acked all it read,
    # one that owns a pending entry, and one named in `keep`
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = add_entries(client, stream, 2)
    assert read(client, stream, GROUP, "busy", 1) == ids[:1]
    client.xack(stream, GROUP, *read(client, stream, GROUP, "acked", 1))
    for name in ("empty", "kept"):
        assert read(client, stream, GROUP, name, 1) == []
        # (an XREADGROUP that reads nothing creates no consumer on Redis 7.0; 6.2 does)
        client.xgroup_createconsumer(stream, GROUP, name)
    assert set(consumer_info(client, stream)) == {"busy", "acked", "empty", "kept"}

    # When none has been idle for an hour
    # Then none is removed
    assert flowd.remove_idle_consumers(client, stream, GROUP, 3600) == []

    # When all have been idle for 0.2 s and those idle that long are removed
    wait_until(lambda: all(c["idle"] >= 200 for c in consumer_info(client, stream).values()))
    removed = flowd.remove_idle_consumers(client, stream, GROUP, 0.2, keep=("kept",))

    # Then the two without pending entries go, the pending owner and the kept one stay
    assert sorted(removed) == ["acked", "empty"]
    info = consumer_info(client, stream)
    assert set(info) == {"busy", "kept"}
    assert info["busy"]["pending"] == 1
    pending = client.xpending_range(stream, GROUP, min="-", max="+", count=10)
    assert [(as_str(r["message_id"]), as_str(r["consumer"])) for r in pending] == [(ids[0], "busy")]


def test_housekeeping_before_the_stream_or_group_exists_is_a_quiet_no_op(
    client: redis.Redis, stream: str
) -> None:
    # Given a housekeeping step whose stream does not exist yet (Redis just came back,
    # and the reader has not created the group)
    ctx = _context(client, stream, "early")
    try:
        loop = HousekeepingLoop(ctx, flowd.Housekeeping(interval=30))

        # When it runs, then it does its round without an error and removes nothing
        assert loop.run_once() is True
        # And the same with a stream that has another group but not this one
        client.xgroup_create(stream, "other", id="0", mkstream=True)
        client.delete(loop.lease_key)
        assert loop.run_once() is True
        assert flowd.remove_idle_consumers(client, stream, GROUP, 0.001) == []
        assert flowd.remove_idle_consumers(client, stream + "-missing", GROUP, 0.001) == []
        assert [as_str(g["name"]) for g in client.xinfo_groups(stream)] == ["other"]
    finally:
        ctx.redis.close()


def test_remove_idle_consumers_accepts_a_timedelta_and_refuses_bad_ttl(
    client: redis.Redis, stream: str
) -> None:
    from datetime import timedelta

    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    read(client, stream, GROUP, "c", 1)
    assert flowd.remove_idle_consumers(client, stream, GROUP, timedelta(hours=1)) == []
    with pytest.raises(flowd.ConfigurationError):
        flowd.remove_idle_consumers(client, stream, GROUP, -1)


def test_running_queue_removes_dead_consumers_but_keeps_its_own(
    client: redis.Redis, stream: str
) -> None:
    # Given consumers of earlier processes: one that read nothing, one that acked
    # everything, and one that still owns a pending entry
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    flowd.Producer(client, stream=stream).enqueue_bulk([Numbered(n=0), Numbered(n=1)])
    held = read(client, stream, GROUP, "dead-holder", 1)
    client.xack(stream, GROUP, *read(client, stream, GROUP, "dead-acked", 1))
    assert read(client, stream, GROUP, "dead-empty", 1) == []
    client.xgroup_createconsumer(stream, GROUP, "dead-empty")  # Redis 7.0 made none
    assert set(consumer_info(client, stream)) == {"dead-holder", "dead-acked", "dead-empty"}

    # When a queue runs with housekeeping every 0.2 s and a consumer TTL of 0.5 s
    queue = numbered_queue(
        client,
        stream,
        noop,
        consumer="live",
        block=5.0,
        housekeeping=flowd.Housekeeping(interval=0.2, consumer_ttl=0.5),
        claimer=None,
    )
    handle = queue.run()
    try:
        flowd.Producer(client, stream=stream).enqueue(Numbered(n=2))
        wait_until(lambda: handle.stats().processed == 1, timeout=30)

        # Then the dead consumers without pending entries are removed
        wait_until(
            lambda: set(consumer_info(client, stream)) == {"live", "dead-holder"},
            timeout=30,
        )
        # And its own consumer stays although idle past the TTL (its read blocks for 5 s),
        # as does the one owning a pending entry
        wait_until(lambda: consumer_info(client, stream)["live"]["idle"] > 1_500, timeout=30)
        info = consumer_info(client, stream)
        assert set(info) == {"live", "dead-holder"}
        assert info["dead-holder"]["pending"] == 1
    finally:
        assert handle.stop(timeout=5)
    pending = client.xpending_range(stream, GROUP, min="-", max="+", count=10)
    assert [as_str(row["message_id"]) for row in pending] == held


# ---------------------------------------------------------------------------
# one consumer at a time: the lease


def _dispatch_nothing(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("housekeeping dispatches nothing")


def _context(client: redis.Redis, stream: str, consumer: str) -> StreamContext:
    """What a housekeeping loop of ``consumer`` gets: names, a session, a stop event."""
    return StreamContext(
        stream=stream,
        group=GROUP,
        consumer=consumer,
        session=Session(client, stream),
        permits=Permits(1),
        stop=threading.Event(),
        dispatch=_dispatch_nothing,
        held=set,
        running_since=lambda cutoff: [],
    )


def test_housekeeping_lease_lets_one_run_per_interval(client: redis.Redis, stream: str) -> None:
    # Given two consumers of one stream, each with a housekeeping step
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    settings = flowd.Housekeeping(interval=30)
    contexts = [_context(client, stream, name) for name in ("first", "second")]
    try:
        first, second = (HousekeepingLoop(ctx, settings) for ctx in contexts)

        # When the first one runs
        # Then it does the work and holds the lease for the interval
        assert first.run_once() is True
        lease = "{" + stream + "}:housekeeping"
        assert first.lease_key == lease
        assert 0 < client.pttl(lease) <= 30_000
        assert as_str(client.get(lease)) == "first"

        # And within the interval neither consumer runs again
        assert second.run_once() is False
        assert first.run_once() is False

        # And once the lease is gone, the next one does
        client.delete(lease)
        assert second.run_once() is True
        assert as_str(client.get(lease)) == "second"
    finally:
        for ctx in contexts:
            ctx.redis.close()


def test_running_queue_takes_the_housekeeping_lease(client: redis.Redis, stream: str) -> None:
    # Given a queue with housekeeping every 0.5 s
    queue = numbered_queue(
        client, stream, noop, housekeeping=flowd.Housekeeping(interval=0.5), claimer=None
    )
    lease = "{" + stream + "}:housekeeping"
    handle = queue.run()
    try:
        # When it has run for a while
        # Then the lease names its consumer and expires on its own
        wait_until(lambda: client.get(lease), timeout=30)
        assert as_str(client.get(lease) or b"") == queue.consumer
        assert 0 < client.pttl(lease) <= 500 or not client.exists(lease)
    finally:
        assert handle.stop(timeout=5)


# ---------------------------------------------------------------------------
# configuration


def test_housekeeping_false_turns_it_off(client: redis.Redis, stream: str) -> None:
    # Given a stream whose consumed entries could be trimmed, and an idle dead consumer
    ids = add_entries(client, stream, 300)
    client.xgroup_create(stream, GROUP, id="0")
    client.xack(stream, GROUP, *read(client, stream, GROUP, "dead", 300))

    # When a queue runs with housekeeping=False
    queue = numbered_queue(client, stream, noop, housekeeping=False, claimer=None)
    assert queue.housekeeping is None
    handle = queue.run()
    try:
        # Then no housekeeping thread runs, and nothing is trimmed or removed
        assert housekeeping_threads() == []
        flowd.Producer(client, stream=stream).enqueue(Numbered(n=1))
        wait_until(lambda: handle.stats().processed == 1, timeout=30)
        assert housekeeping_threads() == []
        assert not client.exists("{" + stream + "}:housekeeping")
    finally:
        assert handle.stop(timeout=5)
    assert stream_ids(client, stream)[:300] == ids
    assert "dead" in consumer_info(client, stream)


def test_housekeeping_is_on_by_default(client: redis.Redis, stream: str) -> None:
    queue = numbered_queue(client, stream, noop, claimer=None)
    assert isinstance(queue.housekeeping, flowd.Housekeeping)
    handle = queue.run()
    try:
        # The stream's own, and its priority bands' (idle until a band stream exists)
        high, _, low = band_streams(stream)
        assert sorted(housekeeping_threads()) == sorted(
            f"flowd-housekeeping-{s}" for s in (stream, high, low)
        )
    finally:
        assert handle.stop(timeout=5)
    assert housekeeping_threads() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0},
        {"interval": -1},
        {"interval": float("nan")},
        {"interval": "60"},
        {"consumer_ttl": -1},
        {"consumer_ttl": 0},
        {"trim": "yes"},
    ],
    ids=repr,
)
def test_bad_housekeeping_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(flowd.ConfigurationError):
        flowd.Housekeeping(**kwargs)


def test_queue_refuses_a_bad_housekeeping_value(client: redis.Redis, stream: str) -> None:
    with pytest.raises(flowd.ConfigurationError):
        flowd.Queue(
            client,
            stream=stream,
            group=GROUP,
            job=Numbered,
            worker=noop,
            housekeeping=60,  # type: ignore[arg-type], claimer=None
        )


def test_housekeeping_accepts_none_ttl_and_timedelta() -> None:
    from datetime import timedelta

    settings = flowd.Housekeeping(interval=timedelta(seconds=5), trim=False, consumer_ttl=None)
    assert settings.interval == 5.0
    assert settings.trim is False
    assert settings.consumer_ttl is None
