"""What one loop of one stream is given: a small frozen context, and the stop signal.

A loop (reader, claimer, lease, housekeeping...) sees its stream, group and
consumer names, a :class:`~flowd._redis.session.Session` of its own, the permits it
shares with the other loops, the event that ends it, and the calls through
which it hands work on. It never sees the Queue, the engine or the pool.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .._redis.replies import Entry, Fields
from .._redis.session import Session
from ..flow.ratelimit import RateGate
from .permits import Permits

__all__ = ["PERMIT_POLL", "Dispatch", "StopSignal", "StreamContext", "start_entries"]

logger = logging.getLogger(__name__)

#: How long one permit wait lasts before the reader looks at the stop signal again.
PERMIT_POLL = 0.25


class StopSignal(threading.Event):
    """The stop event of a run, with the deadline of the stop once it began.

    Only the engine sets it (:meth:`begin`); loops read it like any Event.
    """

    def __init__(self) -> None:
        super().__init__()
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When the stop must be done by (monotonic); None while running or without limit."""
        return self._deadline

    def begin(self, deadline: float | None) -> None:
        """Start stopping: loops stop reading; running work has until ``deadline``."""
        self._deadline = deadline
        self.set()


class Dispatch(Protocol):
    """Hands one entry (whose permit the caller holds) to the workers or the dead-letter
    path. ``fields`` None means the entry was deleted from the stream while pending: it
    is acked, and the caller holds no permit for it."""

    def __call__(
        self, msg_id: str, fields: Fields | None, deliveries: int, *, claimed: bool = False
    ) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class StreamContext:
    """Everything one loop of one stream works with.

    The engine builds one per stream, and each loop gets its copy with a
    session of its own (:meth:`for_loop`).
    """

    stream: str
    group: str
    consumer: str
    session: Session | None
    permits: Permits
    stop: StopSignal | threading.Event
    dispatch: Dispatch
    #: Ids of this stream this process holds now: running, or acked but the XACK unwritten.
    held: Callable[[], set[str]]
    #: Ids of this stream whose job started before the given monotonic time.
    running_since: Callable[[float], list[str]]
    #: The queue's rate limit, as this loop takes its tokens (None: no limit).
    rate: RateGate | None = None

    def for_loop(
        self,
        session: Session | None,
        stop: threading.Event | None = None,
        rate: RateGate | None = None,
    ) -> StreamContext:
        """This context with a loop's own session (and, if given, its own stop event and
        rate gate)."""
        return dataclasses.replace(self, session=session, stop=stop or self.stop, rate=rate)

    @property
    def redis(self) -> Session:
        """The loop's session (a context without one is a programming error)."""
        assert self.session is not None, "this loop was built without a session"
        return self.session

    @property
    def deadline(self) -> float | None:
        """The stop's deadline, once stopping (None otherwise or without limit)."""
        return self.stop.deadline if isinstance(self.stop, StopSignal) else None


def start_entries(
    ctx: StreamContext, entries: list[Entry], deliveries: dict[str, int] | None
) -> int:
    """Dispatch entries that were read, taking one permit each; returns how many started.

    Entries read are already delivered to this consumer, so they start even
    while stopping, as long as a permit frees up before the stop deadline;
    any left over stay pending, for the claimer or a later drain.
    """
    held = ctx.permits.try_acquire(len(entries))  # usually all of them, in one step
    dispatch = ctx.dispatch
    for index, (msg_id, fields) in enumerate(entries):
        if fields is None:  # deleted while pending (re-read history): acked, needs no permit
            dispatch(msg_id, None, 0)
            continue
        if held:
            held -= 1
        elif not _take_permit(ctx):
            logger.warning(
                "stopping: %d read messages on %s/%s were not started and stay pending",
                len(entries) - index,
                ctx.stream,
                ctx.group,
            )
            return index
        dispatch(msg_id, fields, 1 if deliveries is None else deliveries.get(msg_id, 1))
    if held:  # taken for deleted entries
        ctx.permits.release(held)
    return len(entries)


def _take_permit(ctx: StreamContext) -> bool:
    """Wait for one permit, until the stop deadline if there is one."""
    permits = ctx.permits
    while True:
        deadline = ctx.deadline
        if deadline is not None:
            return permits.acquire(timeout=max(0.0, deadline - time.monotonic()))
        if permits.acquire(timeout=PERMIT_POLL):
            return True
