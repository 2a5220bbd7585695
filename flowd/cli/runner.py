"""The foreground worker of ``flowd worker``, ``manage.py flowd_worker`` and
``flask flowd worker``: the one place that sets up logging for them, installs
signal handlers, supervises ``--processes`` children and decides exit statuses.
The three commands only parse their arguments (and settings) and call :func:`run`.

Exit status: 0 a clean stop; 1 an unclean stop or a failed command; 2 bad
usage, settings or ``MODULE:ATTR``; 3 Redis unreachable or refusing the
client's credentials.

Signals: SIGTERM or SIGINT asks for a graceful stop (running jobs get
``shutdown_timeout`` seconds); a SIGINT after that exits at once. A repeated
SIGTERM does not: a process manager (or a ``--processes`` supervisor) may send
it more than once while the first stop is under way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import redis.exceptions

from .._redis.connect import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    client_address,
    redis_failure,
    wait_for_redis,
)
from ..errors import CommandError, ConfigurationError
from ..handle import QueueHandle
from ..queue import Queue
from ..task import Task

__all__ = ["LOG_FORMAT", "LOG_LEVELS", "configure_logging", "exit_status", "run"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(level: str | None) -> None:
    """Log to stderr in flowd's format, unless the app already configured logging.

    The root logger gets a handler only if it has none (the ``flowd`` command's,
    Django's and Flask's defaults leave it without). ``level``, when given, is
    set on the ``flowd`` logger.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level or "INFO", format=LOG_FORMAT, stream=sys.stderr)
    if level is not None:
        logging.getLogger("flowd").setLevel(level)


def exit_status(exc: BaseException, where: str = "the server") -> CommandError | None:
    """The message and exit status of an error that ends a command (None: not ours)."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, ConfigurationError):
        return CommandError(str(exc), EXIT_USAGE)
    if isinstance(exc, redis.exceptions.RedisError):
        return redis_failure(exc, where)
    return None


class StopSignals:
    """SIGTERM/SIGINT ask for a graceful stop; a SIGINT after that exits at once."""

    def __init__(self, shutdown_timeout: float) -> None:
        self.requested = threading.Event()
        self.shutdown_timeout = shutdown_timeout
        self._received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Counted before any call: Python runs a second signal's handler inside
        # the first one (at its next call), so a flag set after logging would
        # let a quick second SIGINT be taken for the first.
        self._received += 1
        if self._received > 1:
            if signum == signal.SIGINT:
                os.write(2, b"flowd: second interrupt, exiting at once\n")
                os._exit(130)
            os.write(2, b"flowd: already stopping; SIGINT (Ctrl-C) exits at once\n")
            return
        hint = "interrupt again" if signum == signal.SIGINT else "send SIGINT (Ctrl-C)"
        logger.warning(
            "received %s: stopping gracefully, running jobs get up to %gs (%s to exit at once)",
            signal.Signals(signum).name,
            self.shutdown_timeout,
            hint,
        )
        self.requested.set()


def run(
    queues: Sequence[Queue[Any]],
    *,
    burst: bool = False,
    processes: int = 1,
    shutdown_timeout: float = 30.0,
    connect_timeout: float = 30.0,
    log_level: str | None = None,
    child_target: str | None = None,
    child_env: Mapping[str, str] | None = None,
) -> int:
    """Run queues in the foreground until a signal (or, with ``burst``, their backlogs end).

    With ``processes`` > 1 the work goes to that many ``flowd worker``
    children (one queue only), which load ``child_target`` (a ``MODULE:ATTR``)
    with ``child_env`` added to the environment; dead children are restarted.
    Must run in the main thread (it installs signal handlers).

    :returns: the exit status.
    :raises CommandError: with the exit status: bad option, unreachable Redis,
        unclean stop.
    """
    if not queues:
        raise CommandError("no queue to run: none is configured with a WORKER", EXIT_USAGE)
    if processes < 1:
        raise CommandError(f"--processes must be at least 1, not {processes}", EXIT_USAGE)
    if processes > 1:
        if len(queues) != 1 or child_target is None:
            raise CommandError(
                "--processes runs one queue: name it, or start one command per queue",
                EXIT_USAGE,
            )
        return supervise(
            child_target,
            processes,
            burst=burst,
            shutdown_timeout=shutdown_timeout,
            connect_timeout=connect_timeout,
            log_level=log_level,
            env=child_env,
        )
    started = time.monotonic()
    for queue in queues:
        where = client_address(queue.client)
        wait_for_redis(queue.client, where, connect_timeout, since=started)
        logger.info(
            "worker for %s/%s as consumer %s on %s",
            queue.stream,
            queue.group,
            queue.consumer,
            where,
        )
    return _run_here(queues, burst=burst, shutdown_timeout=shutdown_timeout)


def _run_here(queues: Sequence[Queue[Any]], *, burst: bool, shutdown_timeout: float) -> int:
    with StopSignals(shutdown_timeout) as signals:
        if burst:
            processed = 0
            for queue in queues:
                if signals.requested.is_set():
                    break
                processed += queue.drain(stop=signals.requested)
            logger.info("burst done: %d jobs processed", processed)
            return EXIT_OK
        handles: list[QueueHandle] = []
        ended: Queue[Any] | None = None
        try:
            for queue in queues:
                handles.append(queue.run())
            while ended is None and not signals.requested.wait(0.5):
                ended = next(
                    (q for q, h in zip(queues, handles, strict=False) if not h.is_running), None
                )
        finally:
            clean = _stop_all(handles, shutdown_timeout)
    if ended is not None:
        raise CommandError(
            f"queue {ended.stream}/{ended.group} ended on its own (see the errors above)"
        )
    if not clean:
        jobs = running_jobs()
        which = f"{len(jobs)} job(s) still running" if jobs else "jobs still running"
        raise CommandError(
            f"unclean stop: {which} after {shutdown_timeout:g}s, left pending for the "
            f"claimer{': ' + ', '.join(jobs) if jobs else ''}"
        )
    return EXIT_OK


def _stop_all(handles: Sequence[QueueHandle], timeout: float) -> bool:
    """Stop the handles together (all stop reading at once), sharing one timeout."""
    if len(handles) <= 1:
        return all(handle.stop(timeout=timeout) for handle in handles)
    results = [False] * len(handles)

    def stop(index: int) -> None:
        results[index] = handles[index].stop(timeout=timeout)

    threads = [
        threading.Thread(target=stop, args=(i,), name=f"flowd-stop-{handles[i].consumer}")
        for i in range(len(handles))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return all(results)


def supervise(
    target: str,
    processes: int,
    *,
    burst: bool,
    shutdown_timeout: float,
    connect_timeout: float,
    log_level: str | None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``processes`` ``flowd worker TARGET`` children; see :mod:`flowd.cli.supervisor`."""
    from .supervisor import supervise as supervise_children

    os.environ.update(env or {})
    os.environ["PYTHONPATH"] = _child_pythonpath()
    child_args = [
        "--shutdown-timeout",
        str(shutdown_timeout),
        "--log-level",
        log_level or "INFO",
        "--connect-timeout",
        str(connect_timeout),
        *(["--burst"] if burst else []),
    ]
    status = supervise_children(
        target,
        processes,
        child_args=child_args,
        shutdown_timeout=shutdown_timeout,
        burst=burst,
    )
    if status == EXIT_USAGE:
        raise CommandError("a worker process could not start (see its error above)", EXIT_USAGE)
    if status != EXIT_OK:
        raise CommandError("some worker processes stopped uncleanly", EXIT_FAILED)
    return EXIT_OK


def _child_pythonpath() -> str:
    """This process's import path beyond the interpreter's own, for worker children."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    extra = []
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        if not os.path.isdir(path) or any(
            path == prefix or path.startswith(prefix + os.sep) for prefix in prefixes
        ):
            continue
        if path not in extra:
            extra.append(path)
    current = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*extra, *([current] if current else [])])


def running_jobs() -> list[str]:
    """``"<message id> (<stream>) on <thread>"`` for each flowd thread running a job now.

    A thread runs a job when one of its frames holds the job's :class:`flowd.Task`
    (the worker function gets it as its argument); idle threads hold none.
    """
    frames = sys._current_frames()
    found = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if not thread.name.startswith("flowd-") or frame is None:
            continue
        task = _task_on_stack(frame)
        if task is not None:
            found.append(f"{task.id} ({task.stream}) on {thread.name}")
    return found


def _task_on_stack(frame: FrameType | None) -> Task[Any] | None:
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, Task):
                return value
        frame = frame.f_back
    return None


def exit_now_if_stuck(status: int) -> None:
    """Exit with ``status`` at once if jobs still hold flowd's threads.

    A job that never returns keeps its worker thread, and the interpreter would
    wait for it forever at exit; its message stays pending for the claimer.
    """
    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("flowd-") and t.is_alive() and not t.daemon
    ]
    if not stuck:
        return
    jobs = running_jobs()
    if jobs:
        logger.warning(
            "exiting with %d job(s) still running, left pending for the claimer: %s",
            len(jobs),
            ", ".join(jobs),
        )
    else:
        logger.warning("exiting without waiting for threads %s", ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
