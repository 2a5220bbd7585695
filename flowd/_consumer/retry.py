"""Retry control: what happens to a message after Retry, GiveUp, or a failure under a backoff.

- A retry whose delay is shorter than the claimer's ``min_idle_time`` stays in
  the PEL: ``XCLAIM <id> IDLE <min_idle - delay> JUSTID`` makes it claimable
  exactly ``delay`` from now without counting a delivery, and this process's
  claimer is told when (:class:`RetryTimer`), so it takes it on time; any
  other consumer's claimer would take it at its next sweep after that.
- A longer one leaves the PEL: one script acks it and writes it into the
  stream's scheduled set (``{stream}:scheduled``, due by Redis's clock) with
  ``flowd:runs``, the runs done so far, so ``task.deliveries`` keeps counting
  when the scheduler moves it back into the stream. ``flowd:group`` names the
  group that asked: other groups of the stream ack the new entry unread. Both are
  believed only beside ``flowd:retry-of``, which only this script writes.
- GiveUp, and a retry past ``max_retries``, dead-letter the message now.

Without a backoff, a failure stays pending for the claimer, as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .._redis.fields import prior_runs
from .._redis.keys import alias_key, derived_key, runs_key
from .._redis.records import alias_ttl_ms
from .._redis.scripts import Script
from .._redis.thread_sessions import ThreadSessions
from .._redis.timeutil import to_ms
from ..claimer import Claimer
from ..task import Task
from .dead_letter_move import DeadLetterMover
from .runs import exhausted_starts

logger = logging.getLogger(__name__)


# KEYS: stream, scheduled set, scheduled job's hash, errors hash, tracebacks hash, runs hash,
# the id's alias. ARGV: group, id, scheduled id, delay ms, runs so far, consumer, unique key
# prefix, alias ttl ms. The alias names the scheduled id, so Results follows the job.
# A unique_key the message holds (flowd:unique) passes to the scheduled job, as
# the scheduler's own enqueue would have it.
# Returns 0 if the message is not pending for this consumer (nothing changed),
# 1 if its entry was deleted from the stream (acked only), 2 if scheduled.
_SCHEDULE = Script(
    """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[6] then return 0 end
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local result = 1
if #found > 0 then
  local flat = found[1][2]
  local out = {}
  for j = 1, #flat, 2 do
    if flat[j] ~= 'flowd:runs' and flat[j] ~= 'flowd:group' and flat[j] ~= 'flowd:retry-of' then
      out[#out + 1] = flat[j]
      out[#out + 1] = flat[j + 1]
    end
    if flat[j] == 'flowd:unique' then
      local ukey = ARGV[7] .. flat[j + 1]
      if redis.call('GET', ukey) == ARGV[2] then redis.call('SET', ukey, ARGV[3]) end
    end
  end
  out[#out + 1] = 'flowd:runs'
  out[#out + 1] = ARGV[5]
  out[#out + 1] = 'flowd:group'
  out[#out + 1] = ARGV[1]
  out[#out + 1] = 'flowd:retry-of'
  out[#out + 1] = ARGV[2]
  redis.call('DEL', KEYS[3])
  for i = 1, #out, 1000 do
    redis.call('HSET', KEYS[3], unpack(out, i, math.min(i + 999, #out)))
  end
  local now = redis.call('TIME')
  local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], string.format('%.0f', due), ARGV[3])
  redis.call('SET', KEYS[7], ARGV[3], 'PX', tonumber(ARGV[8]) + tonumber(ARGV[4]))
  result = 2
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('HDEL', KEYS[6], ARGV[2])
return result
"""
)


def scheduled_id(msg_id: str, group: str, runs: int) -> str:
    """The scheduled-set member of a retry: the same for a re-sent script (idempotent)."""
    tag = hashlib.sha1(group.encode("utf-8")).hexdigest()[:8]
    return f"retry-{msg_id}-{tag}-{runs}"


class RetryTimer:
    """Messages kept in the PEL for a short retry, and when each is due (monotonic).

    The claimer waits on it, so it wakes when the first one is due and claims
    it then, instead of at its next sweep.
    """

    #: Longest single wait while the claimer waits (how soon it sees a stop).
    _SLICE = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: list[tuple[float, str]] = []
        self._changed = threading.Event()
        self._woken = False

    def add(self, msg_id: str, due: float) -> None:
        with self._lock:
            heapq.heappush(self._due, (due, msg_id))
        self._changed.set()

    def take_due(self, limit: int) -> list[str]:
        """Up to ``limit`` ids whose time has come, earliest first."""
        now = time.monotonic()
        out: list[str] = []
        with self._lock:
            while self._due and self._due[0][0] <= now and len(out) < limit:
                out.append(heapq.heappop(self._due)[1])
        return out

    def until_next(self) -> float | None:
        """Seconds until the next one is due (0 if one is), None if none is waiting."""
        with self._lock:
            if not self._due:
                return None
            return max(0.0, self._due[0][0] - time.monotonic())

    def wake(self) -> None:
        """End the claimer's wait now (e.g. its group was resumed: claim what waits)."""
        self._woken = True
        self._changed.set()

    def wait(self, stop: threading.Event, timeout: float) -> None:
        """Wait ``timeout`` seconds, less if a retry falls due first, ``stop`` is set or
        :meth:`wake` is called."""
        end = time.monotonic() + timeout
        while not stop.is_set():
            if self._woken:
                self._woken = False
                return
            self._changed.clear()  # before the look: an add() after it ends the wait
            next_due = self.until_next()
            left = end - time.monotonic()
            if next_due is not None:
                left = min(left, next_due)
            if left <= 0:
                return
            self._changed.wait(min(left, self._SLICE))


class RetryControl:
    """Retry decisions for the failed runs of one stream's messages.

    Its Redis calls run on worker threads, each with a
    :class:`~flowd._redis.session.Session` of its own (made on first use).

    :param release_lease: called before a short retry's XCLAIM: the message
        must no longer be leased (renewed) once its idle time is set.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        consumer: str,
        claimer: Claimer | None,
        dead_letters: DeadLetterMover | None,
        release_lease: Callable[[Task[Any]], None],
        result_ttl_ms: int | None = None,
    ) -> None:
        self.client = client
        self._alias_ttl_ms = alias_ttl_ms(result_ttl_ms)
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claimer = claimer
        self.dead_letters = dead_letters
        self.release_lease = release_lease
        self.timer = RetryTimer()
        self.min_idle_ms = None if claimer is None else to_ms(claimer.min_idle_time)
        self._scheduled_key = derived_key(stream, "scheduled")
        self._errors_key = derived_key(stream, f"errors:{group}")
        self._tracebacks_key = derived_key(stream, f"tracebacks:{group}")
        self._runs_key = runs_key(stream, group)
        self._sessions = ThreadSessions(client, stream)
        self._session = self._sessions.get

    def close(self) -> None:
        """Close the worker threads' sessions."""
        self._sessions.close()

    @property
    def active(self) -> bool:
        """True when failures follow a backoff instead of waiting for min_idle_time."""
        return self.claimer is not None and self.claimer.backoff is not None

    def failed(self, task: Task[Any], reason: str, traceback: str | None) -> Task[Any] | None:
        """A run raised: with a backoff, schedule the next run. The dead task if dead-lettered."""
        if not self.active:
            return None  # stays pending: the claimer retries it after min_idle_time
        return self.retry(task, None, reason, traceback, requested=False)

    def give_up(self, task: Task[Any], reason: str, traceback: str | None) -> Task[Any] | None:
        """The job raised GiveUp: dead-letter it now. The dead task if dead-lettered."""
        return self._dead_letter_now(task, reason, traceback)

    def retry(
        self,
        task: Task[Any],
        delay: float | None,
        reason: str,
        traceback: str | None,
        *,
        requested: bool = True,
    ) -> Task[Any] | None:
        """Schedule the next run of ``task`` after ``delay`` (None: the backoff's, else
        min_idle_time), or dead-letter it when max_retries is used up (then return the
        dead task)."""
        claimer = self.claimer
        if claimer is not None and task.deliveries > claimer.max_retries:
            return self._dead_letter_now(task, reason, traceback)
        if delay is None and claimer is not None and claimer.backoff is not None:
            delay = claimer.backoff.delay(task.deliveries)
        if requested:
            logger.info(
                "job %s on %s/%s asked for a retry %s (delivery %d%s)",
                task.id,
                self.stream,
                self.group,
                "after min_idle_time" if delay is None and claimer else f"in {delay or 0:.3g}s",
                task.deliveries,
                "" if claimer is None else f" of at most {claimer.max_retries + 1}",
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("job %s on %s: next run in %.3gs", task.id, self.stream, delay or 0)
        if delay is None:
            if claimer is not None:
                return None  # stays pending: the claimer takes it after min_idle_time
            delay = 0.0
        if self.min_idle_ms is not None and to_ms(delay) < self.min_idle_ms:
            self._keep_pending(task, delay)
        else:
            self._schedule_later(task, delay)
        return None

    def _keep_pending(self, task: Task[Any], delay: float) -> None:
        assert self.min_idle_ms is not None
        self.release_lease(task)
        idle = max(self.min_idle_ms - to_ms(delay), 0)
        try:
            # JUSTID: the idle time changes, the delivery count does not.
            self._session().call(
                "XCLAIM", self.stream, self.group, self.consumer, 0, task.id, "IDLE", idle, "JUSTID"
            )
        except Exception:
            logger.warning(
                "could not set the retry time of %s on %s; the claimer retries it after "
                "min_idle_time",
                task.id,
                self.stream,
                exc_info=True,
            )
            return
        self.timer.add(task.id, time.monotonic() + delay)

    def _schedule_later(self, task: Task[Any], delay: float) -> None:
        runs = task.deliveries
        member = scheduled_id(task.id, self.group, runs)
        keys = [
            self.stream,
            self._scheduled_key,
            derived_key(self.stream, f"scheduled:{member}"),
            self._errors_key,
            self._tracebacks_key,
            self._runs_key,
            alias_key(self.stream, task.id),
        ]
        args = [
            self.group,
            task.id,
            member,
            to_ms(delay),
            runs,
            self.consumer,
            derived_key(self.stream, "unique:"),
            self._alias_ttl_ms,
        ]
        try:
            result = int(_SCHEDULE(self._session(), keys, args))
        except Exception:
            logger.warning(
                "could not schedule the retry of %s on %s; it stays pending and the claimer "
                "retries it after min_idle_time",
                task.id,
                self.stream,
                exc_info=True,
            )
            return
        if result == 0:
            logger.info(
                "retry of %s on %s/%s not scheduled: it is no longer pending for %s",
                task.id,
                self.stream,
                self.group,
                self.consumer,
            )
        elif result == 1:
            logger.info("message %s on %s was deleted from the stream; acked", task.id, self.stream)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("scheduled the retry of %s on %s as %s", task.id, self.stream, member)

    def _dead_letter_now(
        self, task: Task[Any], reason: str, traceback: str | None
    ) -> Task[Any] | None:
        if self.dead_letters is None:
            logger.error(
                "message %s on %s/%s cannot be dead-lettered (%s): no claimer is configured, "
                "so it stays pending",
                task.id,
                self.stream,
                self.group,
                reason,
            )
            return None
        dead = dataclasses.replace(task, error=reason)
        try:
            return dead if self.dead_letters.handle(dead, traceback=traceback) else None
        except Exception:
            logger.exception(
                "dead-letter handling of %s on %s failed; it stays pending and the claimer "
                "dead-letters it later",
                task.id,
                self.stream,
            )
            self._exhaust(task, reason, traceback)
            return None

    def _exhaust(self, task: Task[Any], reason: str, traceback: str | None) -> None:
        """Make the claimer's next claim of ``task`` its dead-letter claim, not one more run:
        keep the reason, and set both the delivery count (RETRYCOUNT) and the run record
        (flowd._runs) to the limit, since the claimer counts the smaller of the two."""
        assert self.dead_letters is not None
        self.dead_letters.record_reason(task.id, reason, traceback)
        limit = self.dead_letters.claimer.max_retries + 1
        prior = prior_runs(task.fields)
        count = max(limit - prior, 1)
        try:
            replies = self._session().call_many(
                [
                    (
                        "XCLAIM",
                        self.stream,
                        self.group,
                        self.consumer,
                        0,
                        task.id,
                        "RETRYCOUNT",
                        count,
                        "JUSTID",
                    ),
                    ("HSET", self._runs_key, task.id, exhausted_starts(limit, prior)),
                ]
            )
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except Exception:
            logger.warning(
                "could not mark %s on %s as exhausted", task.id, self.stream, exc_info=True
            )
