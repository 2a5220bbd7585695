"""The parts of one stream of a run: acker, dispatcher, context, and its loop threads.

:func:`add_loops` is the one place that lists a stream's loops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from .._redis.keys import derived_key
from .._redis.records import alias_ttl_ms
from .._redis.session import COMMAND_TIMEOUT, READ_MARGIN, Session, ensure_group, is_oom
from .._redis.timeutil import to_ms
from ..claimer import Claimer
from ..flow.adaptive import LimitReporter
from ..flow.keygate import KeyGate, KeyRetryLoop
from ..flow.keylimit import KeyFn, KeyLeases
from ..flow.pause import PauseWatch
from ..flow.priorities import BASE, BandReads, BandWatch, band_streams
from ..flow.ratelimit import RateGate, RateLimit
from ..hooks import Hooks
from ..housekeeping import Housekeeping
from ..schedule import Schedule
from ..task import Task
from .acker import Acker
from .claim import ClaimLoop, LeaseLoop
from .context import StopSignal, StreamContext
from .dead_letter_move import DeadLetterMover
from .dispatch import Dispatcher
from .group_loss import LossWatch
from .housekeeper import HousekeepingLoop
from .pool import WorkerPool
from .readahead import Link
from .reader import Bands, Reader
from .retry import RetryControl
from .runs import RunRecords
from .scheduler import SchedulerLoop, UniqueRelease, schedules_of
from .threads import LoopThread

logger = logging.getLogger(__name__)

#: Loops that start jobs: they take the rate limit's tokens before reading or claiming.
STARTERS = ("reader", "claimer")
#: Loops that end with the run's stop signal, after the reader (the lease ends after the jobs).
BACKGROUND = ("claimer", "housekeeping", "scheduler", "keys")

#: How long a per-key concurrency lease lasts (and is extended) on a queue without a
#: claimer, which has no message lease to follow.
KEY_LEASE_WITHOUT_CLAIMER = 30.0


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a run needs from its Queue (checked by the Queue already)."""

    name: str  # the queue's stream: names the run in logs and thread names
    client: Any
    read_client: Any
    streams: Sequence[str]
    group: str
    consumer: str
    job: type[Any]
    worker: Callable[[Task[Any]], object]
    concurrency: int
    claimer: Claimer | None
    housekeeping: Housekeeping | None
    hooks: Sequence[Hooks]
    block: float
    #: Seconds the run is given to stop at interpreter exit (flowd._lifecycle).
    stop_timeout: float
    #: Seconds a job may run (None: no limit).
    time_limit: float | None
    #: Streams whose group the queue has seen exist (shared with the Queue, across its
    #: runs): a group missing later means data was lost.
    groups_seen: set[str]
    #: Called in a forked child that inherited the run (the Queue resets its lock).
    after_fork: Callable[[], None]
    #: Periodic schedules; each stream's scheduler loop fires those of its partition.
    schedules: Sequence[Schedule] = ()
    #: Milliseconds a job's result is kept (None: results are not kept).
    result_ttl_ms: int | None = None
    #: An expired job goes down the dead-letter path (False: it is acked).
    dead_letter_expired: bool = True
    #: Job starts allowed across the group (None: no limit); its bucket is the queue's
    #: (``name``'s), shared by every partition.
    rate_limit: RateLimit | None = None
    #: Vary the active limit (flowd.flow.adaptive), publishing it in Redis.
    adaptive_concurrency: bool = False

    def limit_reporter(self) -> LimitReporter | None:
        """What publishes the active limit (None: a fixed concurrency)."""
        if not self.adaptive_concurrency:
            return None
        return LimitReporter(self.client, self.name, self.group, self.consumer)

    def rate_gate(self, stream: str, session: Session) -> RateGate | None:
        """The rate gate of a loop of ``stream`` that talks through ``session``."""
        if self.rate_limit is None:
            return None
        return RateGate.for_loop(
            self.rate_limit, self.client, self.name, self.group, stream, session
        )

    #: Per-key concurrency: the job -> key function, and the most running per key.
    concurrency_key: KeyFn | None = None
    max_per_key: int | None = None

    @property
    def key_lease(self) -> float:
        """Seconds a per-key lease lasts unless extended: the job's own lease."""
        claimer = self.claimer
        return KEY_LEASE_WITHOUT_CLAIMER if claimer is None else claimer.min_idle_time

    @property
    def lease_interval(self) -> float | None:
        """How often the lease loop extends leases; None when nothing needs it (no
        claimer to take messages, no key leases). Without a claimer only the key leases
        need it, a third of their time."""
        if self.claimer is not None:
            return self.claimer.lease_interval
        return None if self.concurrency_key is None else self.key_lease / 3


@dataclass(slots=True)
class StreamParts:
    """One stream of a run: its acker, dispatcher, base context and loop threads."""

    ctx: StreamContext
    acker: Acker
    dispatcher: Dispatcher
    #: role ("reader", "claimer", "lease", "housekeeping") -> its thread, in start order.
    loops: dict[str, LoopThread] = field(default_factory=dict)
    #: The reader's session: stop() interrupts its blocked read with CLIENT UNBLOCK.
    reader_session: Session | None = None
    #: Reports the group's loss once, whichever loop notices it.
    loss: LossWatch = field(init=False)
    #: A queue stream's parts: its priority bands' parts, from the highest (its own at
    #: BASE); a band's parts: None (the queue stream's reader reads the band).
    bands: list[StreamParts] | None = None

    def __post_init__(self) -> None:
        self.loss = LossWatch(self.dispatcher.group_lost)

    def threads(self) -> list[threading.Thread]:
        return [self.acker.thread, *self.loops.values()]


def run_parts(settings: RunSettings, pool: WorkerPool, stop: StopSignal) -> list[StreamParts]:
    """The parts of every stream of a run: per queue stream, its high band, itself, its
    low band (flowd.flow.priorities), in that order (a drain takes them in turn)."""
    parts: list[StreamParts] = []
    for stream in settings.streams:
        bands = [stream_parts(settings, pool, stop, band) for band in band_streams(stream)]
        bands[BASE].bands = bands
        parts += bands
    return parts


def ready_to_drain(session: Session, part: StreamParts, group: str) -> bool:
    """Whether a drain reads ``part``: a band stream only if it exists (it then gets the
    group); nothing is created for a queue that never used priorities."""
    if part.bands is not None:
        return True
    if not session.call("EXISTS", part.ctx.stream):
        return False
    ensure_group(session, part.ctx.stream, group)
    return True


def stream_parts(
    settings: RunSettings, pool: WorkerPool, stop: StopSignal, stream: str
) -> StreamParts:
    """Build one stream's acker, dead-letter mover, dispatcher and base context."""
    s = settings
    errors_key = derived_key(stream, f"errors:{s.group}")
    acker = Acker(s.client, stream, s.group, errors_key, s.result_ttl_ms)
    mover = (
        None
        if s.claimer is None
        else DeadLetterMover(
            s.client, stream, s.group, s.consumer, errors_key, s.claimer, s.result_ttl_ms
        )
    )
    max_retries = None if s.claimer is None else s.claimer.max_retries
    retry = RetryControl(
        s.client, stream, s.group, s.consumer, s.claimer, mover, pool.release_lease, s.result_ttl_ms
    )
    unique = UniqueRelease(s.client)
    runs = RunRecords(s.client, stream, s.group)
    keys = None
    if s.concurrency_key is not None and s.max_per_key is not None:
        leases = KeyLeases(stream, s.group, s.max_per_key, to_ms(s.key_lease))
        keys = KeyGate(
            leases,
            s.client,
            stream,
            acker.release,
            acker.notify,
            flushes=lambda: acker.flushes,
        )
        acker.on_flushed, acker.leases = keys.flushed, leases
    dispatcher = Dispatcher(
        pool,
        stream,
        s.group,
        s.job,
        acker,
        mover,
        max_retries,
        retry,
        unique,
        runs,
        s.consumer,
        dead_letter_expired=s.dead_letter_expired,
        keys=keys,
        concurrency_key=s.concurrency_key,
    )
    pool.routes[stream] = dispatcher
    ctx = StreamContext(
        stream=stream,
        group=s.group,
        consumer=s.consumer,
        session=None,
        permits=pool.permits,
        stop=stop,
        dispatch=dispatcher,
        held=dispatcher.held,
        running_since=dispatcher.running_since,
    )
    return StreamParts(ctx, acker, dispatcher)


#: A group that cannot be created is said at ERROR at most this often (seconds).
GROUP_REPORT_EVERY = 60.0
_group_reports: dict[tuple[str, str], float] = {}
_group_reports_lock = threading.Lock()


def report_group_not_created(stream: str, group: str, exc: BaseException) -> None:
    """Say at ERROR, once a minute per stream and group, that Redis out of memory keeps
    the group from being created: nothing is consumed until someone frees memory."""
    now = time.monotonic()
    with _group_reports_lock:
        last = _group_reports.get((stream, group))
        if last is not None and now - last < GROUP_REPORT_EVERY:
            return
        _group_reports[(stream, group)] = now
    logger.error(
        "consumer group %s of %s cannot be created: Redis is out of memory (OOM: used "
        "memory is over maxmemory and the policy evicts nothing); no job of %s runs until "
        "memory is freed or maxmemory raised (%s)",
        group,
        stream,
        stream,
        exc,
    )


def _closing(session: Session, gate: RateGate) -> Callable[[], None]:
    """What a loop with a rate gate closes on exit: its session and the gate's own."""

    def close() -> None:
        session.close()
        gate.close()

    return close


def _group_recreator(session: Session, part: StreamParts, s: RunSettings) -> Callable[[], None]:
    """What a loop calls after its own NOGROUP: create the group again, and say it was lost."""
    stream = part.ctx.stream

    def recreate_group() -> None:
        try:
            created = ensure_group(session, stream, s.group)
        except redis.exceptions.ResponseError as exc:
            if is_oom(exc):
                report_group_not_created(stream, s.group, exc)
            raise
        # Called after this loop's own NOGROUP: the group was lost, also when another
        # process recreated it first (BUSYGROUP), so each process that saw it says so.
        if stream in s.groups_seen:
            part.loss.lost(created=created)
        s.groups_seen.add(stream)

    return recreate_group


def _link(dispatcher: Dispatcher, claimed: bool) -> Link:
    """What the reader needs to read ahead (and to gate by key)."""
    pool, keys = dispatcher.pool, dispatcher.keys
    return Link(
        pool.readahead,
        dispatcher.prepare,
        pool.submit,
        claimed,
        None if keys is None else dispatcher.gate_begin,
        None if keys is None else dispatcher.gate_end,
        None if keys is None else dispatcher.let_go_items,
    )


def add_loops(
    part: StreamParts,
    settings: RunSettings,
    lease_stop: threading.Event,
    on_fatal: Callable[[BaseException], None],
    *,
    lease_only: bool = False,
    pause: PauseWatch | None = None,
) -> None:
    """Add the loops of one stream (not started); a drain runs only the lease as a thread.

    ``pause`` is the run's watch of its pause state: the reader and the claimer
    ask it before they read or claim.

    Each loop gets the stream's context with a session of its own. A new loop
    is one ``loop(role, make_step)`` line below; if it ends with the stop
    signal (not after the jobs, as the lease does), its role goes in
    :data:`BACKGROUND` too, so that stop() joins it.
    """
    s = settings

    def loop(
        role: str,
        make_step: Callable[[StreamContext], Callable[[], bool | None]],
        client: Any = None,
        stop: threading.Event | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        stream = part.ctx.stream
        session = Session(client or s.client, stream, timeout=timeout)
        gate = s.rate_gate(stream, session) if role in STARTERS else None
        ctx = part.ctx.for_loop(session, stop, gate)
        if role == "reader":
            part.reader_session = session

        part.loops[role] = LoopThread(
            f"flowd-{role}-{stream}",
            f"{role} of {stream}/{s.group}",
            make_step(ctx),
            ctx.stop,
            on_nogroup=_group_recreator(session, part, s),
            on_fatal=on_fatal,
            on_exit=session.close if gate is None else _closing(session, gate),
        )

    claimer, housekeeping = s.claimer, s.housekeeping
    dispatcher = part.dispatcher
    timer = dispatcher.retry.timer
    pool = dispatcher.pool
    keys = dispatcher.keys
    banded = part.bands  # None: a band, read by its queue stream's reader
    if not lease_only and banded is not None:
        ahead = _link(dispatcher, claimer is not None)
        links = [_link(band.dispatcher, claimer is not None) for band in banded]
        links[BASE] = ahead

        def reader(ctx: StreamContext) -> Callable[[], bool]:
            watch = BandWatch(ctx.redis, ctx.stream)
            bands = Bands(
                watch,
                BandReads(ctx.stream, s.group, s.consumer),
                [band.ctx.for_loop(ctx.session, ctx.stop, ctx.rate) for band in banded],
                list(links),
            )
            return Reader(ctx, s.block, ahead, part.loss, pause, bands).step

        loop("reader", reader, s.read_client, timeout=s.block + READ_MARGIN)
    if claimer is not None and not lease_only:
        loop(
            "claimer",
            lambda ctx: _once_it_exists(
                ctx,
                banded is None,
                ClaimLoop(
                    ctx, claimer.min_idle_time, claimer.interval, claimer.batch, timer, pause
                ).step,
                claimer.interval,
            ),
        )
    interval = s.lease_interval
    if interval is not None:
        lock = pool.lease_lock
        loop("lease", lambda ctx: LeaseLoop(ctx, interval, lock, keys).step, stop=lease_stop)
    if keys is not None:  # a drain too: its waiting jobs start when their key is free
        loop("keys", lambda ctx: KeyRetryLoop(keys, ctx.stop, pool.permits.admit, pool.submit).step)
    if housekeeping is not None and not lease_only:
        loop(
            "housekeeping",
            lambda ctx: _once_it_exists(
                ctx, banded is None, HousekeepingLoop(ctx, housekeeping).step, CHECK_EXISTS
            ),
        )
    if not lease_only:
        mine = schedules_of(part.ctx.stream, s.schedules, s.streams)
        alias_ttl = alias_ttl_ms(s.result_ttl_ms)
        loop("scheduler", lambda ctx: SchedulerLoop(ctx, mine, alias_ttl_ms=alias_ttl).step)


#: Seconds between looks whether a band stream exists, for its housekeeping.
CHECK_EXISTS = 5.0


def _once_it_exists(
    ctx: StreamContext, band: bool, step: Callable[[], bool], wait: float
) -> Callable[[], bool]:
    """``step`` itself for a queue stream; for a band stream, ``step`` once the stream
    exists (before that, one EXISTS every ``wait`` seconds), so that a queue whose
    producers never use priorities gets no band keys."""
    if not band:
        return step
    seen = False

    def guarded() -> bool:
        nonlocal seen
        if not seen:
            # A write that changes nothing first: the band's real work writes, so a
            # read-only replica met in a failover must not count as Redis being back.
            ctx.redis.call("XTRIM", ctx.stream, "MINID", "0")
            if not ctx.redis.call("EXISTS", ctx.stream):
                ctx.stop.wait(wait)
                return True  # it talked to Redis: after an outage, that says it is back
            seen = True
        return step()

    return guarded
