"""Time limits: raise TimeLimitExceeded in a job's thread once it runs too long.

As Dramatiq's time limit does, a watcher thread (``flowd-timelimit-<stream>``)
raises the exception asynchronously with ``PyThreadState_SetAsyncExc``. The
interpreter delivers it at the next bytecode boundary of that thread: a job
blocked in C code (a socket read, ``time.sleep``, a C extension) sees it only
when it returns to Python; meanwhile a WARNING names it, and its message
stays leased like any running job's.

The exception must never land outside the job (in flowd's own code, or in
the next job of the thread), and a job thread must never hold a lock when it
can arrive: an asynchronous exception between a lock's acquire and the
``try`` that releases it leaves the lock held forever. So job threads take no
lock here. Each job has a token; :meth:`TimeLimiter.exit` first marks it
inactive, then waits while the watcher is between its "still active?" check
and the raise, then cancels an exception still pending. The watcher raises
only at an active token. An exception raised in time is therefore delivered
in the job or in ``exit()``, both inside the worker's ``try``, or cancelled.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
import time
from typing import Any

from ..errors import ConfigurationError, TimeLimitExceeded
from ..task import Task

logger = logging.getLogger(__name__)

#: How long after the exception was raised a job still running is reported as stuck in C code.
STUCK_AFTER = 0.25


def check_supported() -> None:
    """Time limits need CPython's PyThreadState_SetAsyncExc.

    :raises ConfigurationError: on another interpreter.
    """
    if platform.python_implementation() != "CPython":
        raise ConfigurationError(
            f"time_limit needs CPython; this is {platform.python_implementation()}"
        )


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> int:
    """Make (or, with None, cancel) a pending exception in thread ``ident``."""
    return int(
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
        )
    )


class _Job:
    """One run of a job under the limit: the token that says the thread is in this job."""

    __slots__ = ("active", "deadline", "fired_at", "ident", "task", "warned")

    def __init__(self, ident: int, task: Task[Any], deadline: float) -> None:
        self.ident = ident
        self.task = task
        self.deadline = deadline
        self.active = True  # cleared by exit(): no raise after that
        self.fired_at: float | None = None
        self.warned = False


class TimeLimiter:
    """Watches the jobs of one run; :meth:`enter` and :meth:`exit` bracket each job call.

    :param limit: seconds a job may run.
    :param name: the watcher thread is ``flowd-timelimit-<name>``.
    """

    def __init__(self, limit: float, name: str) -> None:
        self.limit = limit
        self._jobs: dict[int, _Job] = {}  # thread ident -> the job it runs now
        #: The job the watcher is deciding about now (between its check and its raise).
        self._firing: _Job | None = None
        self._closed = threading.Event()
        self.thread = threading.Thread(
            name=f"flowd-timelimit-{name}", target=self._watch, daemon=True
        )
        self.thread.start()

    def enter(self, task: Task[Any]) -> _Job:
        """The calling thread starts ``task``'s job now."""
        ident = threading.get_ident()
        job = _Job(ident, task, time.monotonic() + self.limit)
        # A plain dict store (atomic under the GIL) and no wake-up: a new job's
        # deadline is never before the watcher's next look (it sleeps at most
        # one limit), so no thread switch per job.
        self._jobs[ident] = job
        return job

    def exit(self, job: _Job) -> None:
        """The job has returned or raised (called in its thread; idempotent).

        May itself raise the job's TimeLimitExceeded, if it was raised just as
        the job returned: the caller treats that as the job's failure.
        """
        job.active = False
        if self._jobs.get(job.ident) is job:
            self._jobs.pop(job.ident, None)
        while self._firing is job:
            time.sleep(0)  # the watcher is about to raise (or not): let it finish
        if job.fired_at is not None:
            # Raised, maybe not delivered yet: cancel it, so it cannot surface
            # later in flowd's code or in the next job of this thread.
            _set_async_exc(job.ident, None)

    def exit_current(self) -> None:
        """exit() for the calling thread's job, if one is still registered."""
        job = self._jobs.get(threading.get_ident())
        if job is not None:
            self.exit(job)

    def close(self) -> None:
        """Stop the watcher thread (jobs still running are no longer limited)."""
        self._closed.set()
        if self.thread is not threading.current_thread():
            self.thread.join()

    def _watch(self) -> None:
        while True:
            now = time.monotonic()
            wake = now + self.limit
            for job in list(self._jobs.values()):
                if job.fired_at is None:
                    if now >= job.deadline:
                        self._fire(job, now)
                        wake = min(wake, now + STUCK_AFTER)
                    else:
                        wake = min(wake, job.deadline)
                elif not job.warned and job.active:
                    if now >= job.fired_at + STUCK_AFTER:
                        self._warn_stuck(job, now)
                    else:
                        wake = min(wake, job.fired_at + STUCK_AFTER)
            if self._closed.wait(max(0.0, wake - time.monotonic())):
                return

    def _fire(self, job: _Job, now: float) -> None:
        """Raise TimeLimitExceeded in the job's thread if it is still in the job."""
        self._firing = job
        try:
            if not job.active:
                return
            job.fired_at = now
            if _set_async_exc(job.ident, TimeLimitExceeded) != 1:
                logger.error(
                    "could not raise TimeLimitExceeded in the thread of job %s", job.task.id
                )
                return
        finally:
            self._firing = None
        logger.warning(
            "job %s on %s ran past its time limit of %gs; raised TimeLimitExceeded in it",
            job.task.id,
            job.task.stream,
            self.limit,
        )

    def _warn_stuck(self, job: _Job, now: float) -> None:
        job.warned = True
        frame = sys._current_frames().get(job.ident)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "unknown"
        logger.warning(
            "job %s on %s is still running %.1fs past its time limit of %gs: it is probably "
            "blocked outside Python (C code, I/O or a sleep; last Python line %s) and is "
            "interrupted when it returns to Python; its message stays leased meanwhile",
            job.task.id,
            job.task.stream,
            now - job.deadline,
            self.limit,
            where,
        )
