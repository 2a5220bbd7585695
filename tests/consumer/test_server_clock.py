"""Times shown and stored come from Redis's clock, not the worker's (issue 21, case 11)."""

from __future__ import annotations

import time

import pytest
import redis

import flowd
from flowd._redis import throughput as _throughput
from flowd._redis.keys import dead_letter_stream
from tests.helpers import Numbered, QueueFactory, enqueue_numbers, wait_until

THREE_DAYS = 3 * 86400


def test_a_worker_three_days_behind_counts_and_dates_by_redis_time(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker process whose clock is three days behind (a fresh process: it has
    # not seen Redis's clock yet), and 100 jobs of which 5 give up
    real_time = time.time
    monkeypatch.setattr(_throughput.CLOCK, "_offset", None)
    monkeypatch.setattr(time, "time", lambda: real_time() - THREE_DAYS)
    enqueue_numbers(client, stream, 100)

    def work(task: flowd.Task[Numbered]) -> None:
        if task.job.n >= 95:
            raise flowd.GiveUp("not today")

    # When it runs them
    handle = make_queue.run(make_queue(worker=work, claimer=flowd.Claimer(max_retries=0)))
    dead = dead_letter_stream(stream)
    wait_until(lambda: handle.stats().processed == 95 and client.xlen(dead) == 5, timeout=15)
    assert handle.stop(timeout=5)
    monkeypatch.setattr(time, "time", real_time)
    seconds, micros = client.time()
    redis_ms = seconds * 1000 + micros // 1000

    # Then the dashboard's chart (read on a host with a right clock) shows the 95 in
    # the last minutes by Redis's clock
    minutes = _throughput.history(client, [stream], minutes=2)
    assert sum(minute.processed for minute in minutes) == 95
    # And the dead letters' flowd:time is Redis's time, not three days ago
    for _, fields in client.xrange(dead):
        assert abs(int(fields[b"flowd:time"]) - redis_ms) < 60_000, fields[b"flowd:time"]
