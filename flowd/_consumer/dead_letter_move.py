"""The dead-letter move: failure reasons, dlq_worker, and the atomic move to the DLQ stream.

It runs on worker threads, each with a :class:`~flowd._redis.session.Session` of its
own (made on first use), like every other talk of flowd's threads to Redis.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from .._codec.failure import safe_repr, safe_str, traceback_of
from .._redis import throughput as _throughput
from .._redis.fields import traceparent_of
from .._redis.keys import derived_key, done_key, result_key, runs_key, waiters_key
from .._redis.records import DONE_TTL_MS, NOTIFY_LUA, STATE_TTL_MS
from .._redis.scripts import Script
from .._redis.thread_sessions import ThreadSessions
from ..claimer import Claimer
from ..task import Task
from .threads import retry_transient

logger = logging.getLogger(__name__)

_REASON_LIMIT = 2000

# Both scripts act at most once: a re-sent script finds the message already
# acked and changes nothing. So that a re-sent call (its first reply lost) still
# learns that it did the move, the move leaves its caller's token in a marker key.
# KEYS: stream, errors hash, marker, tracebacks hash, runs hash, result[, dlq];
# ARGV: group, id, token, record ttl ms, record (JSON, without its time), waiters set,
# done prefix[, fields...].
# Nothing is written before the last step that can fail (the XADD), so a failing
# script leaves the message pending, never acked and missing from the DLQ. The job's
# record (flowd._redis.records: dead, or failed without a DLQ) is written with the ack.
_MOVE_LUA = (
    NOTIFY_LUA
    + """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('HDEL', KEYS[5], ARGV[2])
  if redis.call('GET', KEYS[3]) == ARGV[3] then return 1 end
  return 0
end
-- the record's time is Redis's clock, like the entry's id: a worker's clock may be off
local now = redis.call('TIME')
local ms = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
local record = cjson.decode(ARGV[5])
record['finished'] = tonumber(ms)
if KEYS[7] then
  record['dead_letter'] = redis.call('XADD', KEYS[7], '*', 'flowd:time', ms, unpack(ARGV, 8))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', 600000)
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('SET', KEYS[6], cjson.encode(record), 'PX', ARGV[4])
notify(ARGV[6], ARGV[7], ARGV[2])
return 1
"""
)
_MOVE = Script(_MOVE_LUA)

#: Lua's unpack() stops at about 8,000 values: wider messages move in a transaction.
_LUA_MAX_FIELD_VALUES = 7000

#: Re-sends of a move whose reply was lost, in this process (the token makes them safe).
_MOVE_ATTEMPTS = 3


def reason_of(exc: BaseException) -> str:
    """The text kept as a failure's reason: exception type and message, bounded."""
    detail = safe_str(exc)
    # Their str() is empty or a bare exit code: say what happened instead.
    if isinstance(exc, SystemExit):
        detail = f"the job called sys.exit({safe_repr(exc.code)})"
    elif isinstance(exc, KeyboardInterrupt) and not detail:
        detail = "the job was interrupted (SIGINT / Ctrl-C while it ran)"
    text = f"{type(exc).__name__}: {detail}"
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


class DeadLetterMover:
    """Moves one stream's exhausted and undecodable messages to its dead-letter stream.

    Failure reasons are kept in a hash in the stream's slot
    (``{stream}:errors:<group>``), and their tracebacks (the last 4 KB) in
    another (``{stream}:tracebacks:<group>``), so whichever consumer
    dead-letters a message can say why its last run failed, even if another
    process ran it.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        errors_key: str,
        claimer: Claimer,
        result_ttl_ms: int | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.errors_key = errors_key
        self.tracebacks_key = derived_key(stream, f"tracebacks:{group}")
        self.runs_key = runs_key(stream, group)
        self.claimer = claimer
        #: A dead job's record is kept as long as results, or a day on a queue without.
        self.record_ttl_ms = result_ttl_ms or STATE_TTL_MS
        self.dlq_stream = claimer.dead_letter_stream(stream)
        self._sessions = ThreadSessions(client, stream)
        self._session = self._sessions.get

    def close(self) -> None:
        """Close the worker threads' sessions."""
        self._sessions.close()

    def record_failure(self, msg_id: str, exc: BaseException, traceback: str | None = None) -> None:
        """Keep the reason and traceback of a failed run, for the dead-letter path."""
        # The dashboard's per-minute failure count rides on the same round trip.
        self.record_reason(
            msg_id, reason_of(exc), traceback or traceback_of(exc), _throughput.failed_commands
        )

    def record_reason(
        self,
        msg_id: str,
        reason: str,
        traceback: str | None,
        extra: Callable[[str], list[tuple[Any, ...]]] | None = None,
    ) -> None:
        """Keep a reason (and traceback) as the message's last failure."""
        commands: list[tuple[Any, ...]] = [("HSET", self.errors_key, msg_id, reason)]
        if traceback:
            commands.append(("HSET", self.tracebacks_key, msg_id, traceback))
        own = len(commands)
        if extra is not None:
            commands += extra(self.stream)
        try:
            replies = self._session().call_many(commands)
            for reply in replies[:own]:
                if isinstance(reply, Exception):
                    raise reply
            if extra is not None:
                _throughput.check_replies(replies[own:], self.stream)
        except Exception:
            logger.warning(
                "could not record the failure of %s on %s", msg_id, self.stream, exc_info=True
            )

    def last_failure(self, msg_id: str) -> str | None:
        return self._recorded(self.errors_key, msg_id, "failure reason")

    def last_traceback(self, msg_id: str) -> str | None:
        return self._recorded(self.tracebacks_key, msg_id, "traceback")

    def _recorded(self, key: str, msg_id: str, what: str) -> str | None:
        """What the failure records hold for ``msg_id`` in ``key``; None if none or unreadable."""
        try:
            text = self._session().call("HGET", key, msg_id)
        except Exception:
            logger.warning("could not read the %s of %s", what, msg_id, exc_info=True)
            return None
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else None

    def _run_move(self, keys: list[str], args: list[Any]) -> int:
        if len(args) > _LUA_MAX_FIELD_VALUES:
            return retry_transient(lambda: self._move_in_transaction(keys, args), _MOVE_ATTEMPTS)
        session = self._session()
        return int(retry_transient(lambda: _MOVE(session, keys, args), _MOVE_ATTEMPTS))

    def _move_in_transaction(self, keys: list[str], args: list[Any]) -> int:
        """The move script's steps for a message too wide for Lua, in MULTI/EXEC.

        Unlike the script, the pending check and the move are two round trips:
        another consumer acking in between could leave a second dead letter,
        never a lost one.
        """
        stream, errors_key, marker, tracebacks_key, runs = keys[:5]
        group, msg_id, token, ttl_ms, record_base = args[:5]
        session = self._session()
        if not session.call("XPENDING", stream, group, msg_id, msg_id, 1):
            found = session.call_many(
                [
                    ("HDEL", errors_key, msg_id),
                    ("HDEL", tracebacks_key, msg_id),
                    ("HDEL", runs, msg_id),
                    ("GET", marker),
                ]
            )[3]
            return 1 if found == token.encode() else 0
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        seconds, micros = session.call("TIME")
        ms = f"{int(seconds)}{int(micros) // 1000:03d}"
        record = json.loads(record_base)
        record["finished"] = int(ms)
        if len(keys) > 6:
            # The record cannot name the dead letter's id here (it is made inside EXEC).
            commands.append(("XADD", keys[6], "*", "flowd:time", ms, *args[7:]))
        commands += [
            ("XACK", stream, group, msg_id),
            ("SET", marker, token, "PX", 600_000),
            ("HDEL", errors_key, msg_id),
            ("HDEL", tracebacks_key, msg_id),
            ("HDEL", runs, msg_id),
            ("SET", keys[5], json.dumps(record), "PX", int(ttl_ms)),
            # No EXISTS check in a MULTI: wake any waiter (an unneeded push costs little).
            ("RPUSH", done_key(stream, msg_id), "1"),
            ("PEXPIRE", done_key(stream, msg_id), DONE_TTL_MS),
            ("EXEC",),
        ]
        replies = session.call_many(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        for reply in replies[-1] or ():  # EXEC's reply lists each step's
            if isinstance(reply, Exception):
                raise reply
        return 1

    def handle(
        self, task: Task[Any], traceback: str | None = None, *, dead_letter: bool = True
    ) -> Task[Any] | None:
        """Call dlq_worker, then move (or drop) the message.

        A task without ``error`` is an exhausted one: its reason is its last
        recorded failure. ``traceback`` is the last run's (None: the one
        recorded, if any); it goes into the DLQ entry as ``flowd:traceback``.
        Returns the task, with its reason, that was dead-lettered; None if it
        was already acked. Raises whatever dlq_worker or Redis raised: the
        message then stays pending.

        :param dead_letter: False acks the message with its failed record, and
            nothing else: no dlq_worker, no dead letter, no log (an expired job
            on a queue with ``dead_letter_expired=False``).
        """
        if task.error is None:
            last = self.last_failure(task.id)
            reason = last or f"max_retries={self.claimer.max_retries} used up"
            task = dataclasses.replace(task, error=reason)
        if self.claimer.dlq_worker is not None and dead_letter:
            self.claimer.dlq_worker(task)
        dlq_stream = self.dlq_stream if dead_letter else None
        reason = task.error or "unknown"
        keys = [
            self.stream,
            self.errors_key,
            derived_key(self.stream, f"moved:{task.id}"),
            self.tracebacks_key,
            self.runs_key,
            result_key(self.stream, task.id),
        ]
        if traceback is None and task.job is not None:
            traceback = self.last_traceback(task.id)
        record = {
            "status": "failed" if dlq_stream is None else "dead",
            "error": reason,
            "traceback": traceback,
            "deliveries": task.deliveries,
            "consumer": self.consumer,
            "group": self.group,
        }
        traceparent = traceparent_of(task.fields)
        if traceparent is not None:
            record["traceparent"] = traceparent
        args: list[Any] = [
            self.group,
            task.id,
            uuid.uuid4().hex,
            self.record_ttl_ms,
            json.dumps(record, ensure_ascii=False),
            waiters_key(self.stream),
            done_key(self.stream, ""),
        ]
        if dlq_stream is not None:
            keys.append(dlq_stream)
            meta = {
                "flowd:id": task.id,
                "flowd:stream": self.stream,
                "flowd:group": self.group,
                "flowd:consumer": self.consumer,
                "flowd:deliveries": str(task.deliveries),
                "flowd:reason": reason,
            }
            if traceback:
                meta["flowd:traceback"] = traceback
            for pair in (*task.fields.items(), *meta.items()):
                args += pair
        moved = self._run_move(keys, args)
        if not moved:
            logger.info(
                "message %s on %s/%s was already acked; not dead-lettered again",
                task.id,
                self.stream,
                self.group,
            )
            return None
        if not dead_letter:
            return task
        if dlq_stream is None:
            logger.warning(
                "dropped dead message %s on %s/%s after %d deliveries (the "
                "dead-letter stream is off): %s",
                task.id,
                self.stream,
                self.group,
                task.deliveries,
                reason,
            )
        else:
            logger.warning(
                "dead-lettered %s on %s/%s to %s after %d deliveries: %s",
                task.id,
                self.stream,
                self.group,
                dlq_stream,
                task.deliveries,
                reason,
            )
        return task
