"""Retries, decided in one place: supervised loop threads (capped backoff, one log line
per outage, no silent death) and :func:`retry_transient` for one-off calls."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .._redis.session import is_nogroup, is_transient
from ..errors import RedisVersionError

logger = logging.getLogger(__name__)

INITIAL_BACKOFF = 0.05
MAX_BACKOFF = 2.0

T = TypeVar("T")


def retry_transient(call: Callable[[], T], attempts: int) -> T:
    """``call()``, tried up to ``attempts`` times while it fails with a passing error.

    For one-off calls outside the loops (the dead-letter move on a worker
    thread), with the loops' backoff; only calls that are safe to re-send.
    """
    delay = INITIAL_BACKOFF
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
        time.sleep(delay * (0.5 + random.random() / 2))
        delay = min(delay * 2, MAX_BACKOFF)
    raise AssertionError("unreachable")


class Backoff:
    """Capped exponential backoff with jitter that logs an outage once, and its end."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.delay = INITIAL_BACKOFF
        self.outage_since: float | None = None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; return how long to wait before the next try."""
        if is_transient(exc):
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                logger.warning(
                    "%s: Redis unavailable (%s: %s); retrying with backoff",
                    self.what,
                    type(exc).__name__,
                    exc,
                )
            else:
                logger.debug("%s: still unavailable: %s", self.what, exc)
        else:
            logger.error("%s: unexpected error; retrying", self.what, exc_info=exc)
        delay = self.delay * (0.5 + random.random() / 2)
        self.delay = min(self.delay * 2, MAX_BACKOFF)
        return delay

    def succeeded(self) -> None:
        if self.outage_since is not None:
            logger.warning(
                "%s: Redis reachable again after %.1fs",
                self.what,
                time.monotonic() - self.outage_since,
            )
            self.outage_since = None
        self.delay = INITIAL_BACKOFF


class LoopThread(threading.Thread):
    """Runs ``step`` until ``stop`` is set; every exception is logged and retried.

    A step returns False when it did not talk to Redis (nothing to do), so that
    it does not count as Redis being reachable again.

    NOGROUP (the group vanished, e.g. Redis lost its data) calls ``on_nogroup``
    to recreate it. RedisVersionError is fatal: it is logged, kept on
    ``self.fatal`` and reported through ``on_fatal``.
    """

    def __init__(
        self,
        name: str,
        what: str,
        step: Callable[[], bool | None],
        stop: threading.Event,
        *,
        on_nogroup: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        # Daemon: interpreter exit stops queues first (flowd._lifecycle); a thread stuck
        # on a stalled connection must not then keep the process alive.
        super().__init__(name=name, daemon=True)
        self.what = what
        self._step = step
        self._stop_event = stop
        self._on_nogroup = on_nogroup
        self._on_fatal = on_fatal
        self._on_exit = on_exit
        self.fatal: BaseException | None = None

    def run(self) -> None:
        backoff = Backoff(self.what)
        try:
            while not self._stop_event.is_set():
                try:
                    talked = self._step()
                except RedisVersionError as exc:
                    logger.error("%s: %s; stopping", self.what, exc)
                    self.fatal = exc
                    if self._on_fatal is not None:
                        self._on_fatal(exc)
                    return
                except Exception as exc:
                    if is_nogroup(exc) and self._on_nogroup is not None:
                        # on_nogroup says whether data was lost (it knows if it recreated it).
                        logger.debug("%s: consumer group missing (%s)", self.what, exc)
                        try:
                            self._on_nogroup()
                            continue
                        except Exception as again:
                            exc = again
                    self._stop_event.wait(backoff.failed(exc))
                else:
                    if talked is not False:  # a step that skipped Redis proves nothing
                        backoff.succeeded()
        finally:
            if self._on_exit is not None:
                self._on_exit()
