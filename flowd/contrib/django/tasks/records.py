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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ...._redis import scheduling as sched
from ...._redis.keys import alias_key, derived_key
from ...._redis.scripts import Script
from ....job import Job

__all__ = ["Attempts", "TaskMessage", "new_result_id"]

# KEYS: stream, scheduled set, scheduled job hash, alias key, task key.
# ARGV: due epoch ms ('' for now), scheduled id, keys' ttl ms, task JSON, fields...
# A job due later waits in flowd's scheduled set, as Producer.enqueue(at=...) leaves it.
_ENQUEUE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = {unpack(ARGV, 5)}
local ttl = tonumber(ARGV[3])
local id
if ARGV[1] == '' or tonumber(ARGV[1]) <= now then
  id = redis.call('XADD', KEYS[1], '*', unpack(fields))
else
  local due = tonumber(ARGV[1])
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('ZADD', KEYS[2], due, ARGV[2])
  id = ARGV[2]
  ttl = ttl + due - now
end
redis.call('SET', KEYS[4], id, 'PX', ttl)
redis.call('SET', KEYS[5], ARGV[4], 'PX', ttl)
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


def send(client: Any, stream: str, message: TaskMessage, due_ms: int | None, ttl_ms: int) -> str:
    """Write the job (at once, or scheduled for ``due_ms``) and its result-id keys in one
    script; the flowd id it got."""
    fields = message.to_fields()
    flat: list[Any] = [value for pair in fields.items() for value in pair]
    text = json.dumps({k: _text(v) for k, v in fields.items()}, separators=(",", ":"))
    scheduled_id = sched.new_scheduled_id()
    keys = [
        stream,
        sched.scheduled_key(stream),
        sched.job_key(stream, scheduled_id),
        alias_key(stream, message.result_id),
        task_key(stream, message.result_id),
    ]
    args = ["" if due_ms is None else due_ms, scheduled_id, ttl_ms, text, *flat]
    reply = _ENQUEUE(client, keys, args)
    return sched.text(reply)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


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
# moved), the keys live as long as a result, and the start record is appended.
_START = Script(
    """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ttl)
return redis.call('LRANGE', KEYS[3], 0, -1)
"""
)


def start(
    client: Any, stream: str, job_id: str, result_id: str, worker: str, ttl_ms: int
) -> Attempts:
    """Record an attempt's start (one script, one round trip); every record so far."""
    record = json.dumps({"start": now_ms(), "worker": worker}, separators=(",", ":"))
    keys = [
        alias_key(stream, result_id),
        task_key(stream, result_id),
        attempts_key(stream, result_id),
    ]
    return Attempts.parse(_START(client, keys, [job_id, ttl_ms, record]))


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
