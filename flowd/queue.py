"""Queue: consume a stream with a consumer group, in threads or as a cron-style drain."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis.exceptions

from ._codec.plan import plan_of
from ._consumer.engine import Engine, RunSettings, default_consumer_name
from ._consumer.scheduler import UniqueRelease
from ._consumer.streams import report_group_not_created
from ._consumer.timelimit import check_supported
from ._redis.keys import (
    dead_letter_stream,
    key_prefix,
    key_slot,
    legacy_key_prefix,
    partition_streams,
)
from ._redis.migrate import legacy_keys_left
from ._redis.session import (
    SAFE_EVICTION_POLICIES,
    Session,
    check_client,
    ensure_group,
    eviction_policy,
    is_oom,
    is_transient,
)
from ._redis.timeutil import Seconds, to_ms, to_seconds
from .claimer import Claimer
from .errors import ConfigurationError, HandleStateError
from .flow.adaptive import check_concurrency
from .flow.expiry import check_dead_letter_expired
from .flow.keylimit import check_concurrency_key
from .flow.pause import is_paused
from .flow.ratelimit import RateLimit, check_rate_limit
from .handle import QueueHandle
from .hooks import Hooks, call_hooks
from .housekeeping import Housekeeping
from .job import Job
from .schedule import Schedule, check_schedules
from .task import Task

__all__ = ["Queue", "WorkerFn"]

logger = logging.getLogger(__name__)

J = TypeVar("J", bound=Job)

#: A worker: returning means success (the message is acked; with ``result_ttl`` what it
#: returns is kept as the job's result); raising means failure.
WorkerFn = Callable[[Task[J]], object]

#: Stands for "a Claimer() of the queue's own" in Queue's signature.
_DEFAULT_CLAIMER = Claimer()


def _check_name(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty str, not {value!r}")
    return value


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
    ``concurrency`` worker threads, an acker thread, a claimer and a lease
    thread (unless ``claimer=None``) and a housekeeping thread, and returns a
    :class:`QueueHandle` at once.
    ``drain()`` instead processes the backlog in the calling thread's time and
    returns (cron mode).

    Delivery is at least once. A worker that returns has succeeded: its
    message is acked (acks are batched). A worker that raises has failed: the
    error is logged with its traceback and counted, and the message stays
    pending, to be retried by the claimer after ``claimer.min_idle_time`` and
    dead-lettered after ``claimer.max_retries`` retries. With ``claimer=None``,
    failed messages are never retried. A message that cannot be decoded into
    ``job`` never reaches the worker: it goes to the dead-letter path.

    :param client: a ``redis.Redis`` (or Sentinel-made, or ``RedisCluster``)
        client; one is enough: flowd's threads open connections of their own,
        made with the client's settings but without its retry policy (they own
        their retries). Whatever its ``socket_timeout`` (even None), flowd's
        connections never wait on a socket for long: a read gives up 5 s after
        its block time, other commands after 10 s, a connect after 5 s, or
        sooner when the client's own timeouts are shorter (reads then block
        for half of it).
    :param stream: the stream key; created with the group if missing.
    :param group: the consumer group; created at id 0, so jobs enqueued before
        the first worker started are processed.
    :param job: the Job dataclass of the stream's messages.
    :param worker: called with a ``Task[job]`` on a worker thread.
    :param concurrency: most jobs running at once, for reader and claimer together
        (1 to 4096).
    :param adaptive_concurrency: on by default: while the queue is busy, the pool
        tries fewer and more of its ``concurrency`` threads and keeps the count that
        finishes the most jobs per second (GIL-bound jobs settle low, jobs that wait
        on I/O stay at ``concurrency``); ``QueueStats.active_limit`` shows it.
        ``False`` keeps all ``concurrency`` threads.
    :param claimer: the :class:`Claimer` that retries failed and stuck messages;
        ``Claimer()`` (30 s, 3 retries, dead-letter stream on) unless given.
        ``None`` turns it off, with a WARNING: failures are then never retried.
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
    :param time_limit: seconds (or a timedelta) a job may run; past it,
        :class:`flowd.TimeLimitExceeded` is raised in the job's thread, and
        the run counts as failed. A job blocked in C code is interrupted only
        when it returns to Python (a WARNING names it meanwhile). None (the
        default): no limit. CPython only.
    :param result_ttl: seconds (or a timedelta) each job's result is kept:
        what the worker returned (as JSON, with the job codecs' rules), or how
        it failed once it is dead-lettered, readable with :class:`flowd.Results`.
        A success's result is written in the same atomic step as its XACK; a
        returned value with no JSON form fails the run (``EncodeError``). None
        (the default) keeps no results; ``Results.get`` still says where a job is.
    :param dead_letter_expired: a job past its ``expires`` deadline before it started
        is dead-lettered with the reason ``"expired"`` (the default); False acks it
        unrun. Either way it is counted in ``QueueStats.expired``.
    :param rate_limit: a :class:`flowd.RateLimit`: at most that many job starts
        (retries too) per window across every consumer of the group, in every
        process and partition; jobs over it wait in the stream. None: no limit.
    :param concurrency_key: a function of the job giving its key (str, int or
        bytes): at most ``max_per_key`` jobs with one key run at once, across every
        consumer of the group, through leases in Redis that expire with the job's
        own (``min_idle_time``). A job whose key is busy waits, holding no worker
        and no delivery; a function that raises, or returns no key, dead-letters
        the job with the reason.
    :param max_per_key: most jobs of one key running at once (default 1); only
        with ``concurrency_key``. With ``partitions``, per partition: give the
        Producer the same function as its ``key`` to make it hold for the queue.
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
        claimer: Claimer | None = _DEFAULT_CLAIMER,
        housekeeping: Housekeeping | bool = True,
        hooks: Sequence[Hooks] = (),
        partitions: int = 1,
        consumer: str | None = None,
        read_client: Any = None,
        block: Seconds = 2.0,
        schedules: Sequence[Schedule] = (),
        stop_timeout: Seconds = 30.0,
        time_limit: Seconds | None = None,
        result_ttl: Seconds | None = None,
        dead_letter_expired: bool = True,
        rate_limit: RateLimit | None = None,
        concurrency_key: Callable[[J], object] | None = None,
        max_per_key: int | None = None,
        adaptive_concurrency: bool = True,
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
        self.concurrency, self.adaptive_concurrency = check_concurrency(
            concurrency, adaptive_concurrency
        )
        if claimer is _DEFAULT_CLAIMER:
            claimer = Claimer()  # each queue its own, so changing one changes no other
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
        #: Seconds a job's result is kept (None: not kept).
        self.result_ttl = None if result_ttl is None else to_seconds(result_ttl, "result_ttl")
        self.time_limit = None if time_limit is None else to_seconds(time_limit, "time_limit")
        if self.time_limit is not None:
            check_supported()
        self.dead_letter_expired = check_dead_letter_expired(dead_letter_expired)
        self.rate_limit = check_rate_limit(rate_limit)
        self.concurrency_key, self.max_per_key = check_concurrency_key(concurrency_key, max_per_key)
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
                    self._check_key_layout(stream)
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
            if is_oom(exc):
                report_group_not_created(stream, self.group, exc)
                return
            logger.warning(
                "Redis is not ready yet (%s); queue %s/%s keeps trying",
                exc,
                self.stream,
                self.group,
            )

    def _check_key_layout(self, stream: str) -> None:
        if legacy_key_prefix(stream) == key_prefix(stream):
            return  # the common case: nothing could be in an old layout, no round trip
        if legacy_keys_left(self.client, stream, self.group):
            logger.warning(
                "Redis holds keys of %s in the layout before 0.2 (%s:*, shared by every "
                "stream with that hash tag): delayed jobs, unique keys, dead letters or "
                "failure reasons there are not seen by this queue; run `flowd migrate %s`",
                stream,
                legacy_key_prefix(stream),
                stream,
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

    def _settings(self) -> RunSettings:
        return RunSettings(
            name=self.stream,
            client=self.client,
            read_client=self.read_client,
            streams=tuple(self.streams),
            group=self.group,
            consumer=self.consumer,
            job=self.job,
            worker=self.worker,
            concurrency=self.concurrency,
            claimer=self.claimer,
            housekeeping=self.housekeeping,
            # Frees a dead-lettered job's unique_key (the dispatcher frees it on success).
            hooks=(UniqueRelease(self.client), *self.hooks),
            block=self.block,
            stop_timeout=self.stop_timeout,
            time_limit=self.time_limit,
            groups_seen=self._groups_seen,
            after_fork=self.forget_after_fork,
            schedules=self.schedules,
            result_ttl_ms=None if self.result_ttl is None else to_ms(self.result_ttl),
            dead_letter_expired=self.dead_letter_expired,
            rate_limit=self.rate_limit,
            concurrency_key=self.concurrency_key,
            max_per_key=self.max_per_key,
            adaptive_concurrency=self.adaptive_concurrency,
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
            call_hooks([hook.on_start for hook in self.hooks], self)
            engine = Engine(self._settings())
            engine.start()
            handle = QueueHandle(engine)
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

    def drain(self, timeout: Seconds | None = None, *, stop: threading.Event | None = None) -> int:
        """Process the backlog, then return how many jobs succeeded (cron mode).

        First moves the stream's due scheduled jobs into it (and enqueues due
        schedule ticks); jobs scheduled for later stay scheduled. Then runs this
        consumer's own pending messages (left by an earlier run
        under the same ``consumer`` name), then new messages until the stream
        has none, then, with a claimer, one sweep of messages idle longer than
        ``min_idle_time``. Jobs run on ``concurrency`` worker threads, as in
        ``run()``. Failed jobs stay pending and are not retried within the call.
        A paused queue (:func:`flowd.pause`) is not drained: the call returns 0
        at once, with a WARNING; a pause that begins during the drain ends its
        reading, and running jobs finish.

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
            if is_paused(self.client, self.stream, self.group):
                logger.warning(
                    "drain of %s/%s: the queue is paused, so nothing was read (flowd resume %s)",
                    self.stream,
                    self.group,
                    self.stream,
                )
                return 0
            self._claim_check()
            call_hooks([hook.on_start for hook in self.hooks], self)
            return self._drain(limit, stop or threading.Event())

    def _drain(self, limit: float | None, stop: threading.Event) -> int:
        deadline = None if limit is None else time.monotonic() + limit
        engine = Engine(self._settings())
        if not engine.drain(deadline, stop):
            logger.warning(
                "drain of %s/%s timed out; still running: %s",
                self.stream,
                self.group,
                engine.pool.running_report() or "none",
            )
        stats = engine.stats()
        logger.info(
            "drain of %s/%s done: processed=%d failed=%d dead_lettered=%d",
            self.stream,
            self.group,
            stats.processed,
            stats.failed,
            stats.dead_lettered,
        )
        return stats.processed
