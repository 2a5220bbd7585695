"""Active limits (flowd.flow.limits): published by adaptive consumers into one hash per
queue, read back by stream_info, ``flowd info`` and the dashboard; on one Redis and on a
cluster, where a partition's stream lives in another slot than the queue's hash."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from flowd._redis.keys import partition_streams
from flowd.flow.limits import (
    KEY_TTL,
    STALE_AFTER,
    active_limits,
    limits_from_reply,
    limits_key,
    parse_limit,
    prune,
    publish,
    withdraw,
)
from flowd.info import ConsumerInfo, stream_info
from tests.helpers import run_flowd

ROOT = Path(__file__).resolve().parents[2]


def now_ms() -> int:
    return int(time.time() * 1000)


def with_consumers(client: Any, stream: str, group: str, *consumers: str) -> None:
    """A real group of ``stream`` with each consumer made by an XREADGROUP."""
    for n in range(len(consumers)):
        client.xadd(stream, {"n": str(n)})
    client.xgroup_create(stream, group, id="0")
    for consumer in consumers:
        client.xreadgroup(group, consumer, {stream: ">"}, count=1)


def consumers_of(info: Any, group: str) -> dict[str, ConsumerInfo]:
    (found,) = [g for g in info.groups if g.name == group]
    return {c.name: c for c in found.consumers}


def test_key_is_the_queues_and_in_its_slot() -> None:
    assert limits_key("emails") == "{emails}:active-limits"
    assert limits_key("{shop}:emails") == "{shop}:emails:active-limits"


def test_publish_read_withdraw(flow_client: Any, stream: str) -> None:
    # Given two consumers that published their limits
    publish(flow_client, stream, "g", "c1", 3, 8, now_ms())
    publish(flow_client, stream, "g", "c2", 8, 8, now_ms())
    publish(flow_client, stream, "other", "c1", 1, 4, now_ms())
    # Then a reader sees each by (group, consumer), and the hash expires unless written again
    assert active_limits(flow_client, stream, now_ms()) == {
        ("g", "c1"): (3, 8),
        ("g", "c2"): (8, 8),
        ("other", "c1"): (1, 4),
    }
    ttl = flow_client.pttl(limits_key(stream))
    assert KEY_TTL * 1000 - 5000 < ttl <= KEY_TTL * 1000
    # When one publishes again, its entry is replaced
    publish(flow_client, stream, "g", "c1", 5, 8, now_ms())
    assert active_limits(flow_client, stream, now_ms())[("g", "c1")] == (5, 8)
    # When one withdraws (a clean stop), it is gone; withdrawing again is harmless
    withdraw(flow_client, stream, "g", "c1")
    withdraw(flow_client, stream, "g", "c1")
    assert set(active_limits(flow_client, stream, now_ms())) == {("g", "c2"), ("other", "c1")}


def test_stale_and_malformed_entries_are_skipped(flow_client: Any, stream: str) -> None:
    # Given a fresh entry, one older than STALE_AFTER, and entries that do not parse
    now = now_ms()
    publish(flow_client, stream, "g", "fresh", 2, 4, now)
    publish(flow_client, stream, "g", "stale", 2, 4, now - int(STALE_AFTER * 1000) - 1000)
    key = limits_key(stream)
    good = json.dumps({"active": 1, "max": 2, "at": now})
    flow_client.hset(
        key,
        mapping={
            "not json": good,
            json.dumps(["g", "bad-value"]): "{",
            json.dumps(["g", "one-name"])[:-1] + ', "x"]': good,
            json.dumps(["g"]): good,
            json.dumps([1, 2]): good,
            json.dumps(["g", "no-max"]): json.dumps({"active": 1, "at": now}),
            json.dumps(["g", "str-max"]): json.dumps({"active": 1, "max": "8", "at": now}),
            json.dumps(["g", "bool"]): json.dumps({"active": True, "max": 8, "at": now}),
            json.dumps(["g", "no-at"]): json.dumps({"active": 1, "max": 8}),
            json.dumps(["g", "list"]): json.dumps([1, 8, now]),
            json.dumps(["g", "bad-utf8"]).encode(): b"\xff\xfe",
        },
    )
    # Then only the fresh one is read, and nothing raises
    assert active_limits(flow_client, stream, now_ms()) == {("g", "fresh"): (2, 4)}
    # And a reply that is no map, or an error, reads as nothing
    assert limits_from_reply(None, now) == {}
    assert limits_from_reply([b"odd"], now) == {}
    assert limits_from_reply(5, now) == {}
    assert limits_from_reply(redis.exceptions.ResponseError("WRONGTYPE"), now) == {}
    # When the hash is pruned, only the fresh entry is left
    assert prune(flow_client, stream, now_ms()) == 12
    assert flow_client.hlen(key) == 1 and prune(flow_client, stream, now_ms()) == 0
    # And one value (an HMGET item) parses the same way
    assert parse_limit(json.dumps({"active": 1, "max": 2, "at": now}).encode(), now) == (1, 2)
    for value in (None, 5, b"\xff", "{", "[]", json.dumps({"active": 1, "max": 2, "at": 0})):
        assert parse_limit(value, now) is None


def test_stream_info_shows_each_consumers_limit(
    flow_client: Any, stream: str, partitions: int
) -> None:
    # Given a queue (partitioned on the cluster) whose consumers read, two of them adaptive
    streams = partition_streams(stream, partitions)
    for name in streams:
        with_consumers(flow_client, name, "g", "adaptive", "fixed")
    publish(flow_client, stream, "g", "adaptive", 3, 8, now_ms())
    publish(flow_client, stream, "g", "gone", 1, 8, now_ms())  # no such consumer in the group
    publish(flow_client, stream, "other", "fixed", 2, 2, now_ms())  # another group's
    for name in streams:
        # When its info is read (a partition's with its queue as the base stream)
        info = stream_info(flow_client, name, base_stream=stream)
        # Then the adaptive consumer shows its limit, and the other none
        consumers = consumers_of(info, "g")
        assert set(consumers) == {"adaptive", "fixed"}
        assert (consumers["adaptive"].active_limit, consumers["adaptive"].concurrency) == (3, 8)
        assert (consumers["fixed"].active_limit, consumers["fixed"].concurrency) == (None, None)
        (group,) = info.to_dict()["groups"]
        by_name = {c["name"]: c for c in group["consumers"]}
        assert by_name["adaptive"]["active_limit"] == 3 and by_name["adaptive"]["concurrency"] == 8
        assert by_name["fixed"]["active_limit"] is None and by_name["fixed"]["concurrency"] is None
        lines = info.to_text().splitlines()
        assert "  consumer adaptive: pending 1, idle " in "\n".join(lines)
        (adaptive,) = [line for line in lines if line.startswith("  consumer adaptive:")]
        (fixed,) = [line for line in lines if line.startswith("  consumer fixed:")]
        assert adaptive.endswith(" ms, active limit 3 of 8")
        assert "active limit" not in fixed
    # When the adaptive consumer withdraws, or its entry goes stale, no limit shows
    withdraw(flow_client, stream, "g", "adaptive")
    assert limit_of(flow_client, streams[0], stream) == (None, None)
    publish(flow_client, stream, "g", "adaptive", 3, 8, now_ms() - int(STALE_AFTER * 1000) - 1)
    assert limit_of(flow_client, streams[0], stream) == (None, None)


def limit_of(client: Any, name: str, base: str) -> tuple[int | None, int | None]:
    adaptive = consumers_of(stream_info(client, name, base_stream=base), "g")["adaptive"]
    return adaptive.active_limit, adaptive.concurrency


@pytest.mark.parametrize(("decode", "protocol"), [(False, 2), (True, 2), (True, 3)])
def test_read_with_any_client(redis_url: str, stream: str, decode: bool, protocol: int) -> None:
    made = redis.Redis.from_url(redis_url, decode_responses=decode, protocol=protocol)
    try:
        with_consumers(made, stream, "g", "c")
        publish(made, stream, "g", "c", 4, 6, now_ms())
        assert active_limits(made, stream, now_ms()) == {("g", "c"): (4, 6)}
        assert consumers_of(stream_info(made, stream), "g")["c"].active_limit == 4
    finally:
        made.close()


def test_a_limits_key_of_another_type_does_not_break_info(client: redis.Redis, stream: str) -> None:
    with_consumers(client, stream, "g", "c")
    client.set(limits_key(stream), "not a hash")
    info = stream_info(client, stream)
    assert consumers_of(info, "g")["c"].active_limit is None


def test_flowd_info_prints_and_dumps_the_limit(
    redis_url: str, client: redis.Redis, stream: str
) -> None:
    # Given a group whose consumer published an active limit of 3 of its 8 threads
    with_consumers(client, stream, "g", "worker-1")
    publish(client, stream, "g", "worker-1", 3, 8, now_ms())
    env = {**os.environ, "FLOWD_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    # When `flowd info` runs, Then the consumer's line says so
    text = run_flowd(["info", stream], env, cwd=None)
    assert text.returncode == 0, text.stderr
    (line,) = [line for line in text.stdout.splitlines() if "consumer worker-1:" in line]
    assert line.endswith("active limit 3 of 8"), line
    # And `--json` has both numbers
    dumped = run_flowd(["info", stream, "--json"], env, cwd=None)
    assert dumped.returncode == 0, dumped.stderr
    (group,) = json.loads(dumped.stdout)["groups"]
    (consumer,) = group["consumers"]
    assert (consumer["active_limit"], consumer["concurrency"]) == (3, 8)
