"""Claimer: the settings of the loop that reclaims stuck messages (run by _consumer/claim.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._redis.keys import dead_letter_stream
from ._redis.timeutil import Seconds, to_seconds
from .backoff import Backoff
from .errors import ConfigurationError
from .task import Task

__all__ = ["Claimer", "DeadLetterWorker"]

#: Called with each dead message; ``task.job`` is None when it could not be decoded.
DeadLetterWorker = Callable[[Task[Any]], None]


# Below these a queue harms itself: see the errors raised in Claimer.__init__.
MIN_IDLE_TIME_FLOOR = 0.1
MIN_INTERVAL = 0.01
MAX_BATCH = 10_000


class Claimer:
    """Settings of a queue's claimer thread.

    Every ``interval`` seconds the claimer runs XAUTOCLAIM for messages that
    have been pending longer than ``min_idle_time`` (their consumer died, or
    their job failed) and runs them again through the queue's own permits and
    executor, so ``concurrency`` still holds. A failed job is therefore
    retried after about ``min_idle_time``; with a ``backoff``, after the
    backoff's delay instead (shorter or longer).

    :param min_idle_time: seconds (or a timedelta) a message must be idle before
        it is reclaimed. While a job runs, its message is kept fresh (a lease),
        so a live long job is never reclaimed, however long it runs. At least 0.1 s.
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
    :param interval: seconds between sweeps (at least 0.01); defaults to a
        quarter of ``min_idle_time``, at most 5 s.
    :param batch: most messages claimed per XAUTOCLAIM call (1 to 10,000).
    :param backoff: a :class:`Backoff`: after the n-th failed run the next one
        starts after its n-th delay. A delay shorter than ``min_idle_time``
        keeps the message pending until then; a longer one moves it to the
        stream's scheduled set. None (the default): after ``min_idle_time``.
    """

    __slots__ = (
        "backoff",
        "batch",
        "dlq_stream",
        "dlq_worker",
        "interval",
        "max_retries",
        "min_idle_time",
    )

    def __init__(
        self,
        min_idle_time: Seconds = 30.0,
        max_retries: int = 3,
        dlq_worker: DeadLetterWorker | None = None,
        dlq_stream: bool | str = True,
        interval: Seconds | None = None,
        batch: int = 100,
        backoff: Backoff | None = None,
    ) -> None:
        self.min_idle_time = to_seconds(min_idle_time, "min_idle_time")
        if self.min_idle_time < MIN_IDLE_TIME_FLOOR:
            raise ConfigurationError(
                f"min_idle_time must be at least {MIN_IDLE_TIME_FLOOR} s, not {min_idle_time!r}: "
                "a running job's message is renewed every min_idle_time/3, and a shorter "
                "time lets a renewal come late under load, so another consumer claims and "
                "runs the job while it still runs"
            )
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
        if self.interval < MIN_INTERVAL:
            raise ConfigurationError(
                f"interval must be at least {MIN_INTERVAL} s, not {interval!r}: each sweep "
                "is a round trip to Redis, and an idle queue would flood it"
            )
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise ConfigurationError(f"batch must be an int from 1 to {MAX_BATCH}, not {batch!r}")
        self.batch = batch
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigurationError(f"backoff must be a flowd.Backoff or None, not {backoff!r}")
        self.backoff = backoff

    def __repr__(self) -> str:
        return (
            f"Claimer(min_idle_time={self.min_idle_time}, max_retries={self.max_retries}, "
            f"dlq_stream={self.dlq_stream!r}, interval={self.interval}, batch={self.batch}, "
            f"backoff={self.backoff!r})"
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
        return self.min_idle_time / 3
