"""Claimer: reclaims stuck messages, counts deliveries, dead-letters exhausted ones."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._keys import dead_letter_stream
from ._readahead import ids_of
from ._redis import Session, parse_xautoclaim, parse_xpending_range, unnamed_deleted
from ._timeutil import Seconds, to_ms, to_seconds
from .errors import ConfigurationError
from .task import Task

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["Claimer", "DeadLetterWorker"]

logger = logging.getLogger(__name__)

#: Called with each dead message; ``task.job`` is None when it could not be decoded.
DeadLetterWorker = Callable[[Task[Any]], None]


class Claimer:
    """Settings of a queue's claimer thread.

    Every ``interval`` seconds the claimer runs XAUTOCLAIM for messages that
    have been pending longer than ``min_idle_time`` (their consumer died, or
    their job failed) and runs them again through the queue's own permits and
    executor, so ``concurrency`` still holds. A failed job is therefore
    retried after about ``min_idle_time``.

    :param min_idle_time: seconds (or a timedelta) a message must be idle before
        it is reclaimed. While a job runs, its message is kept fresh (a lease),
        so a live long job is never reclaimed, however long it runs.
    :param max_retries: at most ``max_retries + 1`` runs per message; the claim
        that would start one more sends it to the dead-letter path instead.
    :param dlq_worker: called with the dead ``Task`` (typed ``job``, or ``None``
        for an undecodable message; the reason on ``task.error``). If it
        raises, the message stays pending and is tried again on a later sweep.
        It can run more than once for one message (when the move after it
        fails, or the process dies in between): make it idempotent.
    :param dlq_stream: ``True`` (default) keeps dead messages in ``{stream}:dead``;
        a string names another stream (keep it in the stream's hash slot for
        Redis Cluster); ``False`` acks dead messages after ``dlq_worker`` with a
        WARNING, and then they are gone.
    :param interval: seconds between sweeps; defaults to a quarter of
        ``min_idle_time``, at most 5 s.
    :param batch: most messages claimed per XAUTOCLAIM call.
    """

    __slots__ = ("batch", "dlq_stream", "dlq_worker", "interval", "max_retries", "min_idle_time")

    def __init__(
        self,
        min_idle_time: Seconds = 30.0,
        max_retries: int = 3,
        dlq_worker: DeadLetterWorker | None = None,
        dlq_stream: bool | str = True,
        interval: Seconds | None = None,
        batch: int = 100,
    ) -> None:
        self.min_idle_time = to_seconds(min_idle_time, "min_idle_time")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, not {max_retries!r}")
        self.max_retries = max_retries
        if dlq_worker is not None and not callable(dlq_worker):
            raise ConfigurationError("dlq_worker must be callable")
        self.dlq_worker = dlq_worker
        if not isinstance(dlq_stream, bool | str) or dlq_stream == "":
            raise ConfigurationError(
                f"dlq_stream must be True, False or a stream name, not {dlq_stream!r}"
            )
        self.dlq_stream = dlq_stream
        self.interval = (
            min(self.min_idle_time / 4, 5.0)
            if interval is None
            else to_seconds(interval, "interval")
        )
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be a positive int, not {batch!r}")
        self.batch = batch

    def __repr__(self) -> str:
        return (
            f"Claimer(min_idle_time={self.min_idle_time}, max_retries={self.max_retries}, "
            f"dlq_stream={self.dlq_stream!r}, interval={self.interval}, batch={self.batch})"
        )

    def dead_letter_stream(self, stream: str) -> str | None:
        """The dead-letter stream for ``stream``, or None when turned off."""
        if self.dlq_stream is True:
            return dead_letter_stream(stream)
        if self.dlq_stream is False:
            return None
        return self.dlq_stream

    @property
    def lease_interval(self) -> float:
        """How often a running job's message is kept fresh: well inside min_idle_time."""
        return max(self.min_idle_time / 3, 0.01)


class ClaimLoop:
    """One sweep step of the claimer thread."""

    def __init__(self, runtime: Runtime, session: Session, claimer: Claimer) -> None:
        self.runtime = runtime
        self.session = session
        self.claimer = claimer
        self.min_idle_ms = to_ms(claimer.min_idle_time)
        # XAUTOCLAIM scans at most ~10 x COUNT entries per call: keep the cursor
        # across sweeps so old idle entries are not starved by fresh ones.
        self.cursor = "0-0"

    def step(self) -> bool:
        """Claim one batch; wait ``interval`` once a sweep of the whole PEL is done.

        With every permit busy, it waits for one (up to ``interval``) and goes on
        with the same sweep, so a large backlog of stuck messages is recovered
        as fast as the workers can run it, not one batch per interval.
        """
        runtime = self.runtime
        outcome = self.claim_batch()
        if outcome == "busy":
            runtime.permits.wait_free(self.claimer.interval)
            return False
        if outcome == "done":
            runtime.stop_event.wait(self.claimer.interval)
        return True

    def claim_batch(self) -> str:
        """Claim up to the free permits' worth: 'done' at the end of a sweep, 'busy' when
        no permit is free (nothing was asked of Redis), else 'more'."""
        runtime = self.runtime
        permits = runtime.permits
        taken = permits.try_acquire(self.claimer.batch)
        if taken == 0:
            return "busy"  # claimed work could not start anyway
        handed = 0  # permits passed on with an entry; the rest go back, whatever fails
        try:
            start = self.cursor
            reply = self.session.call(
                "XAUTOCLAIM",
                runtime.stream,
                runtime.group,
                runtime.consumer,
                self.min_idle_ms,
                start,
                "COUNT",
                taken,
            )
            cursor, claimed, deleted = parse_xautoclaim(reply)
            self.cursor = cursor
            for msg_id in deleted:
                runtime.ack_deleted(msg_id)
            if unnamed_deleted(reply):
                self._ack_unnamed_deleted(start, {msg_id for msg_id, _ in claimed})
            if claimed:
                deliveries = self._deliveries([msg_id for msg_id, _ in claimed])
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "claimed %d messages on %s/%s", len(claimed), runtime.stream, runtime.group
                    )
                limit = self.claimer.max_retries + 1
                for msg_id, fields in claimed:
                    assert fields is not None
                    count = deliveries.get(msg_id, 2)
                    handed += 1
                    if count > limit:
                        runtime.exhausted(msg_id, fields, count)
                    else:
                        runtime.dispatch(msg_id, fields, count, claimed=True)
        finally:
            permits.release(taken - handed)
        return "done" if cursor in ("0-0", "0") else "more"

    def _ack_unnamed_deleted(self, start: str, claimed: set[str]) -> None:
        """Redis 6.2 claimed deleted entries without naming them: find and ack them.

        They are now pending under this consumer; any of this consumer's pending
        entries from ``start`` on whose stream entry is gone is acked (no job
        could ever run for it).
        """
        runtime = self.runtime
        pending = parse_xpending_range(
            self.session.call(
                "XPENDING",
                runtime.stream,
                runtime.group,
                start,
                "+",
                10 * self.claimer.batch,
                runtime.consumer,
            )
        )
        candidates = [
            msg_id
            for msg_id in pending
            if msg_id not in claimed and (runtime.stream, msg_id) not in runtime.running
        ]
        if not candidates:
            return
        replies = self.session.call_many(
            [("XRANGE", runtime.stream, msg_id, msg_id) for msg_id in candidates]
        )
        for msg_id, reply in zip(candidates, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if not reply:
                runtime.ack_deleted(msg_id)

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """Delivery counts (XPENDING extended form), one pipelined round trip."""
        runtime = self.runtime
        replies = self.session.call_many(
            [("XPENDING", runtime.stream, runtime.group, msg_id, msg_id, 1) for msg_id in ids]
        )
        counts: dict[str, int] = {}
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            for msg_id, info in parse_xpending_range(reply).items():
                counts[msg_id] = info[2]
        return counts


class LeaseLoop:
    """Keeps the messages of running jobs, and of those read ahead, fresh (XCLAIM ...
    JUSTID) so no claimer takes them."""

    def __init__(self, runtime: Runtime, session: Session, claimer: Claimer) -> None:
        self.runtime = runtime
        self.session = session
        self.interval = claimer.lease_interval

    def step(self) -> bool:
        runtime = self.runtime
        # Wait first: a job younger than one interval is still fresh.
        if runtime.lease_stop.wait(self.interval):
            return False
        cutoff = time.monotonic() - self.interval / 2
        ids = [
            msg_id
            for (stream, msg_id), (_, started) in list(runtime.running.items())
            if stream == runtime.stream and started <= cutoff
        ]
        if not runtime.stop_event.is_set():  # once stopping, they are handed back instead
            ids += ids_of(runtime.permits.buffered_items(), runtime.stream)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            # JUSTID does not bump the delivery count; min-idle 0 always resets idle.
            self.session.call(
                "XCLAIM", runtime.stream, runtime.group, runtime.consumer, 0, *chunk, "JUSTID"
            )
        if ids and logger.isEnabledFor(logging.DEBUG):
            logger.debug("renewed the lease of %d running messages on %s", len(ids), runtime.stream)
        return bool(ids)
