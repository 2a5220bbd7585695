"""Job records: the one JSON text that says how a job ended, and how long names of a
job's moves are kept.

Successes' records are written with their XACKs by one script per batch
(:data:`ACK_WITH_RECORDS`), into hashes that each hold one time slice of a queue's
successes: ``{stream}:results:<ttl ms>:<slice end ms>``, expiring ``result_ttl`` after
their slice ends, and listed in the sorted set ``{stream}:result-buckets`` (score: their
expiry). One HSET per batch keeps a queue that keeps results nearly as fast as one that
does not; the price is that a record lives from ``result_ttl`` to ``result_ttl`` plus a
slice (an eighth of it, at least a second). The dead-letter move writes a dead (or
failed) record, and a cancel a cancelled one, as the string ``{stream}:result:<id>``.

Fields: ``status`` (``succeeded``, ``failed``, ``dead``, ``cancelled``), ``value``
(the JSON of what the job returned), ``error``, ``traceback``, ``deliveries``,
``started`` and ``finished`` (ms since the epoch), ``consumer``, ``group``,
``dead_letter`` (the dead letter's id).

Waking waiters costs nothing when nobody waits: ``Results.wait`` adds the id to the
set ``{stream}:waiters`` and blocks on the list ``{stream}:done:<id>``; whatever writes
a record pushes to that list only for ids in the set.
"""

from __future__ import annotations

import json
from typing import Any

from .keys import derived_key, done_key, result_buckets_key, waiters_key
from .scripts import Script

#: How long records nobody asked to keep live: a dead, failed or cancelled job's record
#: on a queue without ``result_ttl``, and the name a moved job had (its alias).
STATE_TTL_MS = 24 * 3600 * 1000
#: How long a done list (the waiters' wake-up) outlives its push.
DONE_TTL_MS = 60_000
#: A bucket holds this part of result_ttl (and at least a second) of successes.
BUCKET_PARTS = 8
MIN_BUCKET_MS = 1000

#: Most records one ACK_WITH_RECORDS call writes (Lua's unpack() takes ~8,000 values).
RECORDS_PER_CALL = 1000

#: Lua: after a record of job ``id`` was written, wake its waiters, if it has any.
NOTIFY_LUA = f"""
local function notify(waiters, done, id)
  if redis.call('SISMEMBER', waiters, id) == 1 then
    redis.call('RPUSH', done .. id, '1')
    redis.call('PEXPIRE', done .. id, {DONE_TTL_MS})
  end
end
"""

# KEYS: stream, buckets zset, waiters set. ARGV: group, ttl ms, bucket ms, bucket prefix,
# done prefix, then pairs of id and record. Acks every id and writes its record in one
# atomic step; returns how many were acked.
ACK_WITH_RECORDS = Script(
    NOTIFY_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, span = tonumber(ARGV[2]), tonumber(ARGV[3])
local ends = (math.floor(now / span) + 1) * span
local bucket = ARGV[4] .. ARGV[2] .. ':' .. string.format('%.0f', ends)
local expires = ends + ttl
redis.call('HSET', bucket, unpack(ARGV, 6))
redis.call('PEXPIREAT', bucket, string.format('%.0f', expires))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now))
redis.call('ZADD', KEYS[2], string.format('%.0f', expires), bucket)
if redis.call('PTTL', KEYS[2]) < expires - now then
  redis.call('PEXPIREAT', KEYS[2], string.format('%.0f', expires))
end
local ids = {}
for i = 6, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
if redis.call('EXISTS', KEYS[3]) == 1 then
  for _, id in ipairs(ids) do notify(KEYS[3], ARGV[5], id) end
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
"""
)


def bucket_ms(ttl_ms: int) -> int:
    """How much time one bucket of successes' records spans, for ``result_ttl``."""
    return max(MIN_BUCKET_MS, ttl_ms // BUCKET_PARTS)


class SuccessRecords:
    """Builds the records of one stream's successes (on the worker threads: kept cheap,
    the parts that never change are encoded once)."""

    __slots__ = ("_head",)

    def __init__(self, consumer: str, group: str) -> None:
        fixed = json.dumps({"consumer": consumer, "group": group}, ensure_ascii=False)
        self._head = '{"status":"succeeded",' + fixed[1:-1]

    def record(
        self,
        value_json: str,
        deliveries: int,
        started_ms: int,
        finished_ms: int,
        traceparent: str | None = None,
    ) -> str:
        """The record of a run that returned (``value_json`` is already JSON text);
        ``traceparent``, of a traced job, lets the job page name its trace."""
        trace = "" if traceparent is None else f',"traceparent":{json.dumps(traceparent)}'
        return (
            f'{self._head},"deliveries":{deliveries},"started":{started_ms},'
            f'"finished":{finished_ms}{trace},"value":{value_json}}}'
        )


def ack_call(
    stream: str, group: str, ttl_ms: int, records: list[tuple[str, str]]
) -> tuple[Any, ...]:
    """The ACK_WITH_RECORDS command (EVALSHA) for up to RECORDS_PER_CALL (id, record)."""
    keys = (stream, result_buckets_key(stream), waiters_key(stream))
    args: list[Any] = [group, ttl_ms, bucket_ms(ttl_ms), derived_key(stream, "results:")]
    args.append(done_key(stream, ""))
    for pair in records:
        args += pair
    return ("EVALSHA", ACK_WITH_RECORDS.sha, len(keys), *keys, *args)


def packed_ack_call(stream: str, group: str, ttl_ms: int, records: list[tuple[str, str]]) -> bytes:
    """:func:`ack_call` framed as RESP by hand, for a pipeline to send as is.

    redis-py frames each argument on its own, at about a microsecond per job here.
    Not :func:`~flowd._redis.resp.frame`: one string per (id, record) pair, with no
    flattening, costs half as much on this hot path (0.19 against 0.37 us per job).
    """
    head = ack_call(stream, group, ttl_ms, [])
    parts = [f"*{len(head) + 2 * len(records)}\r\n"]
    for arg in head:
        text = str(arg)
        parts.append(f"${len(text.encode())}\r\n{text}\r\n")
    for msg_id, record in records:
        size = len(record) if record.isascii() else len(record.encode())
        parts.append(f"${len(msg_id)}\r\n{msg_id}\r\n${size}\r\n{record}\r\n")
    return "".join(parts).encode()


def alias_ttl_ms(result_ttl_ms: int | None) -> int:
    """How long a moved job's old id is kept: as long as its result, and at least a day."""
    return max(STATE_TTL_MS, result_ttl_ms or 0)
