"""The reader: XREADGROUP for new messages, as many as there are free permits plus
the read-ahead that recent job durations allow (see flowd._readahead)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ._readahead import NUDGE, STALE, hand_back, item_id
from ._redis import Entry, Session, parse_xpending_range, parse_xreadgroup
from ._timeutil import to_ms

if TYPE_CHECKING:
    from ._runtime import Runtime

logger = logging.getLogger(__name__)

#: How long one permit wait lasts before the reader looks at the stop signal again.
_PERMIT_POLL = 0.25


def block_seconds(requested: float, socket_timeout: float | None) -> float:
    """The BLOCK time to use: a read must return before the client's socket times out."""
    if socket_timeout is None:
        return requested
    return max(0.001, min(requested, socket_timeout / 2))


def start_entries(runtime: Runtime, entries: list[Entry], deliveries: dict[str, int] | None) -> int:
    """Dispatch entries that were read, taking one permit each; returns how many started.

    Entries read are already delivered to this consumer, so they start even
    while stopping, as long as a permit frees up before the stop deadline;
    any left over stay pending, for the claimer or a later drain.
    """
    held = runtime.permits.try_acquire(len(entries))  # usually all of them, in one step
    dispatch = runtime.dispatch
    for index, (msg_id, fields) in enumerate(entries):
        if held:
            held -= 1
        elif not _take_permit(runtime):
            logger.warning(
                "stopping: %d read messages on %s/%s were not started and stay pending",
                len(entries) - index,
                runtime.stream,
                runtime.group,
            )
            return index
        dispatch(msg_id, fields, 1 if deliveries is None else deliveries.get(msg_id, 1))
    return len(entries)


def _take_permit(runtime: Runtime) -> bool:
    """Wait for one permit, until the stop deadline if there is one."""
    permits = runtime.permits
    while True:
        deadline = runtime.deadline
        if deadline is not None:
            return permits.acquire(timeout=max(0.0, deadline - time.monotonic()))
        if permits.acquire(timeout=_PERMIT_POLL):
            return True


class Reader:
    """One step of the reader loop; the LoopThread calls ``step`` until stopped."""

    def __init__(self, runtime: Runtime, session: Session, block: float) -> None:
        self.runtime = runtime
        self.session = session
        self.block_ms = to_ms(block_seconds(block, session.socket_timeout))
        self._poll = block
        # Where the buffer stood (messages started from it), and since when.
        self._started = 0
        self._since = time.monotonic()

    def step(self) -> bool:
        runtime = self.runtime
        permits = runtime.permits
        readahead = runtime.pool.readahead
        target = readahead.target()
        # Read when a permit is spare, or (reading ahead) once half the buffer is gone.
        poll = min(self._poll, NUDGE) if permits.buffered else self._poll
        spare, buffered = permits.wait_room(poll, target // 2 if target else -1)
        if buffered and self._stalled():
            return True
        count = spare + max(0, target - buffered)
        if count <= 0 or (spare <= 0 and buffered > target // 2) or runtime.stop_event.is_set():
            return False
        reply = self.session.call(
            "XREADGROUP",
            "GROUP",
            runtime.group,
            runtime.consumer,
            "COUNT",
            count,
            "BLOCK",
            self.block_ms,
            "STREAMS",
            runtime.stream,
            ">",
        )
        entries = parse_xreadgroup(reply)
        if entries:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "read %d messages from %s/%s", len(entries), runtime.stream, runtime.group
                )
            prepare = runtime.prepare
            items = [
                item
                for msg_id, fields in entries
                if (item := prepare(msg_id, fields, 1)) is not None
            ]
            put = runtime.pool.tasks.put
            for item in items[: permits.admit(items, readahead.starters(len(items)))]:
                put(item)
        return True

    def _stalled(self) -> bool:
        """If nothing started from the buffer for NUDGE seconds, start it on the free
        permits too; if for STALE seconds with none free, hand it back. True if it
        talked to Redis."""
        runtime, permits = self.runtime, self.runtime.permits
        now = time.monotonic()
        if permits.started != self._started:
            self._started, self._since = permits.started, now
            return False
        if now - self._since >= NUDGE and permits.start_spare():
            return False
        if now - self._since < STALE or runtime.queue.claimer is None:
            return False
        self._since = now
        stream = runtime.stream
        items = permits.take_buffer(lambda item: item_id(item)[0] == stream)
        handed = hand_back(self.session, runtime.stream, runtime.group, runtime.consumer, items)
        logger.info(
            "handed back %d messages read ahead on %s/%s: the jobs ahead of them are slow",
            handed,
            runtime.stream,
            runtime.group,
        )
        return True


def read_own_pending(
    runtime: Runtime, session: Session, count: int, after: str
) -> tuple[list[Entry], dict[str, int]]:
    """This consumer's pending entries after ``after``, with their delivery counts.

    Reading history (XREADGROUP with an id) counts as a delivery, so the
    counts are read from XPENDING after the read and include this one.
    """
    reply = session.call(
        "XREADGROUP",
        "GROUP",
        runtime.group,
        runtime.consumer,
        "COUNT",
        count,
        "STREAMS",
        runtime.stream,
        after,
    )
    entries = parse_xreadgroup(reply)
    if not entries:
        return [], {}
    pending = parse_xpending_range(
        session.call(
            "XPENDING",
            runtime.stream,
            runtime.group,
            entries[0][0],
            entries[-1][0],
            len(entries),
            runtime.consumer,
        )
    )
    return entries, {msg_id: info[2] for msg_id, info in pending.items()}
