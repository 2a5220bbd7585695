"""Per-key concurrency in Redis: at most ``max_per_key`` jobs with one key run at once,
across every consumer of a group.

Each key of a group is a sorted set in the stream's slot,
``{stream}:concurrency:<group>:<key>``: one member per running job (its message id),
scored with the lease's deadline in ms on Redis's clock. A lease lasts the job's own
lease (the claimer's ``min_idle_time``) and is extended with it, so a killed worker's
keys are free again once its messages could be claimed. Acquiring drops expired
members first, then adds the id while fewer than ``max_per_key`` are left; the set
expires with its last lease (PEXPIRE), so keys nobody uses vanish.

One script call acquires the leases of a whole read batch, another releases a batch
(the acker sends it with its XACKs), a third extends the leases of running jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._redis.keys import derived_key
from .._redis.scripts import Script
from .._redis.session import Session
from ..errors import ConfigurationError

__all__ = [
    "ACQUIRE",
    "RELEASE",
    "RENEW",
    "KeyFn",
    "KeyLeases",
    "bad_key",
    "check_concurrency_key",
    "key_bytes",
]

#: The application's function from a job to its concurrency key (str, int or bytes).
KeyFn = Callable[[Any], object]

#: Most (key, id) pairs one script call carries (Lua's unpack() takes ~8,000 values).
PAIRS_PER_CALL = 1000

#: Lua: Redis's clock in ms.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: Lua: make set ``k`` outlive its newest lease (``ttl`` ms from now).
_KEEP = """
local function keep(k, ttl)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
"""

# KEYS: the distinct key sets. ARGV: max per key, lease ms, then pairs of key index and
# message id. Returns 1 (leased) or 0 (key busy) per pair, in order. An id that holds
# its lease already (a claim of a message whose last run died) keeps it.
ACQUIRE = Script(
    _NOW
    + _KEEP
    + """
local max, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local deadline = string.format('%.0f', now + ttl)
local swept = {}
local out = {}
for i = 3, #ARGV, 2 do
  local k = KEYS[tonumber(ARGV[i])]
  if not swept[k] then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.0f', now))
    swept[k] = true
  end
  local got = 0
  if redis.call('ZSCORE', k, ARGV[i + 1]) or redis.call('ZCARD', k) < max then
    redis.call('ZADD', k, deadline, ARGV[i + 1])
    keep(k, ttl)
    got = 1
  end
  out[#out + 1] = got
end
return out
"""
)

# KEYS: the distinct key sets. ARGV: lease ms, then pairs of key index and message id.
# Extends the leases still held (XX: a lease released meanwhile stays released).
RENEW = Script(
    _NOW
    + _KEEP
    + """
local ttl = tonumber(ARGV[1])
local deadline = string.format('%.0f', now + ttl)
for i = 2, #ARGV, 2 do
  local k = KEYS[tonumber(ARGV[i])]
  if redis.call('ZADD', k, 'XX', 'CH', deadline, ARGV[i + 1]) == 1 then keep(k, ttl) end
end
return 1
"""
)

# KEYS: the distinct key sets. ARGV: pairs of key index and message id. Ends those leases.
RELEASE = Script(
    """
for i = 1, #ARGV, 2 do
  redis.call('ZREM', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
end
return 1
"""
)


def check_concurrency_key(
    concurrency_key: object, max_per_key: object
) -> tuple[KeyFn | None, int | None]:
    """The validated pair of Queue settings (both None when per-key concurrency is off).

    :raises ConfigurationError: naming the setting that is wrong.
    """
    if concurrency_key is None:
        if max_per_key is not None:
            raise ConfigurationError(
                f"max_per_key={max_per_key!r} needs a concurrency_key: the function that "
                "gives each job its key"
            )
        return None, None
    if not callable(concurrency_key):
        raise ConfigurationError(
            f"concurrency_key must be callable (job -> str, int or bytes), not {concurrency_key!r}"
        )
    if max_per_key is None:
        max_per_key = 1
    if isinstance(max_per_key, bool) or not isinstance(max_per_key, int) or max_per_key < 1:
        raise ConfigurationError(f"max_per_key must be an int >= 1, not {max_per_key!r}")
    return concurrency_key, max_per_key


def key_bytes(value: object) -> bytes | None:
    """A concurrency key as bytes (``"7"`` and ``7`` are one key); None for anything but
    str, int or bytes (:func:`bad_key` says why)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    return None


def bad_key(value: object) -> str:
    """The dead-letter reason for a key function's result that is no key."""
    text = repr(value)
    if len(text) > 100:
        text = text[:100] + "..."
    return f"concurrency_key returned {type(value).__name__} {text}, not a str, int or bytes"


Pair = tuple[bytes, str]  # (the key's set, message id)


def _keys_and_args(pairs: Sequence[Pair]) -> tuple[list[bytes], list[Any]]:
    """The distinct sets as KEYS, and (index, id) pairs as ARGV."""
    index: dict[bytes, int] = {}
    args: list[Any] = []
    for key, msg_id in pairs:
        at = index.get(key)
        if at is None:
            at = index[key] = len(index) + 1
        args += (at, msg_id)
    return list(index), args


class KeyLeases:
    """The per-key leases of one stream and group: key names and the scripts' calls.

    :param lease_ms: how long a lease lasts unless extended (the job's lease).
    """

    __slots__ = ("lease_ms", "max_per_key", "prefix")

    def __init__(self, stream: str, group: str, max_per_key: int, lease_ms: int) -> None:
        self.prefix = derived_key(stream, f"concurrency:{group}:").encode("utf-8")
        self.max_per_key = max_per_key
        self.lease_ms = lease_ms

    def key(self, key: bytes) -> bytes:
        """The sorted set of one concurrency key."""
        return self.prefix + key

    def acquire(self, session: Session, pairs: Sequence[Pair]) -> list[bool]:
        """Try to lease each (set, id); True where it got its lease (in order)."""
        out: list[bool] = []
        for i in range(0, len(pairs), PAIRS_PER_CALL):
            keys, args = _keys_and_args(pairs[i : i + PAIRS_PER_CALL])
            reply = ACQUIRE(session, keys, [self.max_per_key, self.lease_ms, *args])
            out += [bool(int(got)) for got in reply]
        return out

    def renew(self, session: Session, pairs: Sequence[Pair]) -> None:
        """Extend the leases still held by these (set, id) pairs by one lease time."""
        for i in range(0, len(pairs), PAIRS_PER_CALL):
            keys, args = _keys_and_args(pairs[i : i + PAIRS_PER_CALL])
            RENEW(session, keys, [self.lease_ms, *args])

    @staticmethod
    def release_commands(pairs: Sequence[Pair]) -> list[tuple[Any, ...]]:
        """EVALSHA commands that end these leases (to pipeline with other commands)."""
        commands: list[tuple[Any, ...]] = []
        for i in range(0, len(pairs), PAIRS_PER_CALL):
            keys, args = _keys_and_args(pairs[i : i + PAIRS_PER_CALL])
            commands.append(("EVALSHA", RELEASE.sha, len(keys), *keys, *args))
        return commands
