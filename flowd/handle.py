"""QueueHandle: the face of a running queue (its engine does the work)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from ._consumer.engine import Engine
from ._consumer.pool import QueueStats
from ._redis.timeutil import stop_timeout

__all__ = ["QueueHandle", "QueueStats"]


class QueueHandle:
    """A running queue, returned by ``Queue.run()``.

    Thread-safe. ``stop`` may be called from any thread, more than once, and
    from a signal handler. Used as a context manager, it stops on exit::

        with queue.run() as handle:
            ...
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __repr__(self) -> str:
        s = self._engine.settings
        return f"<QueueHandle stream={s.name!r} group={s.group!r} {self._engine.state.value}>"

    @property
    def is_running(self) -> bool:
        """True until stop() begins or a fatal error ends the queue."""
        return self._engine.is_running

    @property
    def consumer(self) -> str:
        """This queue's consumer name in the group."""
        return self._engine.settings.consumer

    def stats(self) -> QueueStats:
        """A snapshot of this run's counters."""
        return self._engine.stats()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the queue has stopped (by ``stop()`` elsewhere or a fatal error).

        Returns True once stopped, False if ``timeout`` seconds passed first.
        """
        return self._engine.join(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading, let running jobs finish, flush acks and join every thread.

        Reading stops at once (a blocked XREADGROUP is interrupted with
        CLIENT UNBLOCK). Jobs already running finish and are acked; messages
        not started stay pending in Redis for the claimer. One deadline of
        ``timeout`` seconds (None: no limit) covers every step.

        Called from inside one of this queue's jobs, it cannot wait for that
        job: it stops reading, leaves the rest to a ``flowd-stopper`` thread
        and returns False at once; ``join()`` waits for the end.

        :returns: True if everything finished within the timeout. Otherwise
            False, after a WARNING naming the jobs still running; no thread
            reads any more, and the unfinished messages stay pending.
        """
        return self._engine.stop(stop_timeout(timeout))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
