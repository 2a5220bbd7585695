"""The job bodies of bench_compare.py, shared by every contender (flowd, rq, Dramatiq, Celery).

Each body takes the job's two arguments, ``n`` and ``key``. A job with ``n < 0`` is the
start marker of a run: it pushes to ``key`` (the benchmark waits on it with BLPOP) and
does nothing else. Every other job runs the body proper:

- ``noop``: nothing;
- ``incr``: one ``INCR key`` (the benchmark waits for the counter to reach N);
- ``sleep``: ``time.sleep(0.005)``, standing for 5 ms of I/O-bound work;
- ``sleep20``: ``time.sleep(0.02)`` (at concurrency 32 the ideal is 1,600 jobs/s);
- ``cpu``: a pure-Python loop of about 1 ms (calibrated once per process), GIL-bound.

``sleep20`` and ``cpu`` are rows of ``--targets`` only (not in :data:`BODIES`).

Only ``redis`` is imported here, so a peer's worker process loads nothing of flowd's.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import redis

BODIES = ("noop", "incr", "sleep")
SLEEP_SECONDS = 0.005
SLEEP20_SECONDS = 0.02
CPU_SECONDS = 0.001

Body = Callable[[int, str], None]


def make_body(kind: str, client: Any) -> Body:
    """The body ``kind`` bound to ``client`` (a redis.Redis of the contender's own database)."""
    rpush = client.rpush
    if kind == "noop":

        def noop(n: int, key: str) -> None:
            if n < 0:
                rpush(key, "1")

        return noop
    if kind == "incr":
        incr = client.incr

        def incr_body(n: int, key: str) -> None:
            if n < 0:
                rpush(key, "1")
                return
            incr(key)

        return incr_body
    work = _work(kind)

    def work_body(n: int, key: str) -> None:
        if n < 0:
            rpush(key, "1")
            return
        work()

    return work_body


def _work(kind: str) -> Callable[[], object]:
    """The body proper of the sleep and CPU kinds."""
    if kind in ("sleep", "sleep20"):
        seconds = SLEEP_SECONDS if kind == "sleep" else SLEEP20_SECONDS
        return functools.partial(time.sleep, seconds)
    if kind == "cpu":
        return functools.partial(spin, cpu_rounds())
    raise ValueError(f"unknown body {kind!r}; expected one of {BODIES} or sleep20, cpu")


def spin(rounds: int) -> int:
    """Pure-Python work: ``rounds`` additions, holding the GIL throughout."""
    total = 0
    for i in range(rounds):
        total += i
    return total


_ROUNDS: list[int] = []


def cpu_rounds() -> int:
    """Rounds of :func:`spin` that take about CPU_SECONDS here (the best of 5 timings)."""
    if not _ROUNDS:
        trial = 20_000
        best = min(_timed(trial) for _ in range(5))
        _ROUNDS.append(max(1, int(trial * CPU_SECONDS / best)))
    return _ROUNDS[0]


def _timed(rounds: int) -> float:
    start = time.perf_counter()
    spin(rounds)
    return time.perf_counter() - start


def body_from_env(url_variable: str) -> Body:
    """The body named by $BENCH_BODY (default noop), on a client for $<url_variable>."""
    client = redis.Redis.from_url(os.environ[url_variable])
    return make_body(os.environ.get("BENCH_BODY", "noop"), client)
