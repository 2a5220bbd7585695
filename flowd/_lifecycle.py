"""Process lifecycle of running queues: stop them at interpreter exit, forget them after fork.

Interpreter exit: ``threading._shutdown`` joins every non-daemon thread *before*
``atexit`` handlers run, so an ``atexit.register(handle.stop)`` alone would never
be reached while flowd's threads run. A hook registered with
``threading._register_atexit`` (as concurrent.futures registers its own) runs
first: it stops every queue still running, each within its ``stop_timeout``.

Fork: a child process has none of its parent's threads. Handles inherited by a
child (gunicorn ``--preload``, uWSGI without lazy-apps, multiprocessing's fork)
are marked stopped there, so nothing in the child waits for them or stops them
in the parent's name, and a WARNING says where queues should be started.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    """What this module needs of a QueueHandle."""

    def stop(self, timeout: float | None = None) -> bool: ...

    def forget_after_fork(self) -> str: ...


#: Running handles -> the stop timeout (seconds) to use at interpreter exit.
_running: dict[Stoppable, float | None] = {}
_lock = threading.Lock()
_exit_hook_registered = False


def started(handle: Stoppable, stop_timeout: float | None) -> None:
    """Remember a handle that runs, so that interpreter exit stops it."""
    global _exit_hook_registered
    with _lock:
        _running[handle] = stop_timeout
        if not _exit_hook_registered:
            try:
                threading._register_atexit(_stop_all_at_exit)  # type: ignore[attr-defined]
            except RuntimeError:  # interpreter already shutting down: atexit is all we have
                import atexit

                atexit.register(_stop_all_at_exit)
            _exit_hook_registered = True


def stopped(handle: Stoppable) -> None:
    """Forget a handle whose stop has finished."""
    with _lock:
        _running.pop(handle, None)


def _stop_all_at_exit() -> None:
    with _lock:
        handles = list(_running.items())
    if not handles:
        return
    logger.info("interpreter exiting: stopping %d running queue(s)", len(handles))
    # Stop them side by side, so N queues take one stop timeout, not N.
    stoppers = [
        threading.Thread(target=handle.stop, args=(timeout,), name="flowd-exit-stop", daemon=True)
        for handle, timeout in handles
    ]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()


def _after_fork_in_child() -> None:
    global _lock
    # The parent's lock may have been held by another thread at fork time.
    _lock = threading.Lock()
    handles = list(_running)
    _running.clear()
    if not handles:
        return
    names = ", ".join(handle.forget_after_fork() for handle in handles)
    logger.warning(
        "process %d was forked from %d while queue(s) %s were running: they keep running "
        "in the parent only, not in this process. Start queues after fork: in gunicorn's "
        "post_fork hook, with uWSGI's @postfork decorator, or in the app factory without "
        "--preload",
        os.getpid(),
        os.getppid(),
        names,
    )


os.register_at_fork(after_in_child=_after_fork_in_child)
