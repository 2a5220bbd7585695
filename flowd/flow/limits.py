"""Active limits: how many of its threads each adaptive consumer lets run jobs now.

With adaptive concurrency a consumer's pool varies how many of its
``concurrency`` threads may run jobs at once (its active limit). ``flowd info``
and the dashboard read only Redis, so each adaptive consumer publishes its
limit into one hash per queue, ``{emails}:active-limits``, derived from the
queue's base stream (one hash for all its partitions and bands, in the base
stream's slot). A field is ``["group", "consumer"]`` (JSON); its value is
``{"active": 3, "max": 8, "at": <ms since the epoch>}`` (JSON).

A publisher writes again at least every few seconds, limit changed or not: a
reader skips an entry older than :data:`STALE_AFTER` seconds (its consumer has
stopped or lost Redis), and the whole hash expires :data:`KEY_TTL` seconds
after the last write of any consumer. A stop does not withdraw its entry (Redis
may be down then); the next consumer to start prunes stale entries.
"""

from __future__ import annotations

import json
from typing import Any

from .._redis.keys import derived_key
from .._redis.replies import _text, as_map
from .._redis.session import check_client

__all__ = [
    "KEY_TTL",
    "STALE_AFTER",
    "active_limits",
    "limit_field",
    "limits_from_reply",
    "limits_key",
    "parse_limit",
    "prune",
    "publish",
    "withdraw",
]

#: Seconds after which a reader ignores an entry that was not written again.
STALE_AFTER = 15.0
#: Seconds the hash lives after its last write.
KEY_TTL = 60.0


def limits_key(stream: str) -> str:
    """The hash of the active limits of the queue whose (base) stream is ``stream``."""
    return derived_key(stream, "active-limits")


def limit_field(group: str, consumer: str) -> str:
    """The field of ``consumer`` of ``group`` in :func:`limits_key`'s hash."""
    return json.dumps([group, consumer])


def publish(
    client: Any, stream: str, group: str, consumer: str, active: int, maximum: int, now_ms: int
) -> None:
    """Write ``consumer``'s active limit (``active`` of its ``maximum`` threads) at ``now_ms``
    (ms since the epoch, wall clock) and renew the hash's expiry: one pipelined round trip."""
    key = limits_key(stream)
    value = json.dumps({"active": active, "max": maximum, "at": now_ms})
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, limit_field(group, consumer), value)
    pipe.pexpire(key, int(KEY_TTL * 1000))
    pipe.execute()


def withdraw(client: Any, stream: str, group: str, consumer: str) -> None:
    """Remove ``consumer``'s entry (on a clean stop)."""
    client.hdel(limits_key(stream), limit_field(group, consumer))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_limit(value: Any, now_ms: int) -> tuple[int, int] | None:
    """(active, max) of one entry's value (bytes or text, e.g. an item of an HMGET reply of
    :func:`limit_field` fields), or None if it is missing, malformed or older than
    :data:`STALE_AFTER` seconds at ``now_ms``. Never raises."""
    if not isinstance(value, bytes | str):
        return None
    try:
        data = json.loads(_text(value))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    active, maximum, at = _count(data.get("active")), _count(data.get("max")), data.get("at")
    if active is None or maximum is None or isinstance(at, bool) or not isinstance(at, int | float):
        return None
    if now_ms - at > STALE_AFTER * 1000:
        return None
    return active, maximum


def _entry(field: Any, value: Any, now_ms: int) -> tuple[tuple[str, str], tuple[int, int]] | None:
    """One entry as ((group, consumer), (active, max)), or None if stale or malformed."""
    try:
        names = json.loads(_text(field))
    except (TypeError, ValueError):
        return None
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) for n in names)):
        return None
    limit = parse_limit(value, now_ms)
    return None if limit is None else ((names[0], names[1]), limit)


def limits_from_reply(reply: Any, now_ms: int) -> dict[tuple[str, str], tuple[int, int]]:
    """The fresh, well-formed entries of an HGETALL reply of :func:`limits_key` (a dict or
    a flat list, bytes or text): (group, consumer) -> (active, max). Never raises for an
    entry; an error reply or anything but a map reads as no entries."""
    if not reply or isinstance(reply, Exception):
        return {}
    try:
        items = as_map(reply).items()
    except (TypeError, ValueError):
        return {}
    found = (_entry(field, value, now_ms) for field, value in items)
    return dict(entry for entry in found if entry is not None)


def active_limits(client: Any, stream: str, now_ms: int) -> dict[tuple[str, str], tuple[int, int]]:
    """The active limits published for the queue ``stream`` (its base stream) that are at
    most :data:`STALE_AFTER` seconds older than ``now_ms``: (group, consumer) -> (active,
    max). One HGETALL."""
    check_client(client)
    return limits_from_reply(client.hgetall(limits_key(stream)), now_ms)


def prune(client: Any, stream: str, now_ms: int) -> int:
    """Delete the entries that are stale or malformed at ``now_ms`` (those of consumers that
    stopped without :func:`withdraw`, e.g. killed), so that the hash, kept alive by the
    running consumers, does not grow with every one that ever ran; for a publisher to call
    now and then (one HGETALL, one HDEL). An entry written again between the two reads is
    deleted too and comes back with its consumer's next :func:`publish`.

    :returns: how many entries were deleted.
    """
    check_client(client)
    key = limits_key(stream)
    reply = client.hgetall(key)  # a dict from redis-py, its keys as Redis holds them
    stale = [field for field, value in reply.items() if _entry(field, value, now_ms) is None]
    return int(client.hdel(key, *stale)) if stale else 0
