"""Time limits: raise TimeLimitExceeded in a job's thread once it runs too long.

As Dramatiq's time limit does, a watcher thread (``flowd-timelimit-<stream>``)
raises the exception asynchronously with ``PyThreadState_SetAsyncExc``. The
interpreter delivers it at the next bytecode boundary of that thread: a job
blocked in C code (a socket read, ``time.sleep``, a C extension) sees it only
when it returns to Python; meanwhile a WARNING names it, and its message
stays leased like any running job's.

The exception must never land outside the job (in flowd's own code, or in
the next job of the thread). So each job registers a token for its thread,
the watcher fires only while that token is registered, checked under the
same lock the job takes to unregister, and a job that was fired at clears
any exception still pending once it has unregistered.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
import time
from typing import Any

from .errors import ConfigurationError, TimeLimitExceeded
from .task import Task

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

    __slots__ = ("deadline", "fired_at", "ident", "task", "warned")

    def __init__(self, ident: int, task: Task[Any], deadline: float) -> None:
        self.ident = ident
        self.task = task
        self.deadline = deadline
        self.fired_at: float | None = None
        self.warned = False


class TimeLimiter:
    """Watches the jobs of one run; :meth:`enter` and :meth:`exit` bracket each job call.

    :param limit: seconds a job may run.
    :param name: the watcher thread is ``flowd-timelimit-<name>``, started with
        the first job.
    """

    def __init__(self, limit: float, name: str) -> None:
        self.limit = limit
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._jobs: dict[int, _Job] = {}  # thread ident -> the job it runs now
        self._closed = False
        self._thread: threading.Thread | None = None

    def enter(self, task: Task[Any]) -> _Job:
        """The calling thread starts ``task``'s job now."""
        ident = threading.get_ident()
        job = _Job(ident, task, time.monotonic() + self.limit)
        with self._cond:
            # No notify: a new job's deadline is never before the watcher's next
            # wake-up (it sleeps at most one limit when idle), so no thread switch.
            self._jobs[ident] = job
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    name=f"flowd-timelimit-{self.name}", target=self._watch, daemon=True
                )
                self._thread.start()
        return job

    def exit(self, job: _Job) -> None:
        """The job of ``job`` has returned or raised (called in its own thread)."""
        with self._cond:
            if self._jobs.get(job.ident) is job:
                del self._jobs[job.ident]
            fired = job.fired_at is not None
        if fired:
            # Raised, but maybe not yet delivered (the job returned first): cancel it,
            # so it cannot surface later in flowd's code or in the next job.
            _set_async_exc(job.ident, None)

    def close(self) -> None:
        """Stop the watcher thread (jobs still running are no longer limited)."""
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                wake = now + self.limit
                for job in list(self._jobs.values()):
                    if job.fired_at is None:
                        if now >= job.deadline:
                            self._fire(job, now)
                            wake = min(wake, now + STUCK_AFTER)
                        else:
                            wake = min(wake, job.deadline)
                    elif not job.warned:
                        if now >= job.fired_at + STUCK_AFTER:
                            self._warn_stuck(job, now)
                        else:
                            wake = min(wake, job.fired_at + STUCK_AFTER)
                self._cond.wait(max(0.0, wake - now))

    def _fire(self, job: _Job, now: float) -> None:
        """Raise in the job's thread (lock held: the job cannot unregister meanwhile)."""
        job.fired_at = now
        logger.warning(
            "job %s on %s ran past its time limit of %gs; raising TimeLimitExceeded in it",
            job.task.id,
            job.task.stream,
            self.limit,
        )
        if _set_async_exc(job.ident, TimeLimitExceeded) != 1:
            logger.error("could not raise TimeLimitExceeded in the thread of job %s", job.task.id)

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
