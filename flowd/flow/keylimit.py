"""Per-key concurrency in Redis: at most ``max_per_key`` jobs with one key run at once,
across every consumer of a group.

A lease lasts the job's own lease (the claimer's ``min_idle_time``) and is extended
with it, so a killed worker's keys are free again once its messages could be
claimed. It ends at its deadline, or once its message is no longer pending: a
success's XACK ends it with no command of its own (acquiring a busy key first drops
the leases whose messages were acked). A failed run's lease, whose message stays
pending, is released explicitly (the acker sends that with its XACKs). One script call
acquires the leases of a whole read batch, another extends those of running jobs.

With ``max_per_key=1`` (the common case) a key is a string in the stream's slot,
``{stream}:concurrency:<group>:<key>``, holding the id of the message that holds it and
expiring at the lease's deadline (GET, then PSETEX for a free key). With more, a
key is a sorted set, ``{stream}:concurrency-set:<group>:<key>``: one member per
running job (its message id), scored with the lease's deadline in ms on Redis's clock,
the set expiring with its newest lease.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from .._redis.keys import derived_key
from .._redis.resp import frame
from .._redis.scripts import Script
from .._redis.session import Session
from ..errors import ConfigurationError

__all__ = [
    "ACQUIRE",
    "ACQUIRE_ONE",
    "PAIRS_PER_CALL",
    "RELEASE",
    "RELEASE_ONE",
    "RENEW",
    "RENEW_ONE",
    "AcquireCall",
    "KeyFn",
    "KeyLeases",
    "bad_key",
    "check_concurrency_key",
]

#: The application's function from a job to its concurrency key (str, int or bytes).
KeyFn = Callable[[Any], object]

#: Most (key, id) pairs one script call carries (Lua's unpack() takes ~8,000 values).
PAIRS_PER_CALL = 1000

#: Lua: Redis's clock in ms, and how a set outlives its newest lease (``ttl`` ms from now).
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(k, ttl)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
"""

# KEYS: the stream, then each entry's key (repeated as often as entries share it).
# ARGV: group, lease ms, then for each entry its message id and the id of a message
# known to be acked whose lease of that key may be left ("" if none: then XPENDING
# tells whether the holder still holds it). Returns the positions (from 1) of the
# entries whose key is busy; the others got their lease. For max_per_key=1.
ACQUIRE_ONE = Script(
    """
local group, ttl = ARGV[1], ARGV[2]
local busy = {}
for j = 1, #KEYS - 1 do
  local k, id, acked = KEYS[j + 1], ARGV[2 * j + 1], ARGV[2 * j + 2]
  local holder = redis.call('GET', k)
  if not holder or holder == id or holder == acked
    or #redis.call('XPENDING', KEYS[1], group, holder, holder, 1) == 0 then
    redis.call('PSETEX', k, ttl, id)
  else
    busy[#busy + 1] = j
  end
end
return busy
"""
)

# KEYS: each lease's key. ARGV: lease ms, then each lease's message id. Extends the
# leases still held by those ids (for max_per_key=1).
RENEW_ONE = Script(
    """
for i = 2, #ARGV do
  if redis.call('GET', KEYS[i - 1]) == ARGV[i] then redis.call('PEXPIRE', KEYS[i - 1], ARGV[1]) end
end
return 1
"""
)

# KEYS: each lease's key. ARGV: each lease's message id. Ends those leases (for
# max_per_key=1).
RELEASE_ONE = Script(
    """
for i = 1, #ARGV do
  if redis.call('GET', KEYS[i]) == ARGV[i] then redis.call('DEL', KEYS[i]) end
end
return 1
"""
)

# KEYS: the stream, then each entry's key set (repeated as often as entries share it).
# ARGV: group, max per key, lease ms, then each entry's message id. Returns the
# positions (from 1) of the entries whose key is busy; the others got their lease.
# A lease ends at its deadline, or once its message is no longer pending (acked): a
# success needs no release of its own, its XACK is one. An id that holds its lease
# already (a claim of a message whose last run died) keeps it.
ACQUIRE = Script(
    _PRELUDE
    + """
local group, max, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local deadline = string.format('%.0f', now + ttl)
local busy = {}
for i = 4, #ARGV do
  local k, id = KEYS[i - 2], ARGV[i]
  local free = redis.call('ZCARD', k) < max or redis.call('ZSCORE', k, id)
  if not free then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.0f', now))
    for _, held in ipairs(redis.call('ZRANGE', k, 0, -1)) do
      if #redis.call('XPENDING', KEYS[1], group, held, held, 1) == 0 then
        redis.call('ZREM', k, held)
      end
    end
    free = redis.call('ZCARD', k) < max
  end
  if free then
    redis.call('ZADD', k, deadline, id)
    keep(k, ttl)
  else
    busy[#busy + 1] = i - 3
  end
end
return busy
"""
)

# KEYS: each lease's key set. ARGV: lease ms, then each lease's message id. Extends the
# leases still held (XX: one released meanwhile stays released).
RENEW = Script(
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local deadline = string.format('%.0f', now + ttl)
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[i - 1], 'XX', 'CH', deadline, ARGV[i]) == 1 then
    keep(KEYS[i - 1], ttl)
  end
end
return 1
"""
)

# KEYS: each lease's key set. ARGV: each lease's message id. Ends those leases (a run
# that failed: its message stays pending, but it no longer runs).
RELEASE = Script(
    """
for i = 1, #ARGV do redis.call('ZREM', KEYS[i], ARGV[i]) end
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


def bad_key(value: object) -> str:
    """The dead-letter reason for a key function's result that is no key."""
    text = repr(value)
    if len(text) > 100:
        text = text[:100] + "..."
    return f"concurrency_key returned {type(value).__name__} {text}, not a str, int or bytes"


#: A key's set name: str for str and int keys, bytes for bytes keys.
Name = str | bytes
Pair = tuple[Name, str]  # (the key's set, message id)


@dataclass(frozen=True, slots=True)
class AcquireCall:
    """One acquire script call: framed as RESP, and its keys and arguments (to call it
    again as a Script after an error reply)."""

    framed: bytes
    keys: list[Name]
    args: list[Any]


class KeyLeases:
    """The per-key leases of one stream and group: key names and the scripts' calls.

    :param lease_ms: how long a lease lasts unless extended (the job's lease).
    """

    __slots__ = (
        "_acquire",
        "_bytes_prefix",
        "_release",
        "_renew",
        "group",
        "lease_ms",
        "max_per_key",
        "prefix",
        "stream",
    )

    def __init__(self, stream: str, group: str, max_per_key: int, lease_ms: int) -> None:
        self.stream = stream
        self.group = group
        self.max_per_key = max_per_key
        self.lease_ms = lease_ms
        single = max_per_key == 1
        kind = "concurrency" if single else "concurrency-set"
        self.prefix = derived_key(stream, f"{kind}:{group}:")
        self._bytes_prefix = self.prefix.encode("utf-8")
        self._acquire = ACQUIRE_ONE if single else ACQUIRE
        self._renew = RENEW_ONE if single else RENEW
        self._release = RELEASE_ONE if single else RELEASE

    def name(self, key: object) -> Name | None:
        """The Redis key of a concurrency key (``"7"`` and ``7`` are one key); None for
        anything but str, int or bytes (:func:`bad_key` says why)."""
        if isinstance(key, str):
            return self.prefix + key
        if isinstance(key, bool):  # an int, but surely a mistake
            return None
        if isinstance(key, int):
            return self.prefix + str(int(key))
        if isinstance(key, bytes):
            return self._bytes_prefix + key
        return None

    def acquire(
        self,
        session: Session,
        names: Sequence[Name],
        ids: Sequence[str],
        acked: Sequence[str] | None = None,
    ) -> set[int]:
        """Try to lease each (key, id); the positions (from 0) of those whose key is busy.

        ``acked`` gives, per entry, the id of a message whose XACK is written and that
        may still be named as its key's holder ("" for none): a lease it holds is taken
        over without asking XPENDING (with ``max_per_key=1``; ignored otherwise).
        """
        busy: set[int] = set()
        for i in range(0, len(ids), PAIRS_PER_CALL):
            end = i + PAIRS_PER_CALL
            call = self.acquire_call(names[i:end], ids[i:end], acked[i:end] if acked else None)
            reply = session.call_many([call.framed])[0]
            busy.update(i + position for position in self.busy_of(session, call, reply))
        return busy

    def acquire_call(
        self, names: Sequence[Name], ids: Sequence[str], acked: Sequence[str] | None = None
    ) -> AcquireCall:
        """One script call leasing at most PAIRS_PER_CALL entries (see :meth:`acquire`),
        framed for a pipeline; :meth:`busy_of` reads its reply."""
        head: list[str | int] = [self.group, self.lease_ms]
        keys = [self.stream, *names]
        if self._acquire is ACQUIRE_ONE:
            hints = acked if acked else [""] * len(ids)
            args = [*head, *(x for pair in zip(ids, hints, strict=True) for x in pair)]
        else:
            args = [head[0], self.max_per_key, head[1], *ids]
        # Framed here: one call per read batch, hundreds of arguments.
        framed = frame(("EVALSHA", self._acquire.sha, len(keys), *keys, *args))
        return AcquireCall(framed, keys, args)

    def busy_of(self, session: Session, call: AcquireCall, reply: Any) -> list[int]:
        """The positions (from 0) of the call's entries whose key is busy, from its reply.

        An error reply (NOSCRIPT, or one to raise as a script call classifies it) calls
        the script again: a lease already taken is taken again by the same id.
        """
        if isinstance(reply, redis.exceptions.ResponseError):
            reply = self._acquire(session, call.keys, call.args)
        return [int(position) - 1 for position in reply]

    def renew(self, session: Session, pairs: Sequence[Pair]) -> None:
        """Extend the leases still held by these (key, id) pairs by one lease time."""
        for i in range(0, len(pairs), PAIRS_PER_CALL):
            chunk = pairs[i : i + PAIRS_PER_CALL]
            self._renew(session, [k for k, _ in chunk], [self.lease_ms, *(m for _, m in chunk)])

    def release_commands(self, pairs: Sequence[Pair]) -> list[tuple[Any, ...]]:
        """EVALSHA commands that end these leases (to pipeline with other commands)."""
        commands: list[tuple[Any, ...]] = []
        sha = self._release.sha
        for i in range(0, len(pairs), PAIRS_PER_CALL):
            chunk = pairs[i : i + PAIRS_PER_CALL]
            keys = [k for k, _ in chunk]
            commands.append(("EVALSHA", sha, len(keys), *keys, *(m for _, m in chunk)))
        return commands
