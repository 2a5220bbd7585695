"""Claimer: the settings of the loop that reclaims stuck messages (flowd._claim runs it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._keys import dead_letter_stream
from ._timeutil import Seconds, to_seconds
from .errors import ConfigurationError
from .task import Task

__all__ = ["Claimer", "DeadLetterWorker"]

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
