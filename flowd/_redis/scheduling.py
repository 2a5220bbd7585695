"""The Lua scripts of scheduled work, and the due-job mover.

Keys, all derived from the stream so they share its cluster slot:

- ``{s}:scheduled``: ZSET, member = scheduled-job id, score = due time in ms by
  Redis's own clock (``TIME``), never a client's.
- ``{s}:scheduled:<id>``: HASH, exactly the stream fields to XADD when due.
- ``{s}:unique:<key>``: STRING, the id of the job holding a ``unique_key``.
- ``{s}:schedules``: HASH, periodic schedule name -> JSON state.

Every decision that depends on the time ("is it due") is made inside a script
against ``TIME``, so any number of processes, whatever their clocks, move each
job once and fire each tick once.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import ConfigurationError
from .keys import alias_key, derived_key, done_key, result_key, waiters_key
from .records import NOTIFY_LUA, STATE_TTL_MS
from .scripts import Script
from .timeutil import to_ms, to_seconds

logger = logging.getLogger(__name__)

#: Due jobs moved by one script call: a few ms of Redis time even on a loaded
#: machine, so one call never blocks Redis for long, however many jobs are due.
MOVE_BATCH = 100

#: Lua's unpack() stops at about 8,000 values: a scheduled job's fields must fit.
MAX_FIELD_VALUES = 7000

#: Jobs per ENQUEUE_MANY call, and most argument values in one call.
ENQUEUE_BATCH = 100
ENQUEUE_BATCH_VALUES = 6000

#: The stream field that carries a job's unique_key (flowd's own: not part of the Job).
UNIQUE_FIELD = "flowd:unique"

_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
-- Is the job holding a unique key still scheduled, waiting in the stream or running?
local function holds(stream, zset, holder)
  if redis.call('ZSCORE', zset, holder) then return true end
  local ms, seq = id_parts(holder)
  if not ms then return false end
  if #redis.call('XRANGE', stream, holder, holder) == 0 then return false end
  local groups = redis.call('XINFO', 'GROUPS', stream)
  for _, group in ipairs(groups) do
    local name, last
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
    local lms, lseq = id_parts(last)
    if ms > lms or (ms == lms and seq > lseq) then return true end
    if #redis.call('XPENDING', stream, name, holder, holder, 1) > 0 then return true end
  end
  return #groups == 0
end
local function xadd(stream, maxlen, fields)
  if maxlen ~= '' then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
  return redis.call('XADD', stream, '*', unpack(fields))
end
"""

# KEYS: stream, zset, job hash[, unique key]
# ARGV: mode ('now'|'delay'|'at'), ms, scheduled id, maxlen ('' for none), fields...
# Returns {0, holder id} (unique key held), {1, stream id} or {2, scheduled id}.
ENQUEUE_LUA = (
    _LIB
    + """
local stream, zset, hkey, ukey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if ukey then
  local holder = redis.call('GET', ukey)
  if holder and holds(stream, zset, holder) then return {0, holder} end
end
local fields = {unpack(ARGV, 5)}
local now = now_ms()
local due = now
if ARGV[1] == 'delay' then due = now + tonumber(ARGV[2]) end
if ARGV[1] == 'at' then due = tonumber(ARGV[2]) end
if due <= now then
  local id = xadd(stream, ARGV[4], fields)
  if ukey then redis.call('SET', ukey, id) end
  return {1, id}
end
redis.call('HSET', hkey, unpack(fields))
redis.call('ZADD', zset, due, ARGV[3])
if ukey then redis.call('SET', ukey, ARGV[3]) end
return {2, ARGV[3]}
"""
)

# Many jobs of one stream in one call (enqueue_bulk with delay or at), no unique keys.
# KEYS: stream, zset. ARGV: mode, ms, maxlen, job hash prefix, then per job:
# its scheduled id, its number of field values, those values. Returns one id per job.
ENQUEUE_MANY_LUA = (
    _LIB
    + """
local stream, zset = KEYS[1], KEYS[2]
local now = now_ms()
local due = now
if ARGV[1] == 'delay' then due = now + tonumber(ARGV[2]) end
if ARGV[1] == 'at' then due = tonumber(ARGV[2]) end
local out, i = {}, 5
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local fields = {unpack(ARGV, i + 2, i + 1 + n)}
  if due <= now then
    out[#out + 1] = xadd(stream, ARGV[3], fields)
  else
    redis.call('HSET', ARGV[4] .. id, unpack(fields))
    redis.call('ZADD', zset, due, id)
    out[#out + 1] = id
  end
  i = i + 2 + n
end
return out
"""
)

# KEYS: zset, stream. ARGV: job hash prefix, unique key prefix, batch, alias prefix,
# alias ttl ms. Each moved job's scheduled id becomes an alias of its stream id, so
# the id enqueue returned still finds it. Returns {moved, missing hashes, now ms,
# next due ms or -1}.
MOVE_LUA = (
    _LIB
    + """
local zset, stream = KEYS[1], KEYS[2]
-- A write that changes nothing (that key is never used): on a read-only replica, such as
-- a demoted master, the call fails with READONLY even when nothing is due, so the loop
-- reconnects to the master instead of looking at a replica's copy.
redis.call('DEL', ARGV[1])
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local moved, missing, hkeys = 0, 0, {}
for i, id in ipairs(ids) do
  local hkey = ARGV[1] .. id
  hkeys[i] = hkey
  local fields = redis.call('HGETALL', hkey)
  if #fields > 0 then
    local sid = redis.call('XADD', stream, '*', unpack(fields))
    redis.call('SET', ARGV[4] .. id, sid, 'PX', ARGV[5])
    moved = moved + 1
    for j = 1, #fields, 2 do
      if fields[j] == 'flowd:unique' then
        local ukey = ARGV[2] .. fields[j + 1]
        if redis.call('GET', ukey) == id then redis.call('SET', ukey, sid) end
      end
    end
  else
    missing = missing + 1
  end
end
if #ids > 0 then
  redis.call('DEL', unpack(hkeys))
  redis.call('ZREM', zset, unpack(ids))
end
local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
local next_due = -1
if #first > 0 then next_due = tonumber(first[2]) end
return {moved, missing, now, next_due}
"""
)

# KEYS: zset, job hash[, result]. ARGV: id, unique key prefix[, record, ttl ms, waiters
# set, done prefix]. Returns 1 if it was still scheduled; then the job's record says
# it was cancelled.
CANCEL_LUA = (
    NOTIFY_LUA
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  notify(ARGV[5], ARGV[6], ARGV[1])
end
local unique = redis.call('HGET', KEYS[2], 'flowd:unique')
if unique then
  local ukey = ARGV[2] .. unique
  if redis.call('GET', ukey) == ARGV[1] then redis.call('DEL', ukey) end
end
redis.call('DEL', KEYS[2])
return 1
"""
)

# KEYS: unique key. ARGV: id. Frees the key if that job still holds it.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: schedules hash, stream.
# ARGV: name, state as read ('' for none), due ms ('' to only write ARGV[4] as the
# state), next ms after firing ('' for every-schedules), every ms ('' for cron),
# spec as JSON text, fields...
# Returns {-1} (state changed since read), {0} (written, not fired) or {1, stream id}.
FIRE_LUA = (
    _LIB
    + """
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then return {-1} end
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  return {0}
end
local now = now_ms()
if now < tonumber(ARGV[3]) then return {0} end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 7))
local next_run = ARGV[4]
if ARGV[5] ~= '' then next_run = string.format('%d', now + tonumber(ARGV[5])) end
redis.call('HSET', KEYS[1], ARGV[1], string.format(
  '{"last":%d,"next":%s,"spec":%s}', now, next_run, ARGV[6]))
return {1, id}
"""
)


ENQUEUE = Script(ENQUEUE_LUA)
ENQUEUE_MANY = Script(ENQUEUE_MANY_LUA)
MOVE = Script(MOVE_LUA)
CANCEL = Script(CANCEL_LUA)
RELEASE = Script(RELEASE_LUA)
FIRE = Script(FIRE_LUA)


def text(value: bytes | str) -> str:
    """A reply value as text (clients with and without ``decode_responses``)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def scheduled_key(stream: str) -> str:
    """The sorted set of the stream's scheduled jobs."""
    return derived_key(stream, "scheduled")


def job_key(stream: str, job_id: str) -> str:
    """The hash holding one scheduled job's stream fields."""
    return derived_key(stream, f"scheduled:{job_id}")


def unique_key(stream: str, key: str) -> str:
    """The string naming the job that holds ``key``."""
    return derived_key(stream, f"unique:{key}")


def schedules_key(stream: str) -> str:
    """The hash of periodic schedules' states."""
    return derived_key(stream, "schedules")


def new_scheduled_id() -> str:
    """A scheduled-job id: ``s-`` then the time in ns (hex), so that ids of jobs due at the
    same millisecond sort, and move, roughly in enqueue order; then random hex."""
    return f"s-{time.time_ns():016x}-{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class MoveResult:
    """What one call of :func:`move_due` did.

    :ivar moved: jobs added to the stream.
    :ivar now_ms: Redis's clock when the script ran.
    :ivar next_due_ms: the earliest due time still scheduled, or None.
    """

    moved: int
    now_ms: int
    next_due_ms: int | None

    @property
    def more(self) -> bool:
        """More jobs are due already: call again at once."""
        return self.next_due_ms is not None and self.next_due_ms <= self.now_ms


def move_due(
    target: Any, stream: str, *, batch: int = MOVE_BATCH, alias_ttl_ms: int = STATE_TTL_MS
) -> MoveResult:
    """Move up to ``batch`` due scheduled jobs of ``stream`` into it, in due order.

    One atomic script: it reads Redis's clock, so however many processes call
    it, each due job is added to the stream once, and never early.

    :param target: a :class:`Session` or a redis-py client.
    """
    moved, missing, now_ms, next_due = MOVE(
        target,
        [scheduled_key(stream), stream],
        [job_key(stream, ""), unique_key(stream, ""), batch, alias_key(stream, ""), alias_ttl_ms],
    )
    if int(missing):
        logger.warning(
            "%d scheduled jobs of %s had no fields (their hash was deleted); dropped",
            int(missing),
            stream,
        )
    if int(moved):
        logger.debug("moved %d due jobs into %s", int(moved), stream)
    nxt = int(next_due)
    return MoveResult(int(moved), int(now_ms), None if nxt < 0 else nxt)


def move_all_due(
    target: Any, stream: str, *, batch: int = MOVE_BATCH, alias_ttl_ms: int = STATE_TTL_MS
) -> int:
    """Call :func:`move_due` until no job is due; returns how many were moved."""
    total = 0
    while True:
        result = move_due(target, stream, batch=batch, alias_ttl_ms=alias_ttl_ms)
        total += result.moved
        if not result.more:
            return total


def cancel(client: Any, stream: str, job_id: str) -> bool:
    """Remove a job that is still scheduled (its record then says cancelled); False when
    it is not scheduled (moved into the stream already, or unknown)."""
    keys = [scheduled_key(stream), job_key(stream, job_id), result_key(stream, job_id)]
    record = '{"status":"cancelled"}'
    args = [
        job_id,
        unique_key(stream, ""),
        record,
        STATE_TTL_MS,
        waiters_key(stream),
        done_key(stream, ""),
    ]
    return bool(int(CANCEL(client, keys, args)))


def enqueue_time(delay: object, at: object) -> tuple[str, int] | None:
    """("delay", ms) or ("at", epoch ms) from enqueue's arguments; None for at once."""
    if delay is not None and at is not None:
        raise ConfigurationError("give delay or at, not both (delay and at were both given)")
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
            raise ConfigurationError(
                f"at must be a timezone-aware datetime (e.g. with tzinfo=datetime.UTC), not {at!r}"
            )
        return "at", int(at.timestamp() * 1000)
    if delay is not None:
        seconds = to_seconds(delay, "delay", allow_zero=True)  # type: ignore[arg-type]
        return ("delay", to_ms(seconds)) if seconds > 0 else None
    return None


def check_unique_key(value: object) -> str | None:
    """A unique_key argument, checked: a non-empty str or None."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"unique_key must be a non-empty str or None, not {value!r}")
    return value
