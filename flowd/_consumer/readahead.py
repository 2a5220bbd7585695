"""Read-ahead bounded by time: how many messages to read beyond the free permits.

The reader may read more than it can start at once, but only as many as the
pool is expected to finish within :data:`HORIZON` seconds, judged by a moving
average of recent job durations: tiny jobs then travel in large batches (one
round trip, one thread switch, for many jobs), while slow jobs get no
read-ahead at all, so no message waits in this process while another
consumer could start it. Until jobs have been measured they count as slow.

Messages read ahead are pending under this consumer: the lease loop renews
them like running ones, and a stop hands them back (:func:`hand_back`) so that
any consumer's next claimer sweep takes them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._redis.replies import Fields
from .._redis.session import Session

logger = logging.getLogger(__name__)

#: Read ahead what the pool finishes within this many seconds.
HORIZON = 0.005
#: Most messages buffered at once, however short the jobs (bounds memory, and the
#: work a crash leaves to the claimer).
CAP = 256
#: Weight of the newest job in the moving average of job durations.
ALPHA = 0.1
#: What an unmeasured job counts as: slow, so nothing is read ahead at first.
UNMEASURED = 1.0
#: A buffer from which no message started for this long gets the free workers too.
NUDGE = 0.05
#: A buffer from which no message started for this long waits behind jobs that
#: turned out slow: it is handed back, for whichever consumer has a free worker.
STALE = 0.5
#: Idle time (ms) a handed-back message gets: far above any min_idle_time, and
#: below the server's clock in ms (XCLAIM turns a larger IDLE into 0).
HAND_BACK_IDLE_MS = 10 * 365 * 24 * 3600 * 1000


class ReadAhead:
    """The moving measure of job durations, and the read-ahead it allows.

    Worker threads update :attr:`seconds` after each job without a lock (a lost
    update under a race only makes the average a little staler).
    """

    __slots__ = ("concurrency", "seconds")

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        #: Moving average of recent job durations, in seconds.
        self.seconds = UNMEASURED

    def starters(self, items: int) -> int:
        """Worker threads to start on ``items`` read: enough to finish them within
        HORIZON, so that tiny jobs run on one thread with no thread switch per job."""
        needed = items * self.seconds / HORIZON
        return max(1, min(items, int(needed) + 1))

    def target(self) -> int:
        """Messages to keep buffered beyond the running ones (0 while jobs are slow)."""
        seconds = self.seconds
        if seconds <= 0.0:
            return CAP
        return min(CAP, int(self.concurrency * HORIZON / seconds))


@dataclass(frozen=True, slots=True)
class Link:
    """What a reader needs to read ahead: the policy, how an entry becomes a work
    item (without a permit), how an item with its permit reaches the workers, and
    whether a stalled buffer can be handed back (only a claimer takes it again).
    With per-key concurrency, ``gate_begin`` splits prepared items into those that
    may start and the tasks asking for their key's lease (the reader sends that call
    with its next read), ``gate_end`` gives the tasks that got it from the call's
    reply (the others wait in the key gate), and ``handed_back`` ends the key leases
    of items handed back unstarted."""

    policy: ReadAhead
    prepare: Callable[[str, Fields | None, int], Any]
    submit: Callable[[Any], None]
    hand_back_stalled: bool
    gate_begin: Callable[[list[Any]], tuple[list[Any], Any]] | None = None
    gate_end: Callable[[Any, Any], list[Any]] | None = None
    handed_back: Callable[[list[Any]], None] | None = None


def item_id(item: Any) -> tuple[str, str]:
    """(stream, message id) of a buffered item (a Task, or a dead-letter work item)."""
    task = getattr(item, "task", item)
    return task.stream, task.id


def ids_of(items: Iterable[Any], stream: str) -> list[str]:
    """Message ids of ``stream`` among buffered items."""
    return [msg_id for s, msg_id in map(item_id, items) if s == stream]


def hand_back(session: Session, stream: str, group: str, consumer: str, items: list[Any]) -> int:
    """Make buffered messages of ``stream`` claimable by any consumer now.

    XCLAIM ... IDLE <long ago> JUSTID keeps them pending under this consumer
    but idle for years, so the next XAUTOCLAIM sweep of any claimer takes them;
    RETRYCOUNT sets their delivery count back to what it was before this
    consumer read them (they never ran here), so the claim that runs them counts
    as their first delivery and ``max_retries`` keeps its meaning. Returns how
    many were handed back.
    """
    by_count: dict[int, list[str]] = {}
    for item in items:
        task = getattr(item, "task", item)
        if task.stream == stream:
            by_count.setdefault(max(0, task.deliveries - 1), []).append(task.id)
    return claim_back(session, stream, group, consumer, by_count)


def claim_back(
    session: Session, stream: str, group: str, consumer: str, by_count: dict[int, list[str]]
) -> int:
    """XCLAIM ... IDLE <long ago> RETRYCOUNT <count> JUSTID for each delivery count's ids
    (see :func:`hand_back`); returns how many ids."""
    commands: list[tuple[Any, ...]] = []
    for count, ids in by_count.items():
        for i in range(0, len(ids), 500):
            commands.append(
                (
                    "XCLAIM",
                    stream,
                    group,
                    consumer,
                    0,
                    *ids[i : i + 500],
                    "IDLE",
                    HAND_BACK_IDLE_MS,
                    "RETRYCOUNT",
                    count,
                    "JUSTID",
                )
            )
    if not commands:
        return 0
    for reply in session.call_many(commands):
        if isinstance(reply, Exception):
            raise reply
    return sum(len(ids) for ids in by_count.values())


def hand_back_logged(
    session: Session, stream: str, group: str, consumer: str, items: list[Any], what: str
) -> None:
    """:func:`hand_back` at a stop, saying what was handed back (``what``: why they
    waited), or that it failed (they are then claimed after min_idle_time)."""
    try:
        handed = hand_back(session, stream, group, consumer, items)
    except Exception as exc:
        logger.warning(
            "could not hand back the messages %s on %s/%s (%s); they stay "
            "pending and are claimed after min_idle_time",
            what,
            stream,
            group,
            exc,
        )
        return
    if handed:
        logger.info(
            "handed back %d messages %s and not started on %s/%s", handed, what, stream, group
        )
