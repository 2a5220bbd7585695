"""Housekeeping: trim consumed entries and remove idle consumers, safely and cheaply.

Both steps are Lua scripts, so each is atomic with respect to every other
client of the stream: no group can deliver, ack or move between the check
and the change. Queues run them on a thread of their own (flowd._consumer.housekeeper),
at most once per ``interval`` for the whole stream (a ``SET NX PX`` lease
decides which consumer does it), and apps can call :func:`trim_stream` and
:func:`remove_idle_consumers` directly, with their own client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._redis.scripts import Script
from ._redis.timeutil import Seconds, to_ms, to_seconds
from .errors import ConfigurationError

__all__ = ["Housekeeping", "TrimResult", "remove_idle_consumers", "trim_stream"]

# Compares stream ids as numbers of any length ("ms-seq"), without float rounding.
_CMP_LUA = """
local function cmp(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm and -1 or 1 end
  if am ~= bm then return am < bm and -1 or 1 end
  if #as ~= #bs then return #as < #bs and -1 or 1 end
  if as ~= bs then return as < bs and -1 or 1 end
  return 0
end
"""

# The lowest id any group still needs is its oldest pending id, or, with none
# pending, its last-delivered id (entries after it are not read yet). Entries
# below the lowest of those, over all groups, are consumed by every group.
_TRIM_LUA = (
    _CMP_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', 0} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {'', 0} end
local minid = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local needed = info['last-delivered-id']
  if info['pending'] > 0 then
    needed = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if minid == nil or cmp(needed, minid) < 0 then minid = needed end
end
if minid == '0-0' then return {minid, 0} end
if ARGV[1] == '~' then
  -- LIMIT 0: without it an approximate trim stops after 100 nodes (10,000 entries)
  return {minid, redis.call('XTRIM', KEYS[1], 'MINID', '~', minid, 'LIMIT', 0)}
end
return {minid, redis.call('XTRIM', KEYS[1], 'MINID', '=', minid)}
"""
)

# Out of memory, one pending entry (a dead-letter move that needs memory to land)
# keeps XTRIM from freeing anything above it. This deletes, one by one, the entries
# after ARGV[1] (exclusive; '-' for the start) that every group has read and none
# holds pending: at most ARGV[2] of them scanned. XDEL needs no memory. Returns the
# last id scanned ('' when the scan reached the end) and how many were deleted.
_DELETE_CONSUMED_LUA = (
    _CMP_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'', 0} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {'', 0} end
local names, read = {}, nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  table.insert(names, info['name'])
  if read == nil or cmp(info['last-delivered-id'], read) < 0 then
    read = info['last-delivered-id']
  end
end
local start = ARGV[1] == '-' and '-' or '(' .. ARGV[1]
local entries = redis.call('XRANGE', KEYS[1], start, read, 'COUNT', tonumber(ARGV[2]))
local deleted = 0
for _, entry in ipairs(entries) do
  local id, held = entry[1], false
  for _, name in ipairs(names) do
    if #redis.call('XPENDING', KEYS[1], name, id, id, 1) > 0 then held = true break end
  end
  if not held then deleted = deleted + redis.call('XDEL', KEYS[1], id) end
end
if #entries < tonumber(ARGV[2]) then return {'', deleted} end
return {entries[#entries][1], deleted}
"""
)

# Removes consumers idle for at least ARGV[2] ms that own no pending entry.
_REMOVE_IDLE_LUA = """
local removed = {}
-- No stream or no group yet (a queue's first minutes, or Redis just back): nothing to do.
if redis.call('EXISTS', KEYS[1]) == 0 then return removed end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers['err'] then
  if string.sub(consumers['err'], 1, 7) == 'NOGROUP' then return removed end
  return redis.error_reply(consumers['err'])
end
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  local keep = false
  for k = 3, #ARGV do
    if ARGV[k] == info['name'] then keep = true end
  end
  if not keep and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
"""


TRIM = Script(_TRIM_LUA)
REMOVE_IDLE = Script(_REMOVE_IDLE_LUA)
DELETE_CONSUMED = Script(_DELETE_CONSUMED_LUA)


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What one trim did: the lowest id kept (``""`` if nothing could be trimmed) and
    how many entries were removed."""

    min_id: str
    removed: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def trim_stream(client: Any, stream: str, *, exact: bool = False) -> TrimResult:
    """Delete the entries of ``stream`` that every consumer group has consumed.

    An entry is kept while any group has it pending or has not read it yet,
    whatever other groups or programs share the stream. A stream with no
    group is left alone. Trimming is approximate by default (``XTRIM MINID
    ~``: whole internal nodes only, which is much cheaper); ``exact=True``
    trims to the entry.
    """
    return trim_result(TRIM(client, [stream], [trim_mode(exact)]))


def trim_mode(exact: bool) -> str:
    return "=" if exact else "~"


def trim_result(reply: Any) -> TrimResult:
    """The TRIM script's reply as a TrimResult."""
    return TrimResult(_text(reply[0]), int(reply[1]))


def remove_idle_consumers(
    client: Any, stream: str, group: str, idle: Seconds, *, keep: tuple[str, ...] = ()
) -> list[str]:
    """Remove consumers of ``group`` idle for ``idle`` seconds or more that own no
    pending entry; returns their names. Consumers with pending entries are never
    removed (XGROUP DELCONSUMER would drop those entries). A stream or group that
    does not exist has none to remove."""
    idle_ms = to_ms(to_seconds(idle, "idle"))
    return names(REMOVE_IDLE(client, [stream], [group, idle_ms, *keep]))


def names(reply: Any) -> list[str]:
    """The REMOVE_IDLE script's reply: the names of the consumers it removed."""
    return [_text(name) for name in reply]


class Housekeeping:
    """Settings of a queue's housekeeping thread (on by default; ``housekeeping=False``
    on the Queue turns it off).

    :param interval: seconds between runs for the whole stream: each consumer
        tries every ``interval``, and a lease in Redis lets only one of them work.
    :param trim: delete entries every group has consumed (see :func:`trim_stream`).
    :param consumer_ttl: remove consumers of the queue's group idle this long
        that own no pending entry; ``None`` keeps them.
    """

    __slots__ = ("consumer_ttl", "interval", "trim")

    def __init__(
        self, interval: Seconds = 60.0, trim: bool = True, consumer_ttl: Seconds | None = 3600.0
    ) -> None:
        self.interval = to_seconds(interval, "interval")
        if not isinstance(trim, bool):
            raise ConfigurationError(f"trim must be True or False, not {trim!r}")
        self.trim = trim
        self.consumer_ttl = (
            None if consumer_ttl is None else to_seconds(consumer_ttl, "consumer_ttl")
        )

    def __repr__(self) -> str:
        return (
            f"Housekeeping(interval={self.interval}, trim={self.trim}, "
            f"consumer_ttl={self.consumer_ttl})"
        )
