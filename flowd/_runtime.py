"""What one run (or drain) of a Queue shares between its threads.

A :class:`WorkerPool` is shared by every stream of the queue (one, or one per
partition): the permits that bound concurrency, the worker threads and their
loops, the counters and the jobs running now. A :class:`Runtime` is one
stream's part: its acker and its dead-letter path.

The reader and the claimer hand entries to :meth:`Runtime.dispatch` while
holding one permit per entry. Each of the pool's ``concurrency`` worker threads
runs one long-lived loop that takes tasks from a queue (a SimpleQueue handoff
costs far less per message than ``executor.submit``), runs them, and gives the
permit back when the job, or its dead-letter handling, is done.
"""

from __future__ import annotations

import logging
import queue as queue_module
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._acker import Acker
from ._deadletter import DeadLetterPath
from ._keys import derived_key
from ._permits import Permits
from ._scheduler import UniqueRelease
from ._timeutil import remaining
from .errors import DecodeError
from .hooks import HookSet, LogHooks, call_hooks
from .job import decode_job
from .task import Task

if TYPE_CHECKING:
    from ._redis import Fields
    from .queue import Queue

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of one run, read with ``QueueHandle.stats()``.

    ``processed``: jobs that returned (and were acked). ``failed``: runs that
    raised. ``retried``: runs of a message delivered before. ``dead_lettered``:
    messages moved to the dead-letter path. ``deleted``: pending entries that
    had been deleted from the stream, acked without running. ``in_flight``:
    jobs running now. ``groups_lost``: times the consumer group vanished while
    running (the stream evicted, flushed or deleted): data was lost.
    """

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deleted: int = 0
    in_flight: int = 0
    groups_lost: int = 0


class _Counts:
    """Counters written by one thread only (or under a lock); stats() sums them."""

    __slots__ = ("dead_lettered", "deleted", "failed", "groups_lost", "processed", "retried")

    def __init__(self) -> None:
        self.processed = self.failed = self.retried = self.dead_lettered = self.deleted = 0
        self.groups_lost = 0


class _DeadLetter:
    """A work item for the dead-letter path (a plain Task is a job to run)."""

    __slots__ = ("task",)

    def __init__(self, task: Task[Any]) -> None:
        self.task = task


class WorkerPool:
    """Permits, worker threads, counters and running jobs shared by a queue's streams."""

    def __init__(self, queue: Queue[Any]) -> None:
        self.queue = queue
        self.stop_event = threading.Event()
        #: Lease renewal outlives stop_event: running jobs stay leased until they finish.
        self.lease_stop = threading.Event()
        self.permits = Permits(queue.concurrency)
        #: (stream, message id) -> (task, monotonic start) of every job running now.
        self.running: dict[tuple[str, str], tuple[Task[Any], float]] = {}
        #: When stop() must be done by (monotonic), once stopping.
        self.deadline: float | None = None
        self.hooks = HookSet([LogHooks(), UniqueRelease(queue.client), *queue.hooks])
        #: stream -> its Runtime; filled by Runtime() before any job runs.
        self.streams: dict[str, Runtime] = {}
        self._counts: list[_Counts] = []
        self._worker_threads: set[threading.Thread] = set()
        self.dispatch_counts = self._new_counts()  # written under dispatch_lock
        self.dispatch_lock = threading.Lock()
        self.tasks: queue_module.SimpleQueue[Task[Any] | _DeadLetter | None] = (
            queue_module.SimpleQueue()
        )
        # Daemon threads, not a ThreadPoolExecutor: interpreter exit stops the queue
        # gracefully first (flowd._lifecycle), and a job that never returns must not then
        # keep the process alive (concurrent.futures joins its threads without a limit).
        self._loops = [
            threading.Thread(
                target=self._worker_loop, name=f"flowd-worker-{queue.stream}_{i}", daemon=True
            )
            for i in range(queue.concurrency)
        ]
        for thread in self._loops:
            thread.start()

    def _new_counts(self) -> _Counts:
        counts = _Counts()
        self._counts.append(counts)
        return counts

    def forget_after_fork(self) -> None:
        """In a forked child, which has none of these threads: nothing runs here."""
        self.stop_event.set()
        self.lease_stop.set()
        self.queue.forget_after_fork()

    def is_worker_thread(self, thread: threading.Thread) -> bool:
        """True for the worker threads of this pool."""
        return thread in self._worker_threads

    def _worker_loop(self) -> None:
        # The hot path: names bound once, counters private to this thread.
        self._worker_threads.add(threading.current_thread())
        counts = self._new_counts()
        get, running, release = self.tasks.get, self.running, self.permits.release
        worker, streams, monotonic = self.queue.worker, self.streams, time.monotonic
        before, success = self.hooks.before_job, self.hooks.after_success
        while (item := get()) is not None:
            if type(item) is _DeadLetter:
                self._run_dead_letter(item.task, counts)
                continue
            task: Task[Any] = item  # type: ignore[assignment]
            msg_id = task.id
            key = (task.stream, msg_id)
            retried = task.deliveries > 1
            started = monotonic()
            running[key] = (task, started)
            try:
                if before:
                    call_hooks(before, task)
                worker(task)
            except BaseException as exc:
                counts.failed += 1
                self._failed(task, exc, monotonic() - started)
            else:
                streams[task.stream].acker.add(msg_id, retried)
                counts.processed += 1
                if success:
                    call_hooks(success, task, monotonic() - started)
            finally:
                if retried:
                    counts.retried += 1
                running.pop(key, None)
                release()

    def _failed(self, task: Task[Any], exc: BaseException, duration: float) -> None:
        call_hooks(self.hooks.after_failure, task, exc, duration)
        dead_letters = self.streams[task.stream].dead_letters
        if dead_letters is not None:
            dead_letters.record_failure(task.id, exc)

    def _run_dead_letter(self, task: Task[Any], counts: _Counts) -> None:
        dead_letters = self.streams[task.stream].dead_letters
        assert dead_letters is not None
        # Leased like a running job, so a slow dlq_worker is not reclaimed meanwhile.
        self.running[task.stream, task.id] = (task, time.monotonic())
        try:
            if dead_letters.handle(task):
                counts.dead_lettered += 1
                call_hooks(self.hooks.on_dead_letter, task)
        except BaseException:
            logger.exception(
                "dead-letter handling of %s on %s failed; it stays pending and "
                "is tried again on a later sweep",
                task.id,
                task.stream,
            )
        finally:
            self.running.pop((task.stream, task.id), None)
            self.permits.release()

    def finish(
        self,
        leases: Sequence[threading.Thread],
        deadline: float | None,
        *,
        finished: bool,
        ack_deadline: float | None,
    ) -> None:
        """After the jobs: end the leases, flush and close every stream's acker (retrying
        until ``ack_deadline``), and end the worker loops (waiting if ``finished``)."""
        self.lease_stop.set()
        for lease in leases:
            lease.join(remaining(deadline))
        runtimes = list(self.streams.values())
        for runtime in runtimes:
            runtime.acker.close(ack_deadline)
        for runtime in runtimes:
            runtime.acker.thread.join(remaining(deadline))
        self.shutdown(wait=finished)

    def shutdown(self, *, wait: bool) -> None:
        """End the worker loops once their current job is done; wait for them if asked."""
        for _ in self._loops:
            self.tasks.put(None)
        if wait:
            for thread in self._loops:
                thread.join()

    def stats(self) -> QueueStats:
        totals = _Counts()
        for counts in list(self._counts):
            totals.processed += counts.processed
            totals.failed += counts.failed
            totals.retried += counts.retried
            totals.dead_lettered += counts.dead_lettered
            totals.deleted += counts.deleted
            totals.groups_lost += counts.groups_lost
        return QueueStats(
            totals.processed,
            totals.failed,
            totals.retried,
            totals.dead_lettered,
            totals.deleted,
            self.permits.in_use,
            totals.groups_lost,
        )

    def running_report(self) -> str:
        now = time.monotonic()
        items = sorted(list(self.running.values()), key=lambda item: item[1])
        return ", ".join(f"{task.id} ({now - started:.1f}s)" for task, started in items)


class Runtime:
    """One stream of a running queue: its acker and its dead-letter path, on a shared pool."""

    def __init__(self, pool: WorkerPool, stream: str) -> None:
        queue = pool.queue
        self.pool = pool
        self.queue = queue
        self.client = queue.client
        self.stream = stream
        self.group = queue.group
        self.consumer = queue.consumer
        self.permits = pool.permits
        self.stop_event = pool.stop_event
        self.lease_stop = pool.lease_stop
        self.running = pool.running
        errors_key = derived_key(stream, f"errors:{queue.group}")
        self.acker = Acker(queue.client, stream, queue.group, errors_key)
        self.dead_letters = (
            None
            if queue.claimer is None
            else DeadLetterPath(
                queue.client, stream, queue.group, queue.consumer, errors_key, queue.claimer
            )
        )
        pool.streams[stream] = self

    @property
    def deadline(self) -> float | None:
        """When the stop must be done by (monotonic); None while running or without limit."""
        return self.pool.deadline

    # -- entry points for the reader and the claimer (caller holds one permit per entry)

    def dispatch(
        self, msg_id: str, fields: Fields | None, deliveries: int, *, claimed: bool = False
    ) -> None:
        """Queue one entry to run, or route it to the dead-letter path."""
        if fields is None:
            self.ack_deleted(msg_id)
            self.permits.release()
            return
        try:
            job = decode_job(self.queue.job, fields, msg_id)
        except DecodeError as exc:
            self.dead_letter(msg_id, fields, deliveries, None, exc.reason_text())
            return
        task = Task(msg_id, job, deliveries, self.stream, fields)
        on_claim = self.pool.hooks.on_claim
        if claimed and on_claim:
            call_hooks(on_claim, task)
        self.pool.tasks.put(task)

    def dead_letter(
        self, msg_id: str, fields: Fields, deliveries: int, job: Any, reason: str
    ) -> None:
        """Queue one entry for the dead-letter path (it does not run)."""
        if self.dead_letters is None:
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
        task = Task(msg_id, job, deliveries, self.stream, fields, reason)
        self.pool.tasks.put(_DeadLetter(task))

    def exhausted(self, msg_id: str, fields: Fields, deliveries: int) -> None:
        """A claimed message past max_retries: dead-letter it with its last failure."""
        assert self.dead_letters is not None
        try:
            job: Any = decode_job(self.queue.job, fields, msg_id)
        except DecodeError as exc:
            job, reason = None, exc.reason_text()
        else:
            last = self.dead_letters.last_failure(msg_id)
            reason = last or f"no success after {deliveries - 1} deliveries"
        self.dead_letter(msg_id, fields, deliveries, job, reason)

    def group_lost(self) -> None:
        """The group vanished while running and was just recreated: say that data was lost."""
        logger.error(
            "consumer group %s of stream %s vanished while the queue was running: the stream "
            "was evicted (maxmemory-policy), flushed or deleted, or the group destroyed; the "
            "jobs and pending entries it held are lost. The group was recreated",
            self.group,
            self.stream,
        )
        with self.pool.dispatch_lock:
            self.pool.dispatch_counts.groups_lost += 1

    def ack_deleted(self, msg_id: str) -> None:
        """A pending entry deleted from the stream: ack it so it leaves the PEL, count it."""
        logger.info(
            "message %s on %s/%s was deleted from the stream while pending; acking it",
            msg_id,
            self.stream,
            self.group,
        )
        self.acker.add(msg_id, True)
        with self.pool.dispatch_lock:
            self.pool.dispatch_counts.deleted += 1
