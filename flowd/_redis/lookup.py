"""Where a job is: one script that reads, in one round trip and with bounded work,
everything Redis holds about one job id.

It follows the id's aliases (a delayed job moved into the stream, a retry
scheduled for later), then looks at the job's record, the scheduled set, the
stream entry and, per consumer group, the last-delivered id and the pending
entry (with its consumer, idle time, delivery count, recorded failure and
claimed-run starts). Each step is O(log N) or O(1) in the stream's length:
XRANGE and XPENDING of one id, ZSCORE, GET, XINFO GROUPS (O(groups)), and an HGET
in each live bucket of successes' records (about nine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .keys import alias_key, derived_key, result_buckets_key, result_key
from .scheduling import scheduled_key
from .scripts import Script

#: Most aliases followed (a job moved by a few retries); a loop of aliases ends here.
MAX_HOPS = 8

# KEYS: stream, scheduled set. ARGV: id, alias prefix, result prefix, errors prefix,
# tracebacks prefix, runs prefix, group ('' for every group), most hops, result buckets.
# Returns a JSON object: id (after aliases), and record, or scheduled (due ms), or
# entry (bool), its traceparent, and groups [{name, last, consumer, idle, count, error,
# traceback, starts}].
_LOOKUP = Script(
    """
local stream, zset = KEYS[1], KEYS[2]
local id = ARGV[1]
for _ = 1, tonumber(ARGV[8]) do
  local nxt = redis.call('GET', ARGV[2] .. id)
  if not nxt then break end
  id = nxt
end
local out = {id = id}
local record = redis.call('GET', ARGV[3] .. id)
if not record then
  -- a success's record: in one of the live buckets (flowd._redis.records), latest first
  local t = redis.call('TIME')
  local buckets = redis.call('ZRANGEBYSCORE', ARGV[9], t[1] .. '000', '+inf')
  for i = #buckets, 1, -1 do
    record = redis.call('HGET', buckets[i], id)
    if record then break end
  end
end
if record then
  out['record'] = record
  return cjson.encode(out)
end
local due = redis.call('ZSCORE', zset, id)
if due then
  out['scheduled'] = tonumber(due)
  return cjson.encode(out)
end
if not string.match(id, '^%d+%-%d+$') or redis.call('TYPE', stream)['ok'] ~= 'stream' then
  return cjson.encode(out)
end
local entry = redis.call('XRANGE', stream, id, id)
out['entry'] = #entry > 0
if #entry > 0 then
  local fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'flowd:traceparent' then out['traceparent'] = fields[i + 1] end
  end
end
local groups = {}
for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local info = {}
  for i = 1, #group, 2 do
    if group[i] == 'name' then info['name'] = group[i + 1] end
    if group[i] == 'last-delivered-id' then info['last'] = group[i + 1] end
  end
  if ARGV[7] == '' or ARGV[7] == info['name'] then
    local pending = redis.call('XPENDING', stream, info['name'], id, id, 1)
    if #pending > 0 then
      info['consumer'] = pending[1][2]
      info['idle'] = pending[1][3]
      info['count'] = pending[1][4]
      info['error'] = redis.call('HGET', ARGV[4] .. info['name'], id)
      info['traceback'] = redis.call('HGET', ARGV[5] .. info['name'], id)
      info['starts'] = redis.call('HGET', ARGV[6] .. info['name'], id)
    end
    groups[#groups + 1] = info
  end
end
out['groups'] = groups
return cjson.encode(out)
"""
)


@dataclass(frozen=True, slots=True)
class GroupView:
    """One consumer group's view of the job: its last-delivered id, and the pending
    entry if the group holds one."""

    name: str
    last_delivered: str
    consumer: str | None = None
    idle_ms: int | None = None
    count: int | None = None
    error: str | None = None
    traceback: str | None = None
    starts: int = 0

    @property
    def pending(self) -> bool:
        return self.consumer is not None


@dataclass(frozen=True, slots=True)
class Found:
    """What the lookup script read about one job id."""

    id: str  # the id the job has now (after aliases)
    stream: str  # the stream (partition) that knows it
    record: dict[str, Any] | None = None
    scheduled_ms: int | None = None
    entry: bool = False
    groups: list[GroupView] = field(default_factory=list)
    #: The stream entry's ``flowd:traceparent`` (a traced job still in the stream).
    traceparent: str | None = None


def _text(value: Any) -> str | None:
    if value is None or value is False:  # cjson writes a missing HGET as false
        return None
    return str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def lookup_call(stream: str, job_id: str, group: str | None) -> tuple[list[str], list[Any]]:
    """(keys, args) of the lookup script for one id on one stream."""
    keys = [stream, scheduled_key(stream)]
    args = [
        job_id,
        alias_key(stream, ""),
        result_key(stream, ""),
        derived_key(stream, "errors:"),
        derived_key(stream, "tracebacks:"),
        derived_key(stream, "runs:"),
        group or "",
        MAX_HOPS,
        result_buckets_key(stream),
    ]
    return keys, args


def parse_lookup(reply: bytes | str, stream: str) -> Found:
    """The script's JSON reply as a :class:`Found`."""
    raw = json.loads(reply)
    record = raw.get("record")
    groups_raw = raw.get("groups") or []
    if isinstance(groups_raw, dict):  # cjson writes an empty table as {}
        groups_raw = []
    groups = [
        GroupView(
            name=str(g.get("name")),
            last_delivered=str(g.get("last") or "0-0"),
            consumer=_text(g.get("consumer")),
            idle_ms=None if g.get("idle") is None else _int(g.get("idle")),
            count=None if g.get("count") is None else _int(g.get("count")),
            error=_text(g.get("error")),
            traceback=_text(g.get("traceback")),
            starts=max(_int(g.get("starts") or 0), 0),
        )
        for g in groups_raw
    ]
    return Found(
        id=str(raw["id"]),
        stream=stream,
        record=None if record is None else json.loads(record),
        scheduled_ms=None if raw.get("scheduled") is None else int(raw["scheduled"]),
        entry=bool(raw.get("entry")),
        groups=groups,
        traceparent=_text(raw.get("traceparent")),
    )


def lookup(client: Any, streams: list[str], job_id: str, group: str | None) -> Found | None:
    """Look the id up on each of ``streams`` (one pipelined round trip); what the one
    that knows it holds, else None.

    :raises ConfigurationError: several partitions know the id: stream ids are unique
        within one stream only, and each partition makes its own.
    """
    calls = [lookup_call(stream, job_id, group) for stream in streams]
    if len(calls) == 1:
        replies = [_LOOKUP(client, *calls[0])]
    else:
        replies = _LOOKUP.pipelined(client, calls)
    known = [
        found
        for found in (
            parse_lookup(reply, stream) for stream, reply in zip(streams, replies, strict=True)
        )
        if found.record is not None
        or found.scheduled_ms is not None
        or found.entry
        or any(g.pending for g in found.groups)
    ]
    if len(known) > 1:
        raise ConfigurationError(
            f"job id {job_id!r} is known to {len(known)} streams "
            f"({', '.join(f.stream for f in known)}): each partition (and priority band) "
            "makes its own ids; ask flowd.Results(client, <that stream>) (a task's "
            ".stream names it)"
        )
    return known[0] if known else None
