"""Out of memory (maxmemory with noeviction): the queue recovers by itself (issue 21, case 2).

Redis refuses every write that needs memory: SET, XADD, HSET, XGROUP CREATE.
XREADGROUP, XACK and XTRIM still run, so a queue can keep consuming and, by
trimming what it consumed, free the memory it needs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import pytest
import redis

import flowd
from flowd._redis.keys import dead_letter_stream
from tests.helpers import numbered_queue, pending_count, wait_until
from tests.redis_server import RedisServer

GROUP = "g"


@dataclass
class Padded(flowd.Job):
    """A job with 1 KB of padding, so a few thousand fill a small maxmemory."""

    n: int
    pad: str


def fill(oom_admin: redis.Redis, stream: str, count: int) -> None:
    jobs = (Padded(n, "x" * 1024) for n in range(count))
    flowd.Producer(oom_admin, stream).enqueue_bulk(jobs)


def out_of_memory_now(oom_admin: redis.Redis) -> None:
    """Set maxmemory just below what Redis uses: every write that needs memory is refused."""
    used = int(oom_admin.info("memory")["used_memory"])
    oom_admin.config_set("maxmemory", str(int(used * 0.9)))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        oom_admin.set("probe", "x")


def test_out_of_memory_the_queue_trims_what_it_consumed_and_dead_letters_land(
    oom_server: RedisServer, oom_admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    stream = "oom"
    # Given 3,000 jobs of 1 KB, its group, and Redis then out of memory
    fill(oom_admin, stream, 3000)
    oom_admin.xgroup_create(stream, GROUP, id="0")
    out_of_memory_now(oom_admin)
    gave_up: set[int] = set()
    lock = threading.Lock()

    def work(task: flowd.Task[Padded]) -> None:
        if task.job.n % 50 == 0:
            with lock:
                gave_up.add(task.job.n)
            raise flowd.GiveUp(f"job {task.job.n} gives up")

    # When a queue with housekeeping every 0.5 s runs them; one job in 50 gives up
    queue = numbered_queue(
        oom_admin,
        stream,
        work,
        job=Padded,
        claimer=flowd.Claimer(min_idle_time=0.5, max_retries=0, interval=0.25),
        housekeeping=flowd.Housekeeping(interval=0.5),
    )
    handle = queue.run()
    try:
        # Then housekeeping trims the consumed entries though it cannot write its lease
        wait_until(lambda: oom_admin.xlen(stream) < 1000, timeout=30, message="stream trimmed")
        # And every job that gave up reaches the dead letters, exactly once
        dead = dead_letter_stream(stream)
        wait_until(lambda: oom_admin.xlen(dead) >= 60, timeout=30, message="60 dead letters")
        wait_until(lambda: pending_count(oom_admin, stream, GROUP) == 0, timeout=30)
        ids = [int(fields[b"n"]) for _, fields in oom_admin.xrange(dead)]
        assert sorted(ids) == sorted(gave_up) == list(range(0, 3000, 50))
        # And enqueueing works again: the memory is back
        flowd.Producer(oom_admin, stream).enqueue(Padded(3001, "x"))
        wait_until(lambda: handle.stats().processed == 3001 - 60, timeout=10)
    finally:
        assert handle.stop(timeout=10)
    assert any("trims without its lease" in r.getMessage() for r in caplog.records)


def test_a_group_that_cannot_be_created_out_of_memory_is_an_error_until_it_can(
    oom_server: RedisServer, oom_admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    stream = "oom-nogroup"
    # Given a stream filled before its group exists, and Redis then out of memory
    fill(oom_admin, stream, 500)
    out_of_memory_now(oom_admin)
    done: list[int] = []

    # When a queue starts on it
    queue = numbered_queue(oom_admin, stream, lambda t: done.append(t.job.n), job=Padded)
    handle = queue.run()
    try:
        # Then it says at ERROR that the group cannot be created, naming OOM and maxmemory,
        # once (not at every retry: at most once a minute)
        def errors() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.ERROR and "cannot be created" in r.getMessage()
            ]

        wait_until(lambda: errors(), timeout=10, message="an ERROR about the group")
        time.sleep(2.0)  # the loops retry creating it, with backoff, meanwhile
        assert len(errors()) == 1, errors()
        assert "out of memory" in errors()[0] and "maxmemory" in errors()[0]
        assert "OOM" in errors()[0] and stream in errors()[0]
        assert done == []
        # And once memory is freed, the group is made and every job runs
        oom_admin.config_set("maxmemory", "0")
        wait_until(lambda: len(done) == 500, timeout=20, message="all 500 jobs ran")
    finally:
        assert handle.stop(timeout=10)
