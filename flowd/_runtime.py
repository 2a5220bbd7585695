"""Runtime: what one run (or drain) of a Queue shares between its threads.

The reader and the claimer hand entries to :meth:`Runtime.dispatch` while
holding one permit per entry; the entry then runs on the executor, and the
permit comes back when its job (or its dead-letter handling) is done.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._acker import Acker
from ._keys import derived_key
from ._permits import Permits
from .errors import DecodeError
from .job import decode_job
from .task import Task

if TYPE_CHECKING:
    from ._redis import Fields
    from .queue import Queue

logger = logging.getLogger(__name__)

_REASON_LIMIT = 2000

# Moves one message to the dead-letter stream and acks it, atomically and at
# most once: a re-sent script finds the message already acked and adds nothing.
_DEAD_LETTER_LUA = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('HDEL', KEYS[3], ARGV[2])
return acked
"""

# Acks a message whose dead-letter stream is turned off.
_ACK_DEAD_LUA = """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return acked
"""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of one run, read with ``QueueHandle.stats()``.

    ``processed``: jobs that returned (and were acked). ``failed``: runs that
    raised. ``retried``: runs of a message delivered before. ``dead_lettered``:
    messages moved to the dead-letter path. ``deleted``: pending entries that
    had been deleted from the stream, acked without running. ``in_flight``:
    jobs running now.
    """

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deleted: int = 0
    in_flight: int = 0


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.deleted = 0


def _reason_of(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _REASON_LIMIT else text[:_REASON_LIMIT] + "..."


class Runtime:
    """Executor, permits, acker and counters for one run of a queue."""

    def __init__(self, queue: Queue[Any]) -> None:
        self.queue = queue
        self.client = queue.client
        self.stream = queue.stream
        self.group = queue.group
        self.consumer = queue.consumer
        self.stop_event = threading.Event()
        #: Lease renewal outlives stop_event: running jobs stay leased until they finish.
        self.lease_stop = threading.Event()
        self.permits = Permits(queue.concurrency)
        self.errors_key = derived_key(queue.stream, f"errors:{queue.group}")
        self.acker = Acker(queue.client, queue.stream, queue.group, self.errors_key)
        self.executor = ThreadPoolExecutor(
            max_workers=queue.concurrency, thread_name_prefix=f"flowd-worker-{queue.stream}"
        )
        self.counters = _Counters()
        #: message id -> (task, monotonic start) of every job running now.
        self.running: dict[str, tuple[Task[Any], float]] = {}
        #: When stop() must be done by (monotonic), once stopping.
        self.deadline: float | None = None
        claimer = queue.claimer
        self.dlq_stream = claimer.dead_letter_stream(queue.stream) if claimer else None
        self._dead_letter_script = self.client.register_script(_DEAD_LETTER_LUA)
        self._ack_dead_script = self.client.register_script(_ACK_DEAD_LUA)

    # -- entry points for the reader and the claimer (caller holds one permit per entry)

    def dispatch(self, msg_id: str, fields: Fields | None, deliveries: int) -> None:
        """Run one entry on the executor, or route it to the dead-letter path."""
        if fields is None:
            self.ack_deleted(msg_id)
            self.permits.release()
            return
        try:
            job = decode_job(self.queue.job, fields, msg_id)
        except DecodeError as exc:
            self.dead_letter(msg_id, fields, deliveries, None, exc.reason_text())
            return
        task: Task[Any] = Task(msg_id, job, deliveries, self.stream, fields)
        self.executor.submit(self._execute, task)

    def dead_letter(
        self, msg_id: str, fields: Fields, deliveries: int, job: Any, reason: str
    ) -> None:
        """Send one entry down the dead-letter path on the executor (without running it)."""
        if self.queue.claimer is None:
            logger.error(
                "message %s on %s/%s cannot be processed (%s); no claimer is "
                "configured, so it stays pending",
                msg_id,
                self.stream,
                self.group,
                reason,
            )
            self.permits.release()
            return
        task: Task[Any] = Task(msg_id, job, deliveries, self.stream, fields, reason)
        self.executor.submit(self._execute_dead_letter, task)

    # -- executor side

    def _execute(self, task: Task[Any]) -> None:
        msg_id = task.id
        retried = task.deliveries > 1
        self.running[msg_id] = (task, time.monotonic())
        try:
            self.queue.worker(task)
        except BaseException as exc:
            logger.error(
                "job %s on %s/%s failed (delivery %d); it stays pending",
                msg_id,
                self.stream,
                self.group,
                task.deliveries,
                exc_info=exc,
            )
            with self.counters.lock:
                self.counters.failed += 1
                if retried:
                    self.counters.retried += 1
            self._record_failure(msg_id, exc)
        else:
            self.acker.add(msg_id, retried=retried)
            with self.counters.lock:
                self.counters.processed += 1
                if retried:
                    self.counters.retried += 1
        finally:
            self.running.pop(msg_id, None)
            self.permits.release()

    def _record_failure(self, msg_id: str, exc: BaseException) -> None:
        """Keep the failure's text in Redis, so whoever dead-letters it can give the reason."""
        if self.queue.claimer is None:
            return
        try:
            self.client.hset(self.errors_key, msg_id, _reason_of(exc))
        except Exception:
            logger.warning(
                "could not record the failure of %s on %s", msg_id, self.stream, exc_info=True
            )

    def _last_failure(self, msg_id: str) -> str | None:
        try:
            reason = self.client.hget(self.errors_key, msg_id)
        except Exception:
            logger.warning("could not read the failure reason of %s", msg_id, exc_info=True)
            return None
        if isinstance(reason, bytes):
            return reason.decode("utf-8", "replace")
        return reason if isinstance(reason, str) else None

    def _execute_dead_letter(self, task: Task[Any]) -> None:
        try:
            self._dead_letter_now(task)
        except BaseException:
            logger.exception(
                "dead-letter handling of %s on %s/%s failed; it stays pending "
                "and is tried again on a later sweep",
                task.id,
                self.stream,
                self.group,
            )
        finally:
            self.permits.release()

    def _dead_letter_now(self, task: Task[Any]) -> None:
        claimer = self.queue.claimer
        assert claimer is not None
        if claimer.dlq_worker is not None:
            claimer.dlq_worker(task)
        reason = task.error or "unknown"
        if self.dlq_stream is not None:
            meta: dict[str, str] = {
                "flowd:id": task.id,
                "flowd:stream": self.stream,
                "flowd:group": self.group,
                "flowd:consumer": self.consumer,
                "flowd:deliveries": str(task.deliveries),
                "flowd:reason": reason,
                "flowd:time": str(int(time.time() * 1000)),
            }
            args: list[Any] = [self.group, task.id]
            for pair in (*task.fields.items(), *meta.items()):
                args += pair
            moved = self._dead_letter_script(
                keys=[self.stream, self.dlq_stream, self.errors_key], args=args
            )
        else:
            moved = self._ack_dead_script(
                keys=[self.stream, self.errors_key], args=[self.group, task.id]
            )
        if not moved:
            logger.info(
                "message %s on %s/%s was already acked; not dead-lettered again",
                task.id,
                self.stream,
                self.group,
            )
            return
        with self.counters.lock:
            self.counters.dead_lettered += 1
        if self.dlq_stream is not None:
            logger.warning(
                "dead-lettered %s on %s/%s to %s after %d deliveries: %s",
                task.id,
                self.stream,
                self.group,
                self.dlq_stream,
                task.deliveries,
                reason,
            )
        else:
            logger.warning(
                "dropped dead message %s on %s/%s after %d deliveries (the "
                "dead-letter stream is off): %s",
                task.id,
                self.stream,
                self.group,
                task.deliveries,
                reason,
            )

    def exhausted(self, msg_id: str, fields: Fields, deliveries: int) -> None:
        """A claimed message past max_retries: dead-letter it with its last failure."""
        try:
            job: Any = decode_job(self.queue.job, fields, msg_id)
        except DecodeError as exc:
            job, reason = None, exc.reason_text()
        else:
            last = self._last_failure(msg_id)
            reason = last or f"no success after {deliveries - 1} deliveries"
        self.dead_letter(msg_id, fields, deliveries, job, reason)

    def ack_deleted(self, msg_id: str) -> None:
        """A pending entry deleted from the stream: ack it so it leaves the PEL, count it."""
        logger.info(
            "message %s on %s/%s was deleted from the stream while pending; acking it",
            msg_id,
            self.stream,
            self.group,
        )
        self.acker.add(msg_id, retried=True)
        with self.counters.lock:
            self.counters.deleted += 1

    # -- reporting

    def stats(self) -> QueueStats:
        c = self.counters
        with c.lock:
            return QueueStats(
                c.processed, c.failed, c.retried, c.dead_lettered, c.deleted, self.permits.in_use
            )

    def running_report(self) -> str:
        now = time.monotonic()
        items = sorted(self.running.values(), key=lambda item: item[1])
        return ", ".join(f"{task.id} ({now - started:.1f}s)" for task, started in items)
