"""The worker pool: where jobs run, succeed or fail.

A :class:`WorkerPool` is shared by every stream of a run (one, or one per
partition): the permits that bound concurrency, the worker threads and their
loops, the counters and the jobs running now. Each stream adds its
:class:`StreamRoute` (where acks, failures and dead letters go).

The dispatcher hands tasks to :meth:`WorkerPool.submit` while their permit
is held. Each of the pool's ``concurrency`` worker threads runs one long-lived
loop (:meth:`WorkerPool._worker_loop`: the worker call, success and failure
in one place) that takes tasks from a queue (a SimpleQueue handoff costs far
less per message than ``executor.submit``), runs them, and gives the permit
back when the job, or its dead-letter handling, is done.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .._codec.failure import safe_str, traceback_of
from .._redis.fields import EXPIRES_FIELD
from ..errors import GiveUp, Retry, TimeLimitExceeded
from ..flow import expiry
from ..flow.adaptive import AdaptiveLoop, Reporter
from ..hooks import Hooks, HookSet, LogHooks, call_hooks
from ..task import Task, current_task_var
from .dead_letter_move import reason_of
from .permits import Permits
from .readahead import ALPHA, ReadAhead
from .retry import RetryControl
from .timelimit import TimeLimiter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of one run, read with ``QueueHandle.stats()``.

    ``processed``: jobs that returned (and were acked). ``failed``: runs that
    raised (Retry and GiveUp aside). ``retried``: runs of a message delivered
    before. ``dead_lettered``: messages moved to the dead-letter path.
    ``deleted``: pending entries that had been deleted from the stream, acked
    without running. ``in_flight``: jobs running now. ``groups_lost``: times
    the consumer group vanished while running (the stream evicted, flushed or
    deleted): data was lost. ``buffered``: messages read ahead, waiting for a
    worker (pending under this consumer, leased, handed back on stop).
    ``retry_requested``: runs that raised :class:`flowd.Retry`. ``gave_up``:
    runs that raised :class:`flowd.GiveUp`. ``expired``: jobs not run because
    their deadline (``enqueue(expires=...)``) passed before they started
    (dead-lettered, so also in ``dead_lettered``, or acked with
    ``Queue(dead_letter_expired=False)``). ``active_limit``: how many worker threads
    may run a job at once now (``concurrency``, or less while adaptive concurrency
    finds fewer threads faster; see ``Queue(adaptive_concurrency=...)``).
    """

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deleted: int = 0
    in_flight: int = 0
    groups_lost: int = 0
    buffered: int = 0
    retry_requested: int = 0
    gave_up: int = 0
    expired: int = 0
    active_limit: int = 0


class _Counts:
    """Counters written by one thread only (or under a lock); stats() sums them."""

    __slots__ = (
        "dead_lettered",
        "deleted",
        "expired",
        "failed",
        "gave_up",
        "groups_lost",
        "processed",
        "retried",
        "retry_requested",
    )

    def __init__(self) -> None:
        self.processed = self.failed = self.retried = self.dead_lettered = self.deleted = 0
        self.groups_lost = self.retry_requested = self.gave_up = self.expired = 0


class DeadLetterWork:
    """A work item for the dead-letter path (a plain Task is a job to run)."""

    __slots__ = ("task",)

    def __init__(self, task: Task[Any]) -> None:
        self.task = task


class StreamRoute(Protocol):
    """Where one stream's outcomes go (see flowd._consumer.dispatch.Dispatcher)."""

    def ack(self, task: Task[Any], retried: bool, record: str | None = None) -> None: ...

    #: Makes a success's result record (task, returned value, start in epoch seconds),
    #: or None when the queue keeps no results. Raises for a value it cannot keep.
    keep: Callable[[Task[Any], object, float], str] | None

    def record_start(self, task: Task[Any]) -> bool: ...

    def let_go(self, task: Task[Any]) -> None: ...

    def record_failure(self, msg_id: str, exc: BaseException, traceback: str) -> None: ...

    def move_dead(self, task: Task[Any]) -> Task[Any] | None: ...

    def expire(self, task: Task[Any]) -> Task[Any] | None: ...

    @property
    def retry(self) -> RetryControl: ...


def _run_limited(
    limiter: TimeLimiter, worker: Callable[[Task[Any]], object], task: Task[Any]
) -> object:
    """Call the worker under the time limit; its return value."""
    token = limiter.enter(task)
    try:
        return worker(task)
    finally:
        limiter.exit(token)


class WorkerPool:
    """Permits, executor, counters and running jobs shared by a run's streams.

    :param worker: the application's worker, called with each Task.
    :param hooks: the application's hooks (LogHooks come first).
    :param concurrency: worker threads, and permits.
    :param name: the worker threads are ``flowd-worker-<name>_<n>``.
    :param adaptive: vary the active limit (flowd.flow.adaptive), telling this reporter.
    """

    def __init__(
        self,
        worker: Callable[[Task[Any]], object],
        hooks: Sequence[Hooks],
        concurrency: int,
        name: str,
        time_limit: float | None = None,
        adaptive: Reporter | None = None,
    ) -> None:
        self.worker = worker
        self.tasks: queue_module.SimpleQueue[Task[Any] | DeadLetterWork | None] = (
            queue_module.SimpleQueue()
        )
        #: Hand a task (permit held) to the worker loops.
        self.submit = self.tasks.put
        self.permits = Permits(concurrency, self.submit)
        #: How many messages the readers may read beyond the free permits.
        self.readahead = ReadAhead(concurrency)
        #: Held by the lease loops while they renew: a retry waits for it before setting
        #: its message's idle time, so no renewal in flight resets that afterwards.
        self.lease_lock = threading.Lock()
        self.limiter = None if time_limit is None else TimeLimiter(time_limit, name)
        #: (stream, message id) -> (task, monotonic start) of every job running now.
        self.running: dict[tuple[str, str], tuple[Task[Any], float]] = {}
        self.hooks = HookSet([LogHooks(), *hooks])
        #: stream -> its route; every stream's is added before its loops start.
        self.routes: dict[str, StreamRoute] = {}
        self._counts: list[_Counts] = []
        self._worker_threads: set[threading.Thread] = set()
        self.dispatch_counts = self._new_counts()  # written under dispatch_lock
        self.dispatch_lock = threading.Lock()
        # Daemon threads, not a ThreadPoolExecutor: interpreter exit stops the queue
        # gracefully first (flowd._lifecycle), and a job that never returns must not then
        # keep the process alive (concurrent.futures joins its threads without a limit).
        self._loops = [
            threading.Thread(target=self._worker_loop, name=f"flowd-worker-{name}_{i}", daemon=True)
            for i in range(concurrency)
        ]
        for thread in self._loops:
            thread.start()
        self.adaptive: AdaptiveLoop | None = None
        if adaptive is not None and concurrency > 1:
            self.adaptive = AdaptiveLoop(
                name, self.permits, self.completed, self._job_seconds, self.set_limit, adaptive
            )
            self.adaptive.start()

    def set_limit(self, limit: int) -> None:
        """Let ``limit`` worker threads run a job at once (read-ahead follows it)."""
        self.permits.set_limit(limit)
        self.readahead.concurrency = limit

    def _job_seconds(self) -> float:
        return self.readahead.seconds

    def completed(self) -> int:
        """Runs finished so far, whatever their outcome (what adaptive concurrency counts)."""
        return sum(c.processed + c.failed + c.retry_requested + c.gave_up for c in self._counts)

    def count_deleted(self) -> None:
        with self.dispatch_lock:
            self.dispatch_counts.deleted += 1

    def count_group_lost(self) -> None:
        with self.dispatch_lock:
            self.dispatch_counts.groups_lost += 1

    def running_ids(self, stream: str) -> set[str]:
        """Ids of ``stream`` whose job (or dead-letter handling) runs now."""
        return {msg_id for (s, msg_id) in list(self.running) if s == stream}

    def running_since(self, stream: str, cutoff: float) -> list[str]:
        """Ids of ``stream`` whose job started at or before ``cutoff`` (monotonic)."""
        return [
            msg_id
            for (s, msg_id), (_, started) in list(self.running.items())
            if s == stream and started <= cutoff
        ]

    def _new_counts(self) -> _Counts:
        counts = _Counts()
        self._counts.append(counts)
        return counts

    def is_worker_thread(self, thread: threading.Thread) -> bool:
        """True for the worker threads of this pool."""
        return thread in self._worker_threads

    def _worker_loop(self) -> None:
        # The hot path: names bound once, counters private to this thread.
        self._worker_threads.add(threading.current_thread())
        counts = self._new_counts()
        get, running, next_or_release = self.tasks.get, self.running, self.permits.next_or_release
        worker, routes, monotonic, wall = self.worker, self.routes, time.monotonic, time.time
        before, success = self.hooks.before_job, self.hooks.after_success
        readahead, limiter = self.readahead, self.limiter
        set_current, reset_current = current_task_var.set, current_task_var.reset
        run = worker if limiter is None else functools.partial(_run_limited, limiter, worker)
        expires_field = EXPIRES_FIELD
        item: Task[Any] | DeadLetterWork | None
        while (item := get()) is not None:
            # With read-ahead, go on with buffered items under the same permit.
            while item is not None:
                if type(item) is DeadLetterWork:
                    self._run_dead_letter(item.task, counts)
                    item = next_or_release()
                    continue
                task: Task[Any] = item  # type: ignore[assignment]
                msg_id = task.id
                key = (task.stream, msg_id)
                retried = task.deliveries > 1
                if (retried or expires_field in task.fields) and not self._may_start(
                    task, retried, counts
                ):
                    item = next_or_release()
                    continue
                started = monotonic()
                started_at = wall()
                running[key] = (task, started)
                route = routes[task.stream]
                current = set_current(task)  # for current_task() and JobLogFilter
                try:
                    if before:
                        call_hooks(before, task)
                    value = run(task)
                    # Encoded here: a value that cannot be kept fails the run, with why.
                    keep = route.keep
                    record = None if keep is None else keep(task, value, started_at)
                except BaseException as exc:
                    if limiter is not None:
                        limiter.exit_current()  # if the exception cut exit() short
                    try:
                        self._failed(task, exc, monotonic() - started, counts)
                    except BaseException as inner:  # this thread and its permit must live on
                        self._failure_not_recorded(task, inner)
                else:
                    route.ack(task, retried, record)
                    counts.processed += 1
                    if success:
                        call_hooks(success, task, monotonic() - started)
                finally:
                    reset_current(current)
                    if retried:
                        counts.retried += 1
                    running.pop(key, None)
                    seconds = readahead.seconds
                    readahead.seconds = seconds + (monotonic() - started - seconds) * ALPHA
                item = next_or_release()

    def _failed(
        self, task: Task[Any], exc: BaseException, duration: float, counts: _Counts
    ) -> None:
        """A run raised: Retry, GiveUp, or a failure (which the retry policy may move)."""
        route = self.routes[task.stream]
        route.let_go(task)  # its key's lease (per-key concurrency): the run is over
        control = route.retry
        if isinstance(exc, Retry):
            counts.retry_requested += 1
            call_hooks(self.hooks.after_retry, task, exc, duration)
            dead = control.retry(task, exc.delay, f"Retry: {safe_str(exc)}", None)
        elif isinstance(exc, GiveUp):
            counts.gave_up += 1
            call_hooks(self.hooks.after_give_up, task, exc, duration)
            dead = control.give_up(task, f"GiveUp: {safe_str(exc.reason)}", traceback_of(exc))
        else:
            counts.failed += 1
            if isinstance(exc, TimeLimitExceeded) and not exc.args and self.limiter is not None:
                exc.args = (f"the job ran past its time limit of {self.limiter.limit:g}s",)
            call_hooks(self.hooks.after_failure, task, exc, duration)
            traceback = traceback_of(exc)
            route.record_failure(task.id, exc, traceback)
            dead = control.failed(task, reason_of(exc), traceback)
        if dead is not None:
            counts.dead_lettered += 1
            call_hooks(self.hooks.on_dead_letter, dead)

    def _failure_not_recorded(self, task: Task[Any], exc: BaseException) -> None:
        # Redis refused the record, or a policy raised: the message stays pending, so
        # the claimer runs it again or dead-letters it once its deliveries are used up.
        try:
            logger.error(
                "the failure of job %s on %s could not be recorded (%s: %s); it stays "
                "pending for the claimer",
                task.id,
                task.stream,
                type(exc).__name__,
                safe_str(exc),
            )
        except BaseException:  # logging itself failed: nothing more can be said
            pass

    def release_lease(self, task: Task[Any]) -> None:
        """Stop leasing ``task``'s message; returns once no renewal of it is in flight."""
        self.running.pop((task.stream, task.id), None)
        with self.lease_lock:
            pass

    def _run_dead_letter(self, task: Task[Any], counts: _Counts) -> None:
        # Leased like a running job, so a slow dlq_worker is not reclaimed meanwhile.
        self.running[task.stream, task.id] = (task, time.monotonic())
        try:
            dead = self.routes[task.stream].move_dead(task)
            if dead is not None:
                counts.dead_lettered += 1
                call_hooks(self.hooks.on_dead_letter, dead)
        except BaseException:
            logger.exception(
                "dead-letter handling of %s on %s failed; it stays pending and "
                "is tried again on a later sweep",
                task.id,
                task.stream,
            )
        finally:
            self.running.pop((task.stream, task.id), None)

    def _may_start(self, task: Task[Any], retried: bool, counts: _Counts) -> bool:
        """Whether a claimed job, or one with a deadline, may start now; one that may not
        was handled here (expired) or stays pending (its start could not be recorded)."""
        # Checked right before the run: the job may have waited in the read-ahead buffer
        # or for a permit since it was read.
        deadline = task.fields.get(EXPIRES_FIELD)
        if deadline is not None and (why := expiry.why_not_run(deadline, time.time())):
            self._expire(task, why, counts)
            return False
        # A claimed run counts once it starts (flowd._runs); unrecorded, it must not.
        return not retried or self.routes[task.stream].record_start(task)

    def _expire(self, task: Task[Any], reason: str, counts: _Counts) -> None:
        """Do not run a job whose deadline passed (or is unreadable): its route
        dead-letters or acks it."""
        task = dataclasses.replace(task, error=reason)
        key = (task.stream, task.id)
        self.running[key] = (task, time.monotonic())  # leased while it is handled
        try:
            dead = self.routes[task.stream].expire(task)
        except BaseException:
            logger.exception(
                "handling of expired job %s on %s failed; it stays pending and is "
                "handled again when it is claimed",
                task.id,
                task.stream,
            )
            return
        finally:
            self.running.pop(key, None)
        if reason == expiry.EXPIRED:
            counts.expired += 1
            call_hooks(self.hooks.on_expired, task)
        if dead is not None:
            counts.dead_lettered += 1
            call_hooks(self.hooks.on_dead_letter, dead)

    def shutdown(self, *, wait: bool) -> None:
        """End the worker loops once their current job is done; wait for them if asked."""
        if self.adaptive is not None:
            self.adaptive.stop()
        left = self.permits.take_buffer()  # none may start after stop() returned
        if left:
            logger.warning(
                "%d messages read ahead were not started; they stay pending for the claimer",
                len(left),
            )
        for _ in self._loops:
            self.tasks.put(None)
        if wait:
            for thread in self._loops:
                thread.join()
        if self.limiter is not None:
            self.limiter.close()

    def stats(self) -> QueueStats:
        every = list(self._counts)
        totals = {name: sum(getattr(c, name) for c in every) for name in _Counts.__slots__}
        return QueueStats(
            **totals,
            in_flight=self.permits.in_use,
            buffered=self.permits.buffered,
            active_limit=self.permits.limit,
        )

    def running_report(self) -> str:
        now = time.monotonic()
        items = sorted(list(self.running.values()), key=lambda item: item[1])
        return ", ".join(f"{task.id} ({now - started:.1f}s)" for task, started in items)
