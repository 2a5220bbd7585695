"""The claimer and lease loops of one stream (their settings are :class:`flowd.Claimer`)."""

from __future__ import annotations

import enum
import logging
import threading
import time

from .._redis.keys import runs_key
from .._redis.replies import (
    Entry,
    parse_entries,
    parse_xautoclaim,
    parse_xpending_range,
    unnamed_deleted,
)
from .._redis.timeutil import to_ms
from ..flow.keygate import KeyGate
from ..flow.pause import CHECK_EVERY, PauseWatch
from .context import StreamContext
from .readahead import ids_of
from .retry import RetryTimer
from .runs import claimed_deliveries, parse_starts

logger = logging.getLogger(__name__)

#: Ids per XCLAIM ... JUSTID when renewing the ids this process holds.
_RENEW_CHUNK = 500


def renew(ctx: StreamContext, ids: list[str]) -> None:
    """Reset the idle time of ``ids``, pending under ``ctx``'s consumer, so that no
    claimer takes them: XCLAIM with min-idle 0 always resets it, and JUSTID
    leaves the delivery count alone."""
    for i in range(0, len(ids), _RENEW_CHUNK):
        chunk = ids[i : i + _RENEW_CHUNK]
        ctx.redis.call("XCLAIM", ctx.stream, ctx.group, ctx.consumer, 0, *chunk, "JUSTID")


class ClaimOutcome(enum.Enum):
    """What one :meth:`ClaimLoop.claim_batch` did."""

    DONE = "done"  #: a sweep of the whole PEL ended
    MORE = "more"  #: entries may be left to claim in this sweep
    BUSY = "busy"  #: no permit was free: nothing was asked of Redis
    LIMITED = "limited"  #: the rate limit had no token free (the claimer waited for one)


class ClaimLoop:
    """The claimer of one stream: XAUTOCLAIM what has been idle too long, hand it on.

    Claimed entries go to ``ctx.dispatch`` with their delivery counts; the
    dispatcher runs them again or, past ``max_retries``, dead-letters them.
    Ids this process still holds (running, or acked with the XACK not yet
    written, e.g. during an outage) are skipped: running them again would be
    a duplicate, and their ack is on its way.

    ``timer`` holds this process's short retries (kept in the PEL until due):
    the claimer wakes when one is due and claims it by id, instead of waiting
    for its next sweep. A drain's one sweep has none.

    With ``pause``, it claims nothing while the group is paused (the lease loop
    goes on renewing what runs); a resume wakes it (through ``timer``), to sweep
    from the start at once.
    """

    def __init__(
        self,
        ctx: StreamContext,
        min_idle_time: float,
        interval: float,
        batch: int,
        timer: RetryTimer | None = None,
        pause: PauseWatch | None = None,
    ):
        self.ctx = ctx
        self.pause = pause
        self._resumes = 0 if pause is None else pause.resumes
        self.min_idle_ms = to_ms(min_idle_time)
        self.interval = interval
        self.batch = batch
        self.timer = timer
        # XAUTOCLAIM scans at most ~10 x COUNT entries per call: keep the cursor
        # across sweeps so old idle entries are not starved by fresh ones.
        self.cursor = "0-0"

    def step(self) -> bool:
        """Claim one batch; wait ``interval`` once a sweep of the whole PEL is done.

        With every permit busy, it waits for one (up to ``interval``) and goes on
        with the same sweep, so a large backlog of stuck messages is recovered
        as fast as the workers can run it, not one batch per interval.
        """
        pause = self.pause
        if pause is not None:
            if pause.paused():
                self.ctx.stop.wait(CHECK_EVERY)
                return False
            if pause.resumes != self._resumes:
                # Sweep from the start: messages handed back while it was paused are
                # claimable at once, wherever they lie before the cursor.
                self._resumes = pause.resumes
                self.cursor = "0-0"
        timer = self.timer
        if timer is not None:
            self.claim_due(timer)
        outcome = self.claim_batch()
        if outcome is ClaimOutcome.LIMITED:
            return True
        if outcome is ClaimOutcome.BUSY:
            due = None if timer is None else timer.until_next()
            self.ctx.permits.wait_free(self.interval if due is None else min(self.interval, due))
            return False
        if outcome is ClaimOutcome.DONE:
            if timer is None:
                self.ctx.stop.wait(self.interval)
            else:
                timer.wait(self.ctx.stop, self.interval)
        return True

    def claim_due(self, timer: RetryTimer) -> None:
        """Claim this process's short retries whose delay is over (XCLAIM by id).

        XCLAIM with ``min_idle_time`` takes only those still idle that long, so
        one that another consumer's claimer took meanwhile is not taken twice.
        Those without a free permit now are left to the sweep.
        """
        ctx = self.ctx
        due = timer.take_due(self.batch)
        if not due:
            return
        taken = ctx.permits.try_acquire(len(due))
        gate = ctx.rate
        if taken and gate is not None:
            allowed, wait = gate.take(taken)
            again = time.monotonic() + wait
            for msg_id in due[allowed:taken]:  # due again when a token should be free
                timer.add(msg_id, again)
            ctx.permits.release(taken - allowed)
            taken = allowed
        handed = 0
        try:
            if taken:
                reply = ctx.redis.call(
                    "XCLAIM", ctx.stream, ctx.group, ctx.consumer, self.min_idle_ms, *due[:taken]
                )
                # Redis 6.2 answers a bare nil for a deleted entry: the sweep acks those.
                claimed = parse_entries([item for item in reply or () if item is not None])
                handed = self._hand_out([(i, f) for i, f in claimed if f is not None])
        finally:
            ctx.permits.release(taken - handed)
            if gate is not None:
                gate.give_back(taken - handed)

    def claim_batch(self) -> ClaimOutcome:
        """Claim up to the free permits' worth of idle entries and dispatch them.

        With a rate limit, as many as it has tokens for: the others stay idle in
        the PEL, their delivery count untouched. A claim the dispatcher sends to
        the dead-letter path spends its token too.
        """
        ctx = self.ctx
        permits = ctx.permits
        taken = permits.try_acquire(self.batch)
        if taken == 0:
            return ClaimOutcome.BUSY  # claimed work could not start anyway
        gate = ctx.rate
        if gate is not None:
            if not self._any_idle():  # no token taken (from the reader) for nothing
                permits.release(taken)
                return ClaimOutcome.DONE
            allowed, wait = gate.take(taken)
            permits.release(taken - allowed)
            taken = allowed
            if not taken:  # wait holding no permit: the reader may get tokens first
                ctx.stop.wait(min(wait, self.interval))
                return ClaimOutcome.LIMITED
        handed = 0  # permits passed on with an entry; the rest go back, whatever fails
        try:
            # Taken before the claim: an id that finishes meanwhile is acked before
            # XAUTOCLAIM (so not returned) or is in this snapshot.
            held = ctx.held()
            if held:
                self._refresh(held)
            start = self.cursor
            reply = ctx.redis.call(
                "XAUTOCLAIM",
                ctx.stream,
                ctx.group,
                ctx.consumer,
                self.min_idle_ms,
                start,
                "COUNT",
                taken,
            )
            cursor, claimed, deleted = parse_xautoclaim(reply)
            self.cursor = cursor
            for msg_id in deleted:
                ctx.dispatch(msg_id, None, 0)
            if unnamed_deleted(reply):
                self._ack_unnamed_deleted(start, {msg_id for msg_id, _ in claimed} | held)
            handed = self._hand_out(
                [(msg_id, fields) for msg_id, fields in claimed if msg_id not in held]
            )
        finally:
            permits.release(taken - handed)
            if gate is not None:
                gate.give_back(taken - handed)
        return ClaimOutcome.DONE if cursor in ("0-0", "0") else ClaimOutcome.MORE

    def _any_idle(self) -> bool:
        """Whether any pending entry has been idle for ``min_idle_time`` (XPENDING IDLE)."""
        ctx = self.ctx
        reply = ctx.redis.call(
            "XPENDING", ctx.stream, ctx.group, "IDLE", self.min_idle_ms, "-", "+", 1
        )
        return bool(reply)

    def _hand_out(self, claimed: list[Entry]) -> int:
        """Dispatch claimed entries with their delivery counts; returns how many (one
        permit went with each)."""
        if not claimed:
            return 0
        ctx = self.ctx
        deliveries = self._deliveries([msg_id for msg_id, _ in claimed])
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("claimed %d messages on %s/%s", len(claimed), ctx.stream, ctx.group)
        for msg_id, fields in claimed:
            ctx.dispatch(msg_id, fields, deliveries.get(msg_id, 2), claimed=True)
        return len(claimed)

    def _refresh(self, held: set[str]) -> None:
        """Make the ids this process holds look busy, so XAUTOCLAIM does not return them.

        XAUTOCLAIM counts a delivery for every id it returns: skipping a held id
        after claiming it would spend one of its retries without a run.
        """
        renew(self.ctx, sorted(held))

    def _ack_unnamed_deleted(self, start: str, skip: set[str]) -> None:
        """Redis 6.2 claimed deleted entries without naming them: find and ack them.

        They are now pending under this consumer; any of this consumer's pending
        entries from ``start`` on whose stream entry is gone is acked (no job
        could ever run for it).
        """
        ctx = self.ctx
        pending = parse_xpending_range(
            ctx.redis.call(
                "XPENDING", ctx.stream, ctx.group, start, "+", 10 * self.batch, ctx.consumer
            )
        )
        candidates = [msg_id for msg_id in pending if msg_id not in skip]
        if not candidates:
            return
        replies = ctx.redis.call_many(
            [("XRANGE", ctx.stream, msg_id, msg_id) for msg_id in candidates]
        )
        for msg_id, reply in zip(candidates, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if not reply:
                ctx.dispatch(msg_id, None, 0)

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """Delivery counts, one pipelined round trip: XPENDING's (extended form) for each
        id, bounded by the runs that really started (flowd._runs), so entries claimed with
        a job that killed its process, and never started, are not charged for it."""
        ctx = self.ctx
        replies = ctx.redis.call_many(
            [
                *(("XPENDING", ctx.stream, ctx.group, msg_id, msg_id, 1) for msg_id in ids),
                ("HMGET", runs_key(ctx.stream, ctx.group), *ids),
            ]
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        starts = parse_starts(ids, replies[-1])
        counts: dict[str, int] = {}
        for reply in replies[:-1]:
            for msg_id, info in parse_xpending_range(reply).items():
                counts[msg_id] = claimed_deliveries(info[2], starts.get(msg_id, 0))
        return counts


class LeaseLoop:
    """Keeps the messages of running jobs, and of those read ahead, fresh (XCLAIM ...
    JUSTID) so no claimer takes them.

    Its context's stop event outlives the reader's: running jobs stay leased
    until they finish.
    """

    def __init__(
        self,
        ctx: StreamContext,
        interval: float,
        lock: threading.Lock,
        keys: KeyGate | None = None,
    ) -> None:
        self.ctx = ctx
        self.interval = interval
        #: Held while renewing: a short retry waits for it before setting its idle time.
        self.lock = lock
        #: Per-key concurrency: its leases are extended here too, and its parked
        #: messages leased like read-ahead ones.
        self.keys = keys

    def step(self) -> bool:
        ctx = self.ctx
        # Wait first: a job younger than one interval is still fresh.
        if ctx.stop.wait(self.interval):
            return False
        with self.lock:
            ids = ctx.running_since(time.monotonic() - self.interval / 2)
            ids += ids_of(ctx.permits.buffered_items(), ctx.stream)  # read ahead, not started
            keys = self.keys
            if keys is not None:
                ids += keys.parked_ids()  # waiting for their key
                keys.renew(ctx.redis)
            renew(ctx, ids)
        if ids and logger.isEnabledFor(logging.DEBUG):
            logger.debug("renewed the lease of %d running messages on %s", len(ids), ctx.stream)
        return bool(ids)
