"""The reader: XREADGROUP for new messages, as many as there are free permits plus
the read-ahead that recent job durations allow (see flowd._consumer.readahead).

:func:`xreadgroup` is the one place that builds an XREADGROUP: the reader
thread, and a drain reading the backlog, both go through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from .._redis.replies import Entry, parse_xpending_range, parse_xreadgroup
from .._redis.session import READ_MARGIN, ensure_group
from .._redis.timeutil import to_ms
from ..flow.keygate import Asking
from ..flow.leasecalls import send_lease_calls
from ..flow.pause import CHECK_EVERY, MAX_BLOCK, PauseWatch
from ..flow.priorities import BASE, BandReads, BandWatch
from .context import PERMIT_POLL, StreamContext, start_entries
from .group_loss import LossWatch, wait_for_new
from .readahead import NUDGE, STALE, Link, claim_back, hand_back, item_id

logger = logging.getLogger(__name__)

#: What one read returned: (band index, entries) batches in the order read (BASE alone
#: without priority bands), and the rate tokens taken for them.
Batches = list[tuple[int, list[Entry]]]


@dataclass(slots=True)
class Bands:
    """A reader's priority bands (flowd.flow.priorities): each band's context (its
    dispatcher) and read-ahead link, from the highest; BASE is the reader's own."""

    watch: BandWatch
    reads: BandReads
    ctxs: list[StreamContext]
    links: list[Link | None]


def block_seconds(requested: float, socket_timeout: float) -> float:
    """The BLOCK time to use: a read must return before its socket times out.

    The reader's session waits ``READ_MARGIN`` past the block; a shorter socket
    timeout of the client's own halves the block instead.
    """
    if requested + READ_MARGIN <= socket_timeout:
        return requested
    return max(0.001, min(requested, socket_timeout / 2))


def xreadgroup(
    ctx: StreamContext, count: int, after: str = ">", block_ms: int | None = None
) -> list[Entry]:
    """Read up to ``count`` entries of ``ctx``'s stream as its consumer.

    ``after`` is ``">"`` for new messages, or an id to re-read this consumer's
    own pending entries after it; ``block_ms`` waits that long for new ones.
    """
    return parse_xreadgroup(ctx.redis.call(*xreadgroup_args(ctx, count, after, block_ms)))


def xreadgroup_args(
    ctx: StreamContext, count: int, after: str = ">", block_ms: int | None = None
) -> list[object]:
    """The XREADGROUP command :func:`xreadgroup` sends."""
    args: list[object] = ["XREADGROUP", "GROUP", ctx.group, ctx.consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return [*args, "STREAMS", ctx.stream, after]


class Reader:
    """The reader loop of one stream; the LoopThread calls ``step`` until stopped.

    A drain calls :meth:`read_backlog` instead, in its own thread, until it
    returns 0: first this consumer's own pending entries, then new ones.

    With ``pause``, it reads nothing while the group is paused, and hands back
    what it read ahead. A read that blocked since before the pause and returns
    messages after it starts none of them: they are handed back too. Without a
    claimer nothing would take them back, so the block is then at most
    MAX_BLOCK instead: such a read ends soon after the pause.
    """

    def __init__(
        self,
        ctx: StreamContext,
        block: float,
        ahead: Link | None = None,
        loss: LossWatch | None = None,
        pause: PauseWatch | None = None,
        bands: Bands | None = None,
    ) -> None:
        self.ctx = ctx
        self.bands = bands
        self._after: list[str] | None = None  # where an idle band read blocks after
        self.loss = loss
        self.pause = pause
        if pause is not None and (ahead is None or not ahead.hand_back_stalled):
            block = min(block, MAX_BLOCK)
        self.block_ms = to_ms(block_seconds(block, ctx.redis.socket_timeout))
        self._poll = block
        self._own_after: str | None = "0"  # where re-reading own pending entries goes on
        self.ahead = ahead
        # Where the buffer stood (messages started from it), and since when.
        self._started = 0
        self._since = time.monotonic()
        #: Per-key concurrency: read tasks whose lease call goes with the next read.
        self._asks: list[tuple[Link, Asking]] = []

    def step(self) -> bool:
        # Lease calls left by the last step go with this step's read; if it reads
        # nothing they are sent alone, before any wait (and before a stop).
        asks, self._asks = self._asks, []
        try:
            return self._step(asks)
        finally:
            if asks:
                self._send_asks(asks)
            if self._asks and self.ctx.stop.is_set():
                self._send_asks(self._asks)
                self._asks = []

    def _step(self, asks: list[tuple[Link, Asking]]) -> bool:
        ctx = self.ctx
        ahead = self.ahead
        pause = self.pause
        if pause is not None and pause.paused():
            self._send_asks(asks)
            return self._paused(ahead)
        if ahead is None:
            return self._step_without_read_ahead()
        permits = ctx.permits
        target = ahead.policy.target()
        # Read when a permit is spare, or (reading ahead) once half the buffer is gone.
        poll = min(self._poll, NUDGE) if permits.buffered else self._poll
        if asks:  # a look only: tasks wait for their call
            poll = 0.0
        spare, buffered = permits.wait_room(poll, target // 2 if target else -1)
        if buffered and self._stalled(ahead):
            return True
        count = spare + max(0, target - buffered)
        if count <= 0 or (spare <= 0 and buffered > target // 2) or ctx.stop.is_set():
            return False
        if pause is not None and pause.paused():  # again: the wait may have been long
            self._send_asks(asks)
            return self._paused(ahead)
        read = self._read(count, asks)
        if read is None:
            return True
        batches, granted = read
        read_count = self._watch(batches)
        if read_count and ahead.hand_back_stalled and self._paused_meanwhile(batches):
            if ctx.rate is not None:  # none of them started
                ctx.rate.give_back(granted)
            return True
        for band, entries in batches:
            if entries:
                self._start_read(self._link(band) or ahead, entries)
        self._settle(granted, read_count)
        return True

    def _ctx(self, band: int) -> StreamContext:
        return self.ctx if band == BASE or self.bands is None else self.bands.ctxs[band]

    def _link(self, band: int) -> Link | None:
        return self.ahead if band == BASE or self.bands is None else self.bands.links[band]

    def _start_read(self, ahead: Link, entries: list[Entry]) -> None:
        """Prepare what was read, start what the permits allow, buffer the rest."""
        ctx = self.ctx
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("read %d messages from %s/%s", len(entries), ctx.stream, ctx.group)
        prepare = ahead.prepare
        items = [
            item for msg_id, fields in entries if (item := prepare(msg_id, fields, 1)) is not None
        ]
        if ahead.gate_begin is not None:  # per-key concurrency: tasks ask for a lease
            items, asking = ahead.gate_begin(items)
            if asking is not None:
                self._asks.append((ahead, asking))
        self._admit(ahead, items)

    def _admit(self, ahead: Link, items: list[Any]) -> None:
        """Start what the permits allow of prepared items, buffer the rest."""
        permits = self.ctx.permits
        if self.bands is not None and permits.buffered:
            # Behind what waits already (a lower band's job the rule let in): in read order.
            permits.admit(items, 0)
            permits.start_spare()
            return
        submit = ahead.submit
        for item in items[: permits.admit(items, ahead.policy.starters(len(items)))]:
            submit(item)

    def _step_without_read_ahead(self) -> bool:
        """Read never more than the free permits, and start what was read."""
        ctx, pause = self.ctx, self.pause
        free = ctx.permits.wait_free(self._poll)
        if free <= 0 or ctx.stop.is_set():
            return False
        if pause is not None and pause.paused():  # again: the wait may have been long
            return self._paused(None)
        read = self._read(free)
        if read is None:
            return True
        batches, granted = read
        read_count = self._watch(batches)
        for band, entries in batches:
            start_entries(self._ctx(band), entries, None)
        self._settle(granted, read_count)
        return True

    def _paused(self, ahead: Link | None) -> bool:
        """While paused: hand back what waits in the buffer (a claimer takes it once the
        group is resumed), then wait a little; True if it talked to Redis."""
        ctx = self.ctx
        handed = 0
        if ahead is not None and ahead.hand_back_stalled and ctx.permits.buffered:
            handed = self._hand_back_buffer(ahead)
            if handed:
                logger.info(
                    "handed back %d messages read ahead on %s/%s: the group is paused",
                    handed,
                    ctx.stream,
                    ctx.group,
                )
        ctx.stop.wait(CHECK_EVERY)
        return bool(handed)

    def _paused_meanwhile(self, batches: Batches) -> bool:
        """If the group was paused while the read blocked, hand its entries back
        unstarted, as first deliveries (a claimer runs them once it is resumed)."""
        if self.pause is None or not self.pause.paused():
            return False
        ctx = self.ctx
        handed = 0
        for band, entries in batches:
            ids = [msg_id for msg_id, fields in entries if fields is not None]
            stream = self._ctx(band).stream
            handed += claim_back(ctx.redis, stream, ctx.group, ctx.consumer, {0: ids})
        logger.info(
            "handed back %d messages read on %s/%s as it was paused", handed, ctx.stream, ctx.group
        )
        return True

    def _read(
        self, count: int, asks: list[tuple[Link, Asking]] | None = None
    ) -> tuple[Batches, int] | None:
        """Read up to ``count`` new entries: (batches, rate tokens taken for them).

        Without a rate limit: one blocking XREADGROUP. With one: first the
        tokens, then a read of at most that many that does not block (tokens
        are never held through a wait); None if no token was free (the gate
        waited already). Once a priority band exists, one script reads the
        bands, highest first, and an idle read blocks on all of them. Lease calls
        in ``asks`` go first in the read's round trip (which then does not block);
        their tasks start or wait first.
        """
        ctx = self.ctx
        gate = ctx.rate
        bands = self.bands
        self._after = None
        if bands is not None and not bands.watch.existing():
            bands = None
        granted = 0
        if gate is not None:
            granted, wait = gate.take(count)
            if not granted:
                if asks:
                    self._send_asks(asks)
                ctx.stop.wait(min(wait, self._poll))
                return None
            count = granted
        if bands is not None:
            if asks:  # the band script goes alone
                self._send_asks(asks)
            batches = self._read_bands(bands, count)
            if not batches and gate is None:
                self._wait_new()
            return batches, granted
        if asks:
            reply = self._send_asks(asks, xreadgroup_args(ctx, count))
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
            return [(BASE, parse_xreadgroup(reply))], granted
        block = self.block_ms if gate is None else None
        return [(BASE, xreadgroup(ctx, count, block_ms=block))], granted

    def _send_asks(self, asks: list[tuple[Link, Asking]], then: list[object] | None = None) -> Any:
        """Send the lease calls of ``asks`` (and ``then``, whose reply is returned) in one
        round trip, then start their tasks that got a lease (see send_lease_calls)."""
        granted, reply = send_lease_calls(self.ctx.redis, asks, _gate_end, then)
        for ahead, items in granted:
            self._admit(ahead, items)
        return reply

    def _read_bands(self, bands: Bands, count: int) -> Batches:
        """One script read of the bands; a band found without the group gets it."""
        ctx = self.ctx
        read = bands.reads.read(ctx.redis, count)
        for band in read.missing:
            if band == BASE:  # the loop recreates it (and says the group was lost)
                raise redis.exceptions.ResponseError(f"NOGROUP no group {ctx.group}")
            ensure_group(ctx.redis, bands.reads.keys[band], ctx.group)
        self._after = [] if read.missing else read.after  # []: read again at once
        return read.batches

    def _wait_new(self) -> None:
        """Block until something new can be read (or for the block time)."""
        bands, after = self.bands, self._after
        if bands is None or after is None:
            wait_for_new(self.ctx, self.block_ms)
        else:
            bands.reads.wait(self.ctx.redis, after, self.block_ms)

    def _settle(self, granted: int, read: int) -> None:
        """After a rate-limited read (its entries handed on): give back the tokens it did
        not use; when it found nothing, wait for new entries without taking any."""
        gate = self.ctx.rate
        if gate is None:
            return
        gate.give_back(granted - read)
        if not read:
            self._wait_new()

    def _watch(self, batches: Batches) -> int:
        """Note how far this run has read; when idle, look for a group made anew.
        Returns how many entries were read."""
        count = sum(len(entries) for _, entries in batches)
        loss = self.loss
        if loss is None:
            return count
        base = [entries for band, entries in batches if band == BASE and entries]
        if base:
            loss.read(base[-1][-1][0])
        elif not count:
            loss.check_idle(self.ctx.redis, self.ctx.stream, self.ctx.group)
        return count

    def _stalled(self, ahead: Link) -> bool:
        """If nothing started from the buffer for NUDGE seconds, start it on the free
        permits too; if for STALE seconds with none free, hand it back. True if it
        talked to Redis."""
        ctx, permits = self.ctx, self.ctx.permits
        now = time.monotonic()
        if permits.started != self._started:
            self._started, self._since = permits.started, now
            return False
        if now - self._since >= NUDGE and permits.start_spare():
            return False
        if now - self._since < STALE or not ahead.hand_back_stalled:
            return False
        self._since = now
        handed = self._hand_back_buffer(ahead)
        logger.info(
            "handed back %d messages read ahead on %s/%s: the jobs ahead of them are slow",
            handed,
            ctx.stream,
            ctx.group,
        )
        return True

    def _hand_back_buffer(self, ahead: Link) -> int:
        """Hand back this stream's messages waiting in the read-ahead buffer (their
        per-key leases freed first); how many were handed back."""
        ctx = self.ctx
        handed = 0
        lanes = range(len(self.bands.ctxs)) if self.bands else [BASE]
        for band in lanes:
            stream = self._ctx(band).stream
            items = ctx.permits.take_buffer(_of_stream(stream))
            link = self._link(band) or ahead
            if link.handed_back is not None:  # they will not start here: free their keys
                link.handed_back(items)
            if items:
                handed += hand_back(ctx.redis, stream, ctx.group, ctx.consumer, items)
        return handed

    def read_backlog(self, count: int) -> int:
        """Start up to ``count`` entries of the backlog without blocking; 0 once it is empty.

        With a rate limit it takes tokens first; while none is free it waits a
        moment (``PERMIT_POLL`` at most) and returns -1: not empty, call again.
        """
        ctx = self.ctx
        gate = ctx.rate
        granted = count
        if gate is not None:
            granted, wait = gate.take(count)
            if not granted:
                ctx.stop.wait(min(wait, PERMIT_POLL))
                return -1
        started = self._read_backlog(granted)
        if gate is not None:
            gate.give_back(granted - started)
        return started

    def _read_backlog(self, count: int) -> int:
        if self._own_after is not None:
            entries, deliveries = read_own_pending(self.ctx, count, self._own_after)
            if entries:
                self._own_after = entries[-1][0]
                return start_entries(self.ctx, entries, deliveries)
            self._own_after = None
        entries = xreadgroup(self.ctx, count)
        return start_entries(self.ctx, entries, None)


def _gate_end(ahead: Link, asking: Asking, reply: Any) -> list[Any]:
    end = ahead.gate_end
    assert end is not None, "lease calls come only from links with a key gate"
    return end(asking, reply)


def _of_stream(stream: str) -> Callable[[object], bool]:
    """Whether a buffered item is a message of ``stream``."""
    return lambda item: item_id(item)[0] == stream


def read_own_pending(
    ctx: StreamContext, count: int, after: str
) -> tuple[list[Entry], dict[str, int]]:
    """This consumer's pending entries after ``after``, with their delivery counts.

    Reading history (XREADGROUP with an id) counts as a delivery, so the
    counts are read from XPENDING after the read and include this one.
    """
    entries = xreadgroup(ctx, count, after)
    if not entries:
        return [], {}
    pending = parse_xpending_range(
        ctx.redis.call(
            "XPENDING",
            ctx.stream,
            ctx.group,
            entries[0][0],
            entries[-1][0],
            len(entries),
            ctx.consumer,
        )
    )
    return entries, {msg_id: info[2] for msg_id, info in pending.items()}
