"""Noticing that a stream's consumer group was lost while a run was using it.

Redis restarted without persistence, FLUSHALL, eviction or a DEL take the
stream and its group; the first loop of any process to meet NOGROUP
recreates the group. Each running process should say once that jobs were
lost, but only one of them creates the group: the others find it there
(BUSYGROUP) after their own NOGROUP, or, when their reader was blocked
through the loss (Redis 6.2 keeps a blocked XREADGROUP waiting on a deleted
key), never meet NOGROUP at all. For them the reader looks, when idle, at
the group's last-delivered id: below the highest id this run has read, the
group was made anew (or set back by XGROUP SETID).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions

from .._redis.replies import _text, as_map, id_key
from .context import StreamContext

#: Loops of one run that meet the same lost group within this many seconds report it once.
REPORT_WINDOW = 10.0
#: How often an idle reader looks at its group's last-delivered id (seconds).
CHECK_EVERY = 2.0


def last_delivered(reply: Any, group: str) -> tuple[int, int] | None:
    """The last-delivered id of ``group`` in an XINFO GROUPS reply (RESP2 or RESP3)."""
    for raw in reply or ():
        info = as_map(raw)
        if _text(info.get("name", b"")) == group:
            return id_key(_text(info["last-delivered-id"]))
    return None


class LossWatch:
    """One stream's group-loss account for a run: reports each loss once, from any loop."""

    def __init__(self, report: Callable[[], None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._reported_at: float | None = None
        self._high_water: tuple[int, int] | None = None
        self._checked_at = time.monotonic()

    def read(self, last_id: str) -> None:
        """The reader read entries up to ``last_id``."""
        seen = id_key(last_id)
        with self._lock:
            if self._high_water is None or seen > self._high_water:
                self._high_water = seen

    def lost(self, *, created: bool) -> None:
        """A loop met NOGROUP for a group seen before; ``created``: it made the group anew.

        The creator always reports; a loop that found the group made by another
        process (BUSYGROUP) reports unless this run already did just now.
        """
        with self._lock:
            first = self._take_report(time.monotonic(), always=created)
        if first:
            self._report()

    def _take_report(self, now: float, *, always: bool = False) -> bool:
        """Under the lock: True if this loss is to be reported (this run has not said so
        within REPORT_WINDOW, or ``always``); then the ids read before it are forgotten."""
        recent = self._reported_at is not None and now - self._reported_at < REPORT_WINDOW
        if recent and not always:
            return False
        self._reported_at = now
        self._high_water = None  # the ids read before the loss mean nothing now
        return True

    def check_idle(self, session: Any, stream: str, group: str) -> None:
        """On an idle read, at most every CHECK_EVERY seconds: report a group made anew."""
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY or self._high_water is None:
            return
        self._checked_at = now
        try:
            delivered = last_delivered(session.call("XINFO", "GROUPS", stream), group)
        except redis.exceptions.ResponseError:
            return  # no stream: the next read meets NOGROUP and recreates the group
        with self._lock:
            high = self._high_water
            if delivered is None or high is None or delivered >= high:
                return
            self._high_water = None  # said already or not, this loss is noted
            first = self._take_report(now)
        if first:
            self._report()


def wait_for_new(ctx: StreamContext, block_ms: int) -> None:
    """Block until ``ctx``'s stream has an entry its group has not delivered (or for
    ``block_ms``), reading nothing for the group: XREAD after the group's
    last-delivered id, which every undelivered entry is above."""
    try:
        delivered = last_delivered(ctx.redis.call("XINFO", "GROUPS", ctx.stream), ctx.group)
    except redis.exceptions.ResponseError:
        return  # no stream: the next read meets NOGROUP and recreates the group
    if delivered is None:
        return  # no group: likewise
    after = f"{delivered[0]}-{delivered[1]}"
    ctx.redis.call("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", ctx.stream, after)
