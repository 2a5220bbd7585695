"""Run records: how many claimed runs of a pending message really started.

XAUTOCLAIM counts a delivery for every id it returns, whether or not a job
ever runs for it: when a job kills its process (``os._exit``, a segfault),
the entries claimed or read ahead with it count one delivery more each time,
and reach ``max_retries`` without ever having run. So the claimer does not
take XPENDING's counter alone: a worker writes ``HINCRBY {stream}:runs:<group>
<id> 1`` just before it calls the job of a claimed entry (never on a first
delivery, so the hot path pays nothing), and a claimed entry's delivery is

    min(XPENDING's count, 2 + recorded starts)

The first delivery counts as one run whether or not it started (nothing is
written for it); each claimed run counts once it started. XPENDING's count
bounds it from above, so an entry handed back unrun (its count set back, see
flowd._consumer.readahead.hand_back) still counts as a first delivery. The record goes
when the entry leaves the PEL (the acker, the dead-letter move, the retry
that schedules it later).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .._redis.fields import prior_runs
from .._redis.keys import runs_key
from .._redis.thread_sessions import ThreadSessions
from ..task import Task

logger = logging.getLogger(__name__)


def claimed_deliveries(pending: int, starts: int) -> int:
    """The delivery a claimed entry is at, from XPENDING's count and its recorded starts."""
    return min(pending, 2 + starts)


def parse_starts(ids: Sequence[str], reply: Any) -> dict[str, int]:
    """HMGET's reply for ``ids`` as id -> recorded starts (0 when none or unreadable)."""
    out: dict[str, int] = {}
    for msg_id, raw in zip(ids, reply or (), strict=False):
        try:
            out[msg_id] = max(int(raw), 0) if raw is not None else 0
        except (TypeError, ValueError):
            out[msg_id] = 0
    return out


def exhausted_starts(limit: int, prior: int) -> int:
    """Starts to record so that the next claim of an entry (with ``prior`` runs before it
    was re-added) is past ``limit`` deliveries: 2 + starts + prior > limit."""
    return max(limit - prior - 1, 0)


class RunRecords:
    """Writes the starts of one stream's claimed runs, from the worker threads (each with
    a Session of its own, made on first use)."""

    def __init__(self, client: Any, stream: str, group: str) -> None:
        self.stream = stream
        self.key = runs_key(stream, group)
        self._sessions = ThreadSessions(client, stream)

    def started(self, task: Task[Any]) -> bool:
        """Record that a run of ``task`` starts now, if it is a claimed one (its own
        deliveries, runs before a re-add aside, are 2 or more). False when the record could
        not be written: the run must not start, as it could not count toward max_retries."""
        if task.deliveries - prior_runs(task.fields) < 2:
            return True  # a first delivery: counted as one run without a record
        try:
            self._sessions.get().call("HINCRBY", self.key, task.id, 1)
        except Exception as exc:
            # An ACL user made for an older flowd lacks HINCRBY: say what to grant.
            denied = "NOPERM" in str(exc)
            logger.log(
                logging.ERROR if denied else logging.WARNING,
                "could not record the start of claimed job %s on %s%s; it is not run now and "
                "stays pending for the claimer",
                task.id,
                self.stream,
                " (the Redis user needs +hincrby)" if denied else "",
                exc_info=True,
            )
            return False
        return True

    def close(self) -> None:
        self._sessions.close()
