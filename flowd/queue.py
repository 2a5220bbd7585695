"""Queue: consume a stream with a consumer group, in threads or as a cron-style drain."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis.exceptions

from ._keys import dead_letter_stream, key_slot, partition_streams
from ._permits import Permits
from ._reader import Reader, read_own_pending, start_entries
from ._redis import (
    SAFE_EVICTION_POLICIES,
    Session,
    check_client,
    ensure_group,
    eviction_policy,
    is_transient,
    parse_xreadgroup,
)
from ._runtime import Runtime, WorkerPool
from ._scheduler import move_due_before_drain, scheduler_thread
from ._threads import LoopThread
from ._timeutil import Seconds, remaining, to_seconds
from .claimer import Claimer, ClaimLoop, LeaseLoop
from .errors import ConfigurationError, HandleStateError
from .handle import QueueHandle, StreamThreads
from .hooks import Hooks
from .housekeeping import Housekeeping, HousekeepingLoop
from .job import Job, plan_of
from .schedule import Schedule, check_schedules
from .task import Task

__all__ = ["Queue", "WorkerFn"]

logger = logging.getLogger(__name__)

J = TypeVar("J", bound=Job)

#: A worker: returning means success (the message is acked); raising means failure.
WorkerFn = Callable[[Task[J]], None]


def default_consumer_name() -> str:
    """A consumer name unique to this process: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _check_name(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty str, not {value!r}")
    return value


class _DrainLimit:
    """When a drain must stop reading: its deadline or its stop event."""

    _POLL = 0.25  # how often a wait for permits looks at the stop event

    def __init__(self, deadline: float | None, stop: threading.Event) -> None:
        self.deadline = deadline
        self.stop = stop

    def free_permits(self, permits: Permits) -> int:
        """Wait for a free permit; 0 once the drain must stop reading."""
        while not self.stop.is_set():
            left = remaining(self.deadline)
            if left == 0.0:
                return 0
            free = permits.wait_free(self._POLL if left is None else min(left, self._POLL))
            if free:
                return free
        return 0


def _check_dead_letter_stream(stream: str, claimer: Claimer | None) -> None:
    dlq = claimer.dead_letter_stream(stream) if claimer is not None else None
    if dlq is None:
        return
    if dlq == stream:
        raise ConfigurationError(
            f"the dead-letter stream cannot be the queue's own stream {stream!r}: dead "
            "messages would be delivered again, forever"
        )
    if key_slot(dlq) != key_slot(stream):
        logger.warning(
            "dead-letter stream %s is not in the cluster slot of %s: fine on one Redis, "
            "but on Redis Cluster the atomic move fails; name it like %s",
            dlq,
            stream,
            dead_letter_stream(stream),
        )


class Queue(Generic[J]):
    """Consumes ``stream`` as consumer ``consumer`` of ``group`` and runs ``worker`` per job.

    ``run()`` starts a reader thread (blocking XREADGROUP), a pool of
    ``concurrency`` worker threads, an acker thread and, with a ``claimer``, a
    claimer and a lease thread, and returns a :class:`QueueHandle` at once.
    ``drain()`` instead processes the backlog in the calling thread's time and
    returns (cron mode).

    Delivery is at least once. A worker that returns has succeeded: its
    message is acked (acks are batched). A worker that raises has failed: the
    error is logged with its traceback and counted, and the message stays
    pending, to be retried by the claimer after ``claimer.min_idle_time`` and
    dead-lettered after ``claimer.max_retries`` retries. Without a claimer,
    failed messages are never retried. A message that cannot be decoded into
    ``job`` never reaches the worker: it goes to the dead-letter path.

    :param client: a ``redis.Redis`` (or Sentinel-made, or ``RedisCluster``)
        client; one is enough: flowd's threads open connections of their own,
        made with the client's settings but without its retry policy (they own
        their retries). Any ``socket_timeout`` works: reads block for at most
        half of it.
    :param stream: the stream key; created with the group if missing.
    :param group: the consumer group; created at id 0, so jobs enqueued before
        the first worker started are processed.
    :param job: the Job dataclass of the stream's messages.
    :param worker: called with a ``Task[job]`` on a worker thread.
    :param concurrency: most jobs running at once, for reader and claimer together.
    :param claimer: a :class:`Claimer` to retry failed and stuck messages.
    :param consumer: this consumer's name; defaults to a unique ``host-pid-random``.
    :param read_client: an optional separate client for the blocking reads.
    :param housekeeping: on by default: trims entries every group has consumed
        and removes long-idle consumers without pending entries, once per
        interval for the whole stream (see :class:`Housekeeping`); ``False``
        turns it off.
    :param hooks: :class:`Hooks` to observe jobs (metrics, tracing); only the
        methods they override are called.
    :param partitions: read one logical queue spread over this many streams
        (see :class:`Producer`'s ``partitions``); each has its reader, claimer
        and dead-letter stream, and all share ``concurrency``. 1 (the default)
        is the plain ``stream``.
    :param block: seconds one XREADGROUP blocks while the stream is empty.
    :param schedules: periodic jobs (:class:`Schedule`) this queue enqueues. Every
        running queue (and ``drain()``) also moves the stream's due scheduled
        jobs into it, on a ``flowd-scheduler-<stream>`` thread.
    :param stop_timeout: seconds a running queue is given to stop when the
        interpreter exits without ``handle.stop()`` having been called (the end
        of a script, a gunicorn or uWSGI worker exiting, Django's autoreloader).
        Past it, jobs still running are named in a WARNING, their messages stay
        pending for the claimer, and the process exits anyway.
    """

    def __init__(
        self,
        client: Any,
        *,
        stream: str,
        group: str,
        job: type[J],
        worker: WorkerFn[J],
        concurrency: int = 8,
        claimer: Claimer | None = None,
        housekeeping: Housekeeping | bool = True,
        hooks: Sequence[Hooks] = (),
        partitions: int = 1,
        consumer: str | None = None,
        read_client: Any = None,
        block: Seconds = 2.0,
        schedules: Sequence[Schedule] = (),
        stop_timeout: Seconds = 30.0,
    ) -> None:
        self.client = check_client(client, "client")
        self.read_client = None if read_client is None else check_client(read_client, "read_client")
        self.stream = _check_name(stream, "stream")
        #: The streams this queue reads: [stream], or one per partition.
        self.streams = partition_streams(stream, partitions)
        self.group = _check_name(group, "group")
        self.consumer = (
            default_consumer_name() if consumer is None else _check_name(consumer, "consumer")
        )
        if not isinstance(job, type) or not issubclass(job, Job):
            raise ConfigurationError(f"job must be a flowd.Job dataclass, not {job!r}")
        plan_of(job)  # an unsupported annotation fails here, not on the first message
        self.job = job
        if not callable(worker):
            raise ConfigurationError(f"worker must be callable, not {worker!r}")
        self.worker = worker
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, not {concurrency!r}")
        self.concurrency = concurrency
        if claimer is not None and not isinstance(claimer, Claimer):
            raise ConfigurationError(f"claimer must be a flowd.Claimer, not {claimer!r}")
        for partition in self.streams:
            _check_dead_letter_stream(partition, claimer)
        self.claimer = claimer
        if housekeeping is True:
            housekeeping = Housekeeping()
        elif housekeeping is not False and not isinstance(housekeeping, Housekeeping):
            raise ConfigurationError(
                f"housekeeping must be a flowd.Housekeeping, True or False, not {housekeeping!r}"
            )
        self.housekeeping: Housekeeping | None = housekeeping or None
        if isinstance(hooks, Hooks) or not all(isinstance(h, Hooks) for h in hooks):
            raise ConfigurationError(f"hooks must be a list of flowd.Hooks, not {hooks!r}")
        self.hooks: tuple[Hooks, ...] = tuple(hooks)
        self.block = to_seconds(block, "block")
        self.schedules = check_schedules(schedules)
        self.stop_timeout = to_seconds(stop_timeout, "stop_timeout")
        self._handle: QueueHandle | None = None
        self._lock = threading.Lock()
        #: Streams whose group this queue has seen exist: one missing later means lost data.
        self._groups_seen: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"Queue(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r}, job={self.job.__name__})"
        )

    def forget_after_fork(self) -> None:
        """In a forked child: the lock may have been held by a parent thread at fork."""
        self._lock = threading.Lock()

    def _preflight(self, *, must_connect: bool) -> None:
        """Check the server version and create the group, if Redis can be reached now."""
        try:
            for stream in self.streams:
                session = Session(self.client, stream)
                try:
                    ensure_group(session, stream, self.group)
                    self._groups_seen.add(stream)
                    if stream == self.streams[0]:
                        self._check_eviction_policy(session)
                finally:
                    session.close()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            if must_connect:
                raise
            logger.warning(
                "Redis is not reachable yet (%s); queue %s/%s keeps trying",
                exc,
                self.stream,
                self.group,
            )
        except redis.exceptions.ResponseError as exc:
            if must_connect or not is_transient(exc):
                raise
            logger.warning(
                "Redis is not ready yet (%s); queue %s/%s keeps trying",
                exc,
                self.stream,
                self.group,
            )

    def _check_eviction_policy(self, session: Session) -> None:
        policy = eviction_policy(session)
        if policy is not None and policy not in SAFE_EVICTION_POLICIES:
            logger.error(
                "Redis runs with maxmemory-policy %s: under memory pressure it can evict "
                "the stream %s and its pending entries, and jobs are then lost without a "
                "trace; use maxmemory-policy noeviction for job queues",
                policy,
                self.stream,
            )

    def _claim_check(self) -> None:
        if self.claimer is None:
            logger.warning(
                "queue %s/%s has no claimer: failed jobs are never retried and "
                "messages of crashed consumers are never recovered",
                self.stream,
                self.group,
            )

    def run(self) -> QueueHandle:
        """Start consuming in background threads; returns the handle at once.

        Redis being down is not an error here: the threads keep retrying.

        :raises RedisVersionError: the server is older than 6.2.
        :raises HandleStateError: this queue is already running.
        """
        with self._lock:
            if self._handle is not None and self._handle.is_running:
                raise HandleStateError(f"{self!r} is already running; stop its handle first")
            self._preflight(must_connect=False)
            self._claim_check()
            handle = self._start(WorkerPool(self))
            self._handle = handle
        logger.info(
            "queue %s/%s started: consumer %s, concurrency %d, claimer %s",
            self.stream,
            self.group,
            self.consumer,
            self.concurrency,
            self.claimer,
        )
        return handle

    def _loop_thread(
        self,
        runtime: Runtime,
        role: str,
        step: Callable[[], bool | None],
        session: Session,
        stop: threading.Event,
    ) -> LoopThread:
        def recreate_group() -> None:
            created = ensure_group(session, runtime.stream, self.group)
            if created and runtime.stream in self._groups_seen:
                runtime.group_lost()
            self._groups_seen.add(runtime.stream)

        def fatal(exc: BaseException) -> None:
            runtime.stop_event.set()

        return LoopThread(
            f"flowd-{role}-{runtime.stream}",
            f"{role} of {runtime.stream}/{self.group}",
            step,
            stop,
            on_nogroup=recreate_group,
            on_fatal=fatal,
            on_exit=session.close,
        )

    def _start(self, pool: WorkerPool) -> QueueHandle:
        parts = [self._stream_threads(Runtime(pool, stream)) for stream in self.streams]
        for part in parts:
            part.runtime.acker.start()
        for part in parts:
            for thread in (part.reader, *part.background, part.lease):
                if thread is not None:
                    thread.start()
        return QueueHandle(pool, parts)

    def _stream_threads(self, runtime: Runtime) -> StreamThreads:
        """The reader, claimer, lease and housekeeping threads of one stream (not started)."""
        stream = runtime.stream
        reader_session = Session(self.read_client or self.client, stream)
        reader = self._loop_thread(
            runtime,
            "reader",
            Reader(runtime, reader_session, self.block).step,
            reader_session,
            runtime.stop_event,
        )
        background: list[LoopThread] = []
        lease = None
        if self.claimer is not None:
            claim_session = Session(self.client, stream)
            background.append(
                self._loop_thread(
                    runtime,
                    "claimer",
                    ClaimLoop(runtime, claim_session, self.claimer).step,
                    claim_session,
                    runtime.stop_event,
                )
            )
            lease_session = Session(self.client, stream)
            lease = self._loop_thread(
                runtime,
                "lease",
                LeaseLoop(runtime, lease_session, self.claimer).step,
                lease_session,
                runtime.lease_stop,
            )
        background.append(
            scheduler_thread(self.client, stream, runtime.stop_event, self.schedules, self.streams)
        )
        if self.housekeeping is not None:
            background.append(
                LoopThread(
                    f"flowd-housekeeping-{stream}",
                    f"housekeeping of {stream}/{self.group}",
                    HousekeepingLoop(runtime, self.housekeeping).step,
                    runtime.stop_event,
                )
            )
        return StreamThreads(runtime, reader, reader_session, background, lease)

    def drain(self, timeout: Seconds | None = None, *, stop: threading.Event | None = None) -> int:
        """Process the backlog, then return how many jobs succeeded (cron mode).

        First moves the stream's due scheduled jobs into it (and enqueues due
        schedule ticks); jobs scheduled for later stay scheduled. Then runs this
        consumer's own pending messages (left by an earlier run
        under the same ``consumer`` name), then new messages until the stream
        has none, then, with a claimer, one sweep of messages idle longer than
        ``min_idle_time``. Jobs run on ``concurrency`` worker threads, as in
        ``run()``. Failed jobs stay pending and are not retried within the call.

        :param timeout: seconds for the whole call; once past, no more messages
            are read, running jobs get no extra time, and the count so far is
            returned (their messages stay pending).
        :param stop: an event that ends the drain early (e.g. set by a signal
            handler): no more messages are read, and running jobs finish.
        :raises redis.exceptions.ConnectionError: Redis is unreachable.
        """
        with self._lock:
            if self._handle is not None and self._handle.is_running:
                raise HandleStateError(f"{self!r} is running; stop its handle before drain()")
            limit = None if timeout is None else to_seconds(timeout, "timeout", allow_zero=True)
            self._preflight(must_connect=True)
            self._claim_check()
            return self._drain(limit, stop or threading.Event())

    def _drain(self, limit: float | None, stop: threading.Event) -> int:
        deadline = None if limit is None else time.monotonic() + limit
        pool = WorkerPool(self)
        runtimes = [Runtime(pool, stream) for stream in self.streams]
        sessions = [Session(self.client, stream) for stream in self.streams]
        leases = []
        for runtime in runtimes:
            runtime.acker.start()
            if self.claimer is not None:
                lease_session = Session(self.client, runtime.stream)
                lease = self._loop_thread(
                    runtime,
                    "lease",
                    LeaseLoop(runtime, lease_session, self.claimer).step,
                    lease_session,
                    runtime.lease_stop,
                )
                lease.start()
                leases.append(lease)
        finished = False
        try:
            drain_limit = _DrainLimit(deadline, stop)
            for runtime, session in zip(runtimes, sessions, strict=True):
                move_due_before_drain(session, runtime.stream, self.schedules, self.streams)
                self._drain_reads(runtime, session, drain_limit)
            finished = pool.permits.wait_all_free(remaining(deadline))
        finally:
            pool.deadline = deadline
            pool.stop_event.set()
            ack_deadline = deadline if deadline is not None else time.monotonic() + 30
            pool.finish(leases, deadline, finished=finished, ack_deadline=ack_deadline)
            for session in sessions:
                session.close()
        if not finished:
            logger.warning(
                "drain of %s/%s timed out; still running: %s",
                self.stream,
                self.group,
                pool.running_report() or "none",
            )
        stats = pool.stats()
        logger.info(
            "drain of %s/%s done: processed=%d failed=%d dead_lettered=%d",
            self.stream,
            self.group,
            stats.processed,
            stats.failed,
            stats.dead_lettered,
        )
        return stats.processed

    def _drain_reads(self, runtime: Runtime, session: Session, limit: _DrainLimit) -> None:
        after = "0"
        while free := limit.free_permits(runtime.permits):
            entries, counts = read_own_pending(runtime, session, free, after)
            if not entries:
                break
            after = entries[-1][0]
            start_entries(runtime, entries, counts)
        while free := limit.free_permits(runtime.permits):
            entries = parse_xreadgroup(
                session.call(
                    "XREADGROUP",
                    "GROUP",
                    self.group,
                    self.consumer,
                    "COUNT",
                    free,
                    "STREAMS",
                    runtime.stream,
                    ">",
                )
            )
            if not entries:
                break
            start_entries(runtime, entries, None)
        if self.claimer is not None:
            sweep = ClaimLoop(runtime, session, self.claimer)
            while limit.free_permits(runtime.permits):
                if sweep.claim_batch() == "done":
                    break
