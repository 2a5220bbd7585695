"""``flowd worker --processes N``: N worker processes, restarted when they die.

Each child is a fresh interpreter (``python -m flowd worker ... --worker-index
i``), so each imports the app itself and gets its own consumer name. SIGTERM
or SIGINT is passed on to every child (as SIGTERM), which stops gracefully;
children still running ``shutdown_timeout`` (plus a margin) later are killed,
and their unfinished messages stay pending for the claimer. A SIGINT after
that kills them all at once. Signals and exit statuses are those of
:mod:`flowd.cli.runner`, which calls :func:`supervise`.

A child that exits is restarted, whatever its status, unless it reported bad
usage (a bad target or option, which a restart cannot fix) on its own channel:
a file the supervisor names in ``FLOWD_SUPERVISOR_USAGE_FILE``, which the
``flowd`` command writes before it exits with status 2. The status alone says
nothing: a job that calls ``os._exit(2)`` is a crash, not bad usage.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from types import FrameType

logger = logging.getLogger("flowd.supervisor")

_POLL = 0.2
_EXIT_USAGE = 2
_RESTART_BACKOFF_MAX = 30.0
#: Extra seconds a child gets beyond its own shutdown timeout before it is killed.
_KILL_MARGIN = 5.0
#: Names the file where a child says it met bad usage (see the module's docstring).
USAGE_FILE_ENV = "FLOWD_SUPERVISOR_USAGE_FILE"


def take_usage_file() -> str | None:
    """The file to report bad usage to, when a supervisor started this process; taken out
    of the environment, so that processes the app starts do not report to it."""
    return os.environ.pop(USAGE_FILE_ENV, None) or None


def report_usage(path: str, message: str) -> None:
    """Tell the supervisor that this process exits for bad usage (best effort: unreported,
    it is restarted like a crashed one)."""
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(message or "bad usage")
    except OSError:
        pass


class _Child:
    def __init__(self, index: int, argv: list[str], usage_file: str) -> None:
        self.index = index
        self.argv = argv
        self.usage_file = usage_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.backoff = 1.0
        self.next_start = 0.0
        self.done = False  # burst: exited 0 after its backlog

    def start(self) -> None:
        self._clear_usage()
        env = {**os.environ, USAGE_FILE_ENV: self.usage_file}
        self.proc = subprocess.Popen(self.argv, env=env)
        logger.info("started worker process %d (pid %d)", self.index, self.proc.pid)

    def usage(self) -> str | None:
        """What the child reported as bad usage before it exited; None if nothing."""
        try:
            with open(self.usage_file, encoding="utf-8", errors="replace") as file:
                return file.read() or "bad usage"
        except OSError:
            return None

    def _clear_usage(self) -> None:
        try:
            os.remove(self.usage_file)
        except FileNotFoundError:
            pass


def supervise(
    target: str, processes: int, *, child_args: list[str], shutdown_timeout: float, burst: bool
) -> int:
    """Run ``processes`` children until a signal (or, with ``burst``, until all are done)."""
    reports = tempfile.mkdtemp(prefix="flowd-supervisor-")
    try:
        return _supervise(
            target,
            processes,
            child_args=child_args,
            shutdown_timeout=shutdown_timeout,
            burst=burst,
            reports=reports,
        )
    finally:
        shutil.rmtree(reports, ignore_errors=True)


def _supervise(
    target: str,
    processes: int,
    *,
    child_args: list[str],
    shutdown_timeout: float,
    burst: bool,
    reports: str,
) -> int:
    children = [
        _Child(
            i,
            [
                sys.executable,
                "-m",
                "flowd",
                "worker",
                target,
                "--processes",
                "1",
                "--worker-index",
                str(i),
                *child_args,
            ],
            os.path.join(reports, f"usage-{i}"),
        )
        for i in range(processes)
    ]
    stop = threading.Event()
    received = [0]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Counted before any call, as in flowd.cli.runner.StopSignals: a second
        # signal's handler can run inside the first one's.
        received[0] += 1
        if received[0] > 1:
            if signum == signal.SIGINT:
                os.write(2, b"flowd: second interrupt, killing workers\n")
                for child in children:
                    if child.proc is not None and child.proc.poll() is None:
                        child.proc.kill()
                os._exit(130)
            os.write(2, b"flowd: already stopping; SIGINT (Ctrl-C) kills the workers at once\n")
            return
        hint = "interrupt again" if signum == signal.SIGINT else "send SIGINT (Ctrl-C)"
        logger.warning(
            "received %s: stopping %d worker processes, their jobs get up to %gs "
            "(%s to kill them at once)",
            signal.Signals(signum).name,
            processes,
            shutdown_timeout,
            hint,
        )
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        while not stop.wait(_POLL):
            usage = _tend(children, burst)
            if usage is not None:
                logger.error("a worker process could not start (%s); stopping all", usage.strip())
                _stop_all(children, shutdown_timeout)
                return _EXIT_USAGE
            if burst and all(child.done for child in children):
                return 0
        return _stop_all(children, shutdown_timeout)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _tend(children: list[_Child], burst: bool) -> str | None:
    """Restart children that died (with backoff); mark finished burst children.

    Returns the report of a child that exited for bad usage (it said so itself):
    a bad target or option, which a restart cannot fix. Any other exit, status
    2 included, is a crash: the child is restarted.
    """
    now = time.monotonic()
    for child in children:
        if child.done:
            continue
        if child.proc is None:
            if now >= child.next_start:
                child.start()
            continue
        code = child.proc.poll()
        if code is None:
            continue
        if burst and code == 0:
            child.done = True
            continue
        usage = child.usage() if code != 0 else None
        if usage is not None:
            return usage
        child.proc = None
        child.restarts += 1
        child.next_start = now + child.backoff
        logger.warning(
            "worker process %d exited with %s; restarting in %.0fs (restart %d)",
            child.index,
            code,
            child.backoff,
            child.restarts,
        )
        child.backoff = min(child.backoff * 2, _RESTART_BACKOFF_MAX)
    return None


def _stop_all(children: list[_Child], shutdown_timeout: float) -> int:
    running = [c.proc for c in children if c.proc is not None and c.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + shutdown_timeout + _KILL_MARGIN
    status = 0
    for proc in running:
        try:
            code = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("worker process %d did not stop in time; killing it", proc.pid)
            proc.kill()
            proc.wait()
            code = -signal.SIGKILL
        if code != 0:
            status = 1
    logger.info("all worker processes stopped%s", "" if status == 0 else " (some uncleanly)")
    return status
