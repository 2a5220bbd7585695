"""Worker subprocesses (flowd, rq, Dramatiq, Celery alike): spawn, time, stop.

A worker subprocess is first given a start marker (a job with n = -1, enqueued ahead of the
N jobs) and the clock starts when the marker's side effect shows up, so that interpreter
start-up, imports and connecting are left out alike for flowd and for the peers (they are
reported in each run's details as "startup_s").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from benchmarks.compare import HERE, ROOT
from benchmarks.compare.server import Context, unique
from benchmarks.compare.timing import POLL, RUN_TIMEOUT


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def peer_env(body: str) -> dict[str, str]:
    return bench_env(BENCH_BODY=body)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (a graceful stop for every contender), then SIGKILL its own process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session started for this child only
            proc.wait(timeout)


def run_worker_process(
    ctx: Context,
    name: str,
    argv: list[str],
    env: dict[str, str],
    marker_client: redis.Redis,
    marker: str,
    done: Callable[[], bool],
    n: int,
    exits_itself: bool = False,
) -> tuple[float, dict[str, Any]]:
    """Start a worker subprocess; time from its start marker until ``done()``.

    ``exits_itself``: a burst worker, given a few seconds to exit before SIGTERM.
    """
    log_path = ctx.tmp / f"{unique(name.replace(' ', '_'))}.log"
    with open(log_path, "wb") as log:
        spawned = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while not marker_client.blpop([marker], timeout=1):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} before its start")
                if time.perf_counter() - spawned > 120:
                    raise RuntimeError(f"{name} did not start within 120 s")
            start = time.perf_counter()
            while not done():
                if proc.poll() is not None and not done():
                    raise RuntimeError(f"{name} exited with {proc.returncode} before the end")
                if time.perf_counter() - start > RUN_TIMEOUT:
                    raise RuntimeError(f"{name} did not finish within {RUN_TIMEOUT} s")
                time.sleep(POLL)
            end = time.perf_counter()
        except BaseException:
            stop_process(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            print(f"--- {name} log ({log_path}):\n{tail}", file=sys.stderr)
            raise
        if exits_itself:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        stop_process(proc)
    return n / (end - start), {
        "seconds": end - start,
        "startup_s": start - spawned,
        "from_spawn_s": end - spawned,
    }
