"""Job records: the one JSON text that says how a job ended, and how long names of a
job's moves are kept.

A record is the string ``{stream}:result:<id>``. A success's record is written with
its XACK by one script per batch (:data:`ACK_WITH_RECORDS`); the dead-letter move
writes a dead (or failed) one in its script; a cancel writes a cancelled one.
Fields: ``status`` (``succeeded``, ``failed``, ``dead``, ``cancelled``), ``value``
(the JSON of what the job returned), ``error``, ``traceback``, ``deliveries``,
``started`` and ``finished`` (ms since the epoch), ``consumer``, ``group``,
``dead_letter`` (the dead letter's id).

Waking waiters costs nothing when nobody waits: ``Results.wait`` sets
``{stream}:waiting:<id>`` and blocks on the list ``{stream}:done:<id>``; whatever
writes a record pushes to that list only if the waiting key exists (:data:`NOTIFY_LUA`).
"""

from __future__ import annotations

import json
from typing import Any

from .keys import derived_key
from .scripts import Script

#: How long records nobody asked to keep live: a dead, failed or cancelled job's record
#: on a queue without ``result_ttl``, and the name a moved job had (its alias).
STATE_TTL_MS = 24 * 3600 * 1000
#: How long a done list (the waiters' wake-up) outlives its push.
DONE_TTL_MS = 60_000

#: Most records one ACK_WITH_RECORDS call writes (its ids are unpacked into one XACK).
RECORDS_PER_CALL = 1000

#: Lua: after a record of job ``id`` was written, wake its waiters, if it has any.
#: Needs ``waiting`` and ``done`` (key prefixes) in scope.
NOTIFY_LUA = """
local function notify(waiting, done, id)
  if redis.call('EXISTS', waiting .. id) == 1 then
    redis.call('RPUSH', done .. id, '1')
    redis.call('PEXPIRE', done .. id, 60000)
  end
end
"""

# KEYS: stream. ARGV: group, ttl ms, result prefix, waiting prefix, done prefix, then
# pairs of id and record. Acks every id and writes its record in one atomic step.
ACK_WITH_RECORDS = Script(
    NOTIFY_LUA
    + """
local ids = {}
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  ids[#ids + 1] = id
  redis.call('SET', ARGV[3] .. id, ARGV[i + 1], 'PX', ARGV[2])
  notify(ARGV[4], ARGV[5], id)
end
return redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
"""
)


def prefixes(stream: str) -> tuple[str, str, str]:
    """The result, waiting and done key prefixes of ``stream``."""
    return (
        derived_key(stream, "result:"),
        derived_key(stream, "waiting:"),
        derived_key(stream, "done:"),
    )


class SuccessRecords:
    """Builds the records of one stream's successes (on the worker threads: kept cheap,
    the parts that never change are encoded once)."""

    __slots__ = ("_head",)

    def __init__(self, consumer: str, group: str) -> None:
        fixed = json.dumps({"consumer": consumer, "group": group}, ensure_ascii=False)
        self._head = '{"status":"succeeded",' + fixed[1:-1]

    def record(self, value_json: str, deliveries: int, started_ms: int, finished_ms: int) -> str:
        """The record of a run that returned (``value_json`` is already JSON text)."""
        return (
            f'{self._head},"deliveries":{deliveries},"started":{started_ms},'
            f'"finished":{finished_ms},"value":{value_json}}}'
        )


def ack_call(
    stream: str, group: str, ttl_ms: int, records: list[tuple[str, str]]
) -> tuple[Any, ...]:
    """The ACK_WITH_RECORDS command (EVALSHA) for up to RECORDS_PER_CALL (id, record)."""
    args: list[Any] = [group, ttl_ms, *prefixes(stream)]
    for pair in records:
        args += pair
    return ("EVALSHA", ACK_WITH_RECORDS.sha, 1, stream, *args)


def alias_ttl_ms(result_ttl_ms: int | None) -> int:
    """How long a moved job's old id is kept: as long as its result, and at least a day."""
    return max(STATE_TTL_MS, result_ttl_ms or 0)
