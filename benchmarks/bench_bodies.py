"""The job bodies of bench_compare.py, shared by every contender (flowd, rq, Dramatiq, Celery).

Each body takes the job's two arguments, ``n`` and ``key``. A job with ``n < 0`` is the
start marker of a run: it pushes to ``key`` (the benchmark waits on it with BLPOP) and
does nothing else. Every other job runs the body proper:

- ``noop``: nothing;
- ``incr``: one ``INCR key`` (the benchmark waits for the counter to reach N);
- ``sleep``: ``time.sleep(0.005)``, standing for 5 ms of I/O-bound work.

Only ``redis`` is imported here, so a peer's worker process loads nothing of flowd's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import redis

BODIES = ("noop", "incr", "sleep")
SLEEP_SECONDS = 0.005

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
    if kind == "sleep":
        sleep = time.sleep

        def sleep_body(n: int, key: str) -> None:
            if n < 0:
                rpush(key, "1")
                return
            sleep(SLEEP_SECONDS)

        return sleep_body
    raise ValueError(f"unknown body {kind!r}; expected one of {BODIES}")


def body_from_env(url_variable: str) -> Body:
    """The body named by $BENCH_BODY (default noop), on a client for $<url_variable>."""
    client = redis.Redis.from_url(os.environ[url_variable])
    return make_body(os.environ.get("BENCH_BODY", "noop"), client)
