"""QueueHandle: the running queue's threads, its stop and its counters."""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

from . import _lifecycle
from ._redis import Session
from ._runtime import QueueStats
from ._timeutil import remaining, stop_timeout

if TYPE_CHECKING:
    from ._runtime import Runtime, WorkerPool
    from ._threads import LoopThread

__all__ = ["QueueHandle", "QueueStats"]

logger = logging.getLogger(__name__)

#: How often stop() repeats CLIENT UNBLOCK while the reader has not returned yet.
_UNBLOCK_EVERY = 0.05


@dataclass(frozen=True, slots=True)
class StreamThreads:
    """The threads of one stream of a running queue."""

    runtime: Runtime
    reader: LoopThread
    reader_session: Session
    background: list[LoopThread]  # claimer, housekeeping: they end with the reader
    lease: LoopThread | None

    def threads(self) -> list[threading.Thread]:
        out: list[threading.Thread] = [self.reader, self.runtime.acker.thread, *self.background]
        return out if self.lease is None else [*out, self.lease]


class _State(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class QueueHandle:
    """A running queue, returned by ``Queue.run()``.

    Thread-safe. ``stop`` may be called from any thread, more than once, and
    from a signal handler. Used as a context manager, it stops on exit::

        with queue.run() as handle:
            ...
    """

    def __init__(self, pool: WorkerPool, parts: list[StreamThreads]) -> None:
        self._pool = pool
        self._parts = parts
        self._state = _State.RUNNING
        self._state_lock = threading.Lock()
        self._stopper: threading.Thread | None = None
        self._done = threading.Event()
        self._clean = False
        _lifecycle.started(self, pool.queue.stop_timeout)

    def __repr__(self) -> str:
        return (
            f"<QueueHandle stream={self._pool.queue.stream!r} group={self._pool.queue.group!r} "
            f"{self._state.value}>"
        )

    @property
    def is_running(self) -> bool:
        """True until stop() begins or a fatal error ends the queue."""
        return self._state is _State.RUNNING and not self._pool.stop_event.is_set()

    @property
    def consumer(self) -> str:
        """This queue's consumer name in the group."""
        return self._pool.queue.consumer

    def stats(self) -> QueueStats:
        """A snapshot of this run's counters."""
        return self._pool.stats()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the queue has stopped (by ``stop()`` elsewhere or a fatal error).

        Returns True once stopped, False if ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._pool.stop_event.wait(timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self._state is _State.RUNNING:
            # Ended by a fatal error, not by stop(): wind the rest down.
            return self.stop(remaining) or not self.is_running
        return self._done.wait(remaining)

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
        timeout = stop_timeout(timeout)
        current = threading.current_thread()
        if self._pool.is_worker_thread(current):
            self._stop_in_background(timeout)
            return False
        with self._state_lock:
            first = self._stopper is None
            if first:
                self._stopper = current
                self._state = _State.STOPPING
        if not first:
            self._pool.stop_event.set()
            if self._done.is_set():
                return self._clean
            if self._stopper is current:
                return False  # re-entered (a signal handler during stop): the outer call finishes
            return self._done.wait(timeout) and self._clean
        return self._perform_stop(timeout)

    def _perform_stop(self, timeout: float | None) -> bool:
        try:
            self._clean = self._stop(timeout)
        except BaseException:
            # Whatever failed, nothing may keep running: end every loop, then re-raise.
            self._pool.stop_event.set()
            self._pool.lease_stop.set()
            for part in self._parts:
                part.runtime.acker.close(time.monotonic())
            self._pool.shutdown(wait=False)
            raise
        finally:
            self._state = _State.STOPPED
            self._done.set()
            _lifecycle.stopped(self)
        return self._clean

    def forget_after_fork(self) -> str:
        """In a forked child: this queue's threads are the parent's; mark it stopped here."""
        self._state_lock = threading.Lock()  # may have been held by a parent thread at fork
        self._state = _State.STOPPED
        self._stopper = threading.current_thread()
        self._clean = True
        self._done = threading.Event()
        self._done.set()
        self._pool.forget_after_fork()
        return f"{self._pool.queue.stream}/{self._pool.queue.group}"

    def _stop_in_background(self, timeout: float | None) -> None:
        self._pool.stop_event.set()
        with self._state_lock:
            if self._stopper is not None:
                return
            self._state = _State.STOPPING
            self._stopper = threading.Thread(
                name=f"flowd-stopper-{self._pool.queue.stream}",
                target=self._perform_stop,
                args=(timeout,),
            )
            self._stopper.start()

    def _stop(self, timeout: float | None) -> bool:
        pool, parts = self._pool, self._parts
        queue = pool.queue
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        pool.deadline = deadline
        pool.stop_event.set()
        pool.permits.wake()
        for part in parts:
            self._interrupt_reader(part, deadline)
        for part in parts:
            for thread in part.background:
                thread.join(remaining(deadline))
        finished = pool.permits.wait_all_free(remaining(deadline))
        leases = [part.lease for part in parts if part.lease is not None]
        pool.finish(leases, deadline, finished=finished, ack_deadline=deadline)
        alive = [t.name for part in parts for t in part.threads() if t.is_alive()]
        unwritten = sum(part.runtime.acker.unwritten for part in parts)
        clean = finished and not alive and unwritten == 0
        stats = pool.stats()
        if not clean:
            logger.warning(
                "queue %s/%s did not stop cleanly within %ss: still running: %s; live "
                "threads: %s; unfinished messages stay pending",
                queue.stream,
                queue.group,
                timeout,
                pool.running_report() or "none",
                ", ".join(alive) or "none",
            )
        logger.info(
            "queue %s/%s stopped (consumer %s): processed=%d failed=%d retried=%d "
            "dead_lettered=%d deleted=%d",
            queue.stream,
            queue.group,
            queue.consumer,
            stats.processed,
            stats.failed,
            stats.retried,
            stats.dead_lettered,
            stats.deleted,
        )
        return clean

    def _interrupt_reader(self, part: StreamThreads, deadline: float | None) -> None:
        """End a blocked XREADGROUP now instead of after its block time."""
        reader = part.reader
        # No client retries (a stop must not stall), and the reader's own node on a cluster.
        session = Session(
            part.runtime.client, part.runtime.stream, address=part.reader_session.address
        )
        try:
            while reader.is_alive():
                client_id = part.reader_session.client_id
                if client_id is not None:
                    try:
                        session.call("CLIENT", "UNBLOCK", client_id)
                    except Exception as exc:
                        logger.debug(
                            "CLIENT UNBLOCK failed (%s); the read ends at its block time", exc
                        )
                reader.join(min(_UNBLOCK_EVERY, remaining(deadline) or _UNBLOCK_EVERY))
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
