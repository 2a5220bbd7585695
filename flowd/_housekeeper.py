"""The housekeeping loop of one stream (its settings are :class:`flowd.Housekeeping`)."""

from __future__ import annotations

import logging
import random

from ._context import StreamContext
from ._keys import derived_key
from ._timeutil import to_ms
from .housekeeping import REMOVE_IDLE, TRIM, Housekeeping, names, trim_mode, trim_result

logger = logging.getLogger(__name__)


class HousekeepingLoop:
    """Trims the stream and removes idle consumers, once per interval for the whole stream.

    Every consumer tries each ``interval``; a ``SET NX PX`` lease in Redis lets
    only one of them do the work.
    """

    def __init__(self, ctx: StreamContext, settings: Housekeeping) -> None:
        self.ctx = ctx
        self.settings = settings
        self.lease_key = derived_key(ctx.stream, "housekeeping")
        self._first = True

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
        if session.call("SET", self.lease_key, ctx.consumer, "NX", "PX", lease_ms) is None:
            return False
        if settings.trim:
            result = trim_result(session.run_script(TRIM, [ctx.stream], [trim_mode(False)]))
            if result.removed:
                logger.debug(
                    "trimmed %d consumed entries of %s below %s",
                    result.removed,
                    ctx.stream,
                    result.min_id,
                )
        if settings.consumer_ttl is not None:
            idle_ms = to_ms(settings.consumer_ttl)
            removed = names(
                session.run_script(REMOVE_IDLE, [ctx.stream], [ctx.group, idle_ms, ctx.consumer])
            )
            if removed:
                logger.info(
                    "removed %d idle consumers of %s/%s: %s",
                    len(removed),
                    ctx.stream,
                    ctx.group,
                    ", ".join(removed),
                )
        return True
