"""What a task leaves in Redis: its message, the keys that find it by result id, and one
record per attempt.

Per task, beside flowd's own keys and all in the stream's cluster slot:

- ``{stream}:alias:<result id>``: the flowd id the task has now. flowd's result
  lookup follows aliases, so ``Results.get(result_id)`` finds the job however
  its id changed (a delayed job moved into the stream, a retry scheduled for later);
- ``{stream}:task:<result id>``: the message's fields as JSON (task path, arguments,
  queue...), so a result still names its task after the stream entry is trimmed;
- ``{stream}:attempts:<result id>``: a list of JSON records, one ``start`` per run
  (worker id, time) and one ``error`` per failed run (class path, traceback).

The result id is the backend's own (made before anything is sent, so it is known
while the send waits for a commit); one script writes the job and the first two
keys in one round trip.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...._redis import scheduling as sched
from ...._redis.keys import alias_key, derived_key
from ...._redis.scripts import Script
from ....job import Job

__all__ = ["Attempts", "TaskMessage", "new_result_id"]

# KEYS: stream, scheduled set, scheduled job hash, alias key, task key.
# ARGV: due epoch ms ('' for now), scheduled id, keys' ttl ms, fields...
# A job due later waits in flowd's scheduled set, as Producer.enqueue(at=...) leaves it.
# The task key's JSON copy of the fields is made here, so they travel once.
_ENQUEUE = Script(
    """
local ttl = tonumber(ARGV[3])
local id
if ARGV[1] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local due = tonumber(ARGV[1])
  if due > now then
    redis.call('HSET', KEYS[3], unpack(ARGV, 4))
    redis.call('ZADD', KEYS[2], due, ARGV[2])
    id = ARGV[2]
    ttl = ttl + due - now
  end
end
if not id then
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
local doc = {}
for i = 4, #ARGV, 2 do doc[ARGV[i]] = ARGV[i + 1] end
redis.call('SET', KEYS[4], id, 'PX', ttl)
redis.call('SET', KEYS[5], cjson.encode(doc), 'PX', ttl)
return id
"""
)


def new_result_id() -> str:
    """A task's result id: 32 random hex digits, made before the task is sent."""
    return secrets.token_hex(16)


@dataclass
class TaskMessage(Job):
    """The one flowd Job of every task: which task, with what, where."""

    #: The task function's module path, e.g. ``myapp.tasks.send_email``.
    task: str
    #: The backend's id of the task's result (see the module docstring).
    result_id: str
    #: The arguments, as JSON text.
    args: str = "[]"
    kwargs: str = "{}"
    queue: str = "default"
    backend: str = "default"
    priority: int = 0
    enqueued_at: datetime | None = None
    run_after: datetime | None = None


def task_key(stream: str, result_id: str) -> str:
    """The JSON copy of a task's message."""
    return derived_key(stream, f"task:{result_id}")


def attempts_key(stream: str, result_id: str) -> str:
    """The list of a task's attempt records."""
    return derived_key(stream, f"attempts:{result_id}")


def send(
    client: Any,
    stream: str,
    result_id: str,
    fields: Mapping[str, str | bytes],
    due_ms: int | None,
    ttl_ms: int,
) -> str:
    """Write a task message's ``fields`` as the job (at once, or scheduled for ``due_ms``)
    and its result-id keys in one script; the flowd id it got."""
    scheduled_id = sched.new_scheduled_id()
    keys = [
        stream,
        sched.scheduled_key(stream),
        sched.job_key(stream, scheduled_id),
        alias_key(stream, result_id),
        task_key(stream, result_id),
    ]
    args: list[Any] = ["" if due_ms is None else due_ms, scheduled_id, ttl_ms]
    for pair in fields.items():
        args += pair
    return sched.text(_ENQUEUE.framed(client, keys, args))


def read_message(raw: bytes | str | None) -> TaskMessage | None:
    """The message of a task key's JSON (None when the key is gone or unreadable)."""
    if raw is None:
        return None
    try:
        return TaskMessage.from_fields(json.loads(raw))
    except (ValueError, TypeError):
        return None


def now_ms() -> int:
    """This machine's clock in epoch milliseconds, for attempt records."""
    return int(time.time() * 1000)


# KEYS: alias key, task key, attempts key. ARGV: the job's flowd id, keys' ttl ms, record.
# An attempt starts: the alias points at the job's current id (one hop, however often it
# moved), the keys live as long as a result, and the start record is appended. ARGV[4]
# '1' returns every record so far (a retry needs the earlier attempts).
_START = Script(
    """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ttl)
if ARGV[4] == '1' then
  return redis.call('LRANGE', KEYS[3], 0, -1)
end
return 1
"""
)

#: One call of the start script: its keys and arguments.
StartCall = tuple[list[str], list[Any]]


def start_call(
    stream: str, job_id: str, result_id: str, worker: str, ttl_ms: int, at_ms: int, read: bool
) -> StartCall:
    """The start script's call for an attempt that began at ``at_ms`` (with ``read``, it
    returns every record so far)."""
    record = json.dumps({"start": at_ms, "worker": worker}, separators=(",", ":"))
    keys = [
        alias_key(stream, result_id),
        task_key(stream, result_id),
        attempts_key(stream, result_id),
    ]
    return keys, [job_id, ttl_ms, record, "1" if read else "0"]


def start(
    client: Any, stream: str, job_id: str, result_id: str, worker: str, ttl_ms: int
) -> Attempts:
    """Record an attempt's start (one script, one round trip); every record so far."""
    keys, args = start_call(stream, job_id, result_id, worker, ttl_ms, now_ms(), read=True)
    return Attempts.parse(_START(client, keys, args))


def write_starts(client: Any, calls: list[StartCall]) -> None:
    """Record many attempts' starts in one pipelined round trip."""
    _START.pipelined(client, calls)


def error_record(class_path: str, traceback: str) -> str:
    """The record of a failed attempt."""
    return json.dumps(
        {"error": class_path, "traceback": traceback, "at": now_ms()}, separators=(",", ":")
    )


@dataclass(frozen=True)
class Attempts:
    """A task's attempt records, read: worker ids (one per run), errors (one per failed
    run, as (class path, traceback)), first and last start times (epoch ms)."""

    worker_ids: list[str]
    errors: list[tuple[str, str]]
    first_start_ms: int | None
    last_start_ms: int | None

    @classmethod
    def parse(cls, raw: list[Any]) -> Attempts:
        """From the list's elements; a record that does not parse is skipped."""
        workers: list[str] = []
        errors: list[tuple[str, str]] = []
        starts: list[int] = []
        for item in raw:
            try:
                record = json.loads(item)
            except (ValueError, TypeError):
                continue
            if not isinstance(record, dict):
                continue
            if "start" in record:
                workers.append(str(record.get("worker", "")))
                if isinstance(record["start"], int):
                    starts.append(record["start"])
            elif "error" in record:
                errors.append((str(record["error"]), str(record.get("traceback", ""))))
        return cls(
            worker_ids=workers,
            errors=errors,
            first_start_ms=starts[0] if starts else None,
            last_start_ms=starts[-1] if starts else None,
        )
