"""The global rate limit: :class:`RateLimit`, and the token bucket in Redis that enforces it.

One bucket per logical queue and group, ``derived_key(stream, "rate:<group>")``
(a partitioned queue's partitions share the bucket of its base stream), kept
by one script on Redis's clock (``TIME``), so every consumer of every
process draws from it and client clocks do not matter. A loop takes tokens
*before* it reads or claims (:class:`RateGate`): what it did not get stays in
the stream, unread and not counted as a delivery; tokens it took and did not
use (the stream had fewer entries) go back at once.

A token bucket holding at most ``burst`` tokens, refilled at ``limit / per``
tokens a second: after a quiet spell ``burst`` jobs may start at once, then
the steady rate; any span of ``t`` seconds holds at most
``burst + limit * t / per`` starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._redis.keys import derived_key, key_slot
from .._redis.scripts import Script
from .._redis.session import Session, is_cluster
from .._redis.timeutil import Seconds, to_seconds
from ..errors import ConfigurationError

__all__ = ["RateGate", "RateLimit", "TokenBucket", "bucket_key"]

#: Most starts one limit may allow per window (keeps the script's arithmetic exact).
MAX_LIMIT = 10**12
#: A loop that got no token waits at least this long before it asks again: when the
#: limit binds, tokens are taken in batches of ~5 ms worth, not one call per token.
MIN_WAIT = 0.005


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """``limit`` job starts per ``per`` seconds, for every consumer of the group together.

    For ``Queue(rate_limit=...)``. Enforced in Redis by one token bucket per
    queue and group, on Redis's clock: every process, thread and partition of
    the queue shares it. Jobs over the limit stay in the stream (not read, not
    failed, their delivery count untouched) until tokens are free again.
    Claimed retries are starts too and take tokens the same way.

    >>> RateLimit(100, per=1.0)
    RateLimit(limit=100, per=1.0, burst=10)

    :param limit: job starts allowed per window, an int >= 1.
    :param per: the window, seconds (or a timedelta) > 0; 1 s unless given.
    :param burst: how many jobs may start at once after a quiet spell (the
        bucket's size), an int >= 1; any span of ``per`` seconds then holds at
        most ``limit + burst`` starts. Defaults to a tenth of ``limit`` (at
        least 1), so starts are spread over the window rather than bunched at
        its start.
    :raises ConfigurationError: for any other value.
    """

    limit: int
    per: float
    burst: int

    def __init__(self, limit: int, per: Seconds = 1.0, burst: int | None = None) -> None:
        _check_count(limit, "rate_limit limit")
        seconds = to_seconds(per, "rate_limit per")
        if burst is None:
            burst = max(1, limit // 10)
        else:
            _check_count(burst, "rate_limit burst")
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "per", seconds)
        object.__setattr__(self, "burst", burst)


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ConfigurationError(f"{name} must be an int from 1 to {MAX_LIMIT}, not {value!r}")


def check_rate_limit(value: object) -> RateLimit | None:
    """``Queue(rate_limit=...)``'s argument, checked."""
    if value is not None and not isinstance(value, RateLimit):
        raise ConfigurationError(f"rate_limit must be a flowd.RateLimit or None, not {value!r}")
    return value


def bucket_key(stream: str, group: str) -> str:
    """The key of ``group``'s bucket on the queue whose (base) stream is ``stream``."""
    return derived_key(stream, f"rate:{group}")


# KEYS[1] the bucket: "<tokens> <µs of the last refill>", gone once it would be full.
# ARGV: tokens wanted, tokens given back, limit, the window in µs, the bucket's size.
# Returns {tokens granted, µs until one is free (when none was granted)}.
_TAKE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want, refund = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, per, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, ts = cap, now
local state = redis.call('GET', KEYS[1])
if state then
  local space = string.find(state, ' ', 1, true)
  if space then
    tokens = tonumber(string.sub(state, 1, space - 1)) or cap
    ts = tonumber(string.sub(state, space + 1)) or now
  end
  -- a clock that went back (a failover) refills nothing until it passes ts again
  if now > ts then
    tokens = tokens + (now - ts) * limit / per
    ts = now
  end
end
tokens = math.min(cap, tokens + refund)
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
local wait = 0
if granted == 0 and want > 0 then
  wait = math.ceil((1 - tokens) * per / limit)
end
if tokens >= cap then
  redis.call('DEL', KEYS[1])
else
  local ttl = math.ceil((cap - tokens) * per / limit / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.17g %.0f', tokens, ts), 'PX', ttl)
end
return {granted, wait}
"""
)


class TokenBucket:
    """One queue's and group's bucket: :meth:`take` tokens, giving back unused ones."""

    __slots__ = ("_args", "key")

    def __init__(self, limit: RateLimit, stream: str, group: str) -> None:
        self.key = bucket_key(stream, group)
        self._args = (limit.limit, repr(limit.per * 1_000_000), limit.burst)

    def take(self, target: Any, want: int, refund: int = 0) -> tuple[int, float]:
        """Take up to ``want`` tokens after giving ``refund`` back, through a Session or
        a client; returns (tokens granted, seconds until one is free if none was)."""
        reply = _TAKE(target, (self.key,), (want, refund, *self._args))
        return int(reply[0]), int(reply[1]) / 1_000_000


class RateGate:
    """One loop's way to its queue's bucket (not thread-safe: one per loop).

    It talks through the loop's own session when the bucket lives on the same
    server (one Redis, or the stream's own cluster slot); a partition of a
    queue on Redis Cluster gets a session of its own for the bucket's slot.
    """

    __slots__ = ("_own", "bucket", "session")

    def __init__(self, bucket: TokenBucket, session: Session, *, own: bool = False) -> None:
        self.bucket = bucket
        self.session = session
        self._own = own

    @classmethod
    def for_loop(
        cls,
        limit: RateLimit,
        client: Any,
        queue_stream: str,
        group: str,
        stream: str,
        session: Session,
    ) -> RateGate:
        """The gate of a loop of ``stream`` (a partition of ``queue_stream``, or itself)."""
        bucket = TokenBucket(limit, queue_stream, group)
        if is_cluster(client) and key_slot(bucket.key) != key_slot(stream):
            return cls(bucket, Session(client, bucket.key), own=True)
        return cls(bucket, session)

    def take(self, want: int) -> tuple[int, float]:
        """Take up to ``want`` tokens: (tokens granted, seconds to wait before asking
        again when none was). The caller waits, holding nothing meanwhile."""
        granted, wait = self.bucket.take(self.session, want)
        return granted, max(MIN_WAIT, wait)

    def give_back(self, unused: int) -> None:
        """Return tokens taken and not used (the read or claim got fewer entries)."""
        if unused > 0:
            self.bucket.take(self.session, 0, unused)

    def close(self) -> None:
        """Close the gate's own session, if it has one (the loop closes its own)."""
        if self._own:
            self.session.close()
