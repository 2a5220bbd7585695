"""The housekeeping loop of one stream (its settings are :class:`flowd.Housekeeping`)."""

from __future__ import annotations

import logging
import random

import redis.exceptions

from .._redis.keys import derived_key
from .._redis.session import is_oom
from .._redis.timeutil import to_ms
from ..housekeeping import (
    DELETE_CONSUMED,
    REMOVE_IDLE,
    TRIM,
    Housekeeping,
    names,
    trim_mode,
    trim_result,
)
from .context import StreamContext

logger = logging.getLogger(__name__)

#: Out of memory, one housekeeping run scans at most this many entries, in batches.
_DELETE_BATCH = 1000
_DELETE_CALLS = 100


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class HousekeepingLoop:
    """Trims the stream and removes idle consumers, once per interval for the whole stream.

    Every consumer tries each ``interval``; a ``SET NX PX`` lease in Redis lets
    only one of them do the work, except out of memory, when every one trims.
    """

    def __init__(self, ctx: StreamContext, settings: Housekeeping) -> None:
        self.ctx = ctx
        self.settings = settings
        self.lease_key = derived_key(ctx.stream, "housekeeping")
        self._first = True
        self._out_of_memory = False

    def step(self) -> bool:
        wait = self.settings.interval
        if self._first:  # spread consumers that start together
            wait *= random.random()
            self._first = False
        if self.ctx.stop.wait(wait):
            return False
        self.run_once()
        return True  # it talked to Redis, whether or not it won the lease

    def run_once(self) -> bool:
        """Do the work if no other consumer did in this interval; True if it did."""
        ctx, settings = self.ctx, self.settings
        session = ctx.redis
        lease_ms = to_ms(settings.interval)
        try:
            if session.call("SET", self.lease_key, ctx.consumer, "NX", "PX", lease_ms) is None:
                return False
        except redis.exceptions.ResponseError as exc:
            if not is_oom(exc):
                raise
            # Out of memory the lease cannot be written, and trimming is what frees
            # memory: trim without it (XTRIM and XGROUP DELCONSUMER are safe to repeat,
            # and neither needs memory, so Redis runs them even now).
            if not self._out_of_memory:
                logger.warning(
                    "Redis is out of memory (over maxmemory): housekeeping of %s trims "
                    "without its lease until it can write one again",
                    ctx.stream,
                )
            self._out_of_memory = True
        else:
            self._out_of_memory = False
        if settings.trim:
            result = trim_result(TRIM(session, [ctx.stream], [trim_mode(False)]))
            if self._out_of_memory:
                self._delete_consumed()
            if result.removed:
                logger.debug(
                    "trimmed %d consumed entries of %s below %s",
                    result.removed,
                    ctx.stream,
                    result.min_id,
                )
        if settings.consumer_ttl is not None:
            idle_ms = to_ms(settings.consumer_ttl)
            removed = names(REMOVE_IDLE(session, [ctx.stream], [ctx.group, idle_ms, ctx.consumer]))
            if removed:
                logger.info(
                    "removed %d idle consumers of %s/%s: %s",
                    len(removed),
                    ctx.stream,
                    ctx.group,
                    ", ".join(removed),
                )
        return True

    def _delete_consumed(self) -> None:
        """Out of memory: delete consumed entries above the oldest pending one, so that
        what waits for memory (a dead-letter move) gets some and the trim can go on."""
        cursor, deleted = "-", 0
        for _ in range(_DELETE_CALLS):
            reply = DELETE_CONSUMED(self.ctx.redis, [self.ctx.stream], [cursor, _DELETE_BATCH])
            cursor, deleted = _text(reply[0]), deleted + int(reply[1])
            if not cursor or self.ctx.stop.is_set():
                break
        if deleted:
            logger.warning(
                "Redis is out of memory: deleted %d consumed entries of %s one by one",
                deleted,
                self.ctx.stream,
            )
