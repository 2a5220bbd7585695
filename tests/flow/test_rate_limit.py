"""The global rate limit (``Queue(rate_limit=flowd.RateLimit(...))``) on a real Redis.

The bucket is one key per queue and group, kept by a script on Redis's clock;
readers and claimers take tokens before they read or claim. The tests check
the limit across worker processes, that jobs over it stay in the stream
undelivered (also on a cluster, where the partitions share one bucket), that
an idle queue keeps its budget, and that a drain is limited too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import partition_streams
from flowd.flow.ratelimit import TokenBucket, bucket_key
from tests.helpers import (
    GROUP,
    Numbered,
    QueueFactory,
    Recorder,
    as_str,
    child_env,
    numbered_queue,
    terminate,
    wait_until,
)

RATE_WORKER = Path(__file__).with_name("rate_worker.py")
#: Generous bound for anything that should happen "soon" on a loaded 2-core machine.
WAIT = 25.0


# ---------------------------------------------------------------------------
# The setting


def test_rate_limit_is_a_frozen_value_with_a_documented_default_burst() -> None:
    limit = flowd.RateLimit(100, per=timedelta(seconds=2))
    assert (limit.limit, limit.per, limit.burst) == (100, 2.0, 10)  # a tenth of limit
    assert flowd.RateLimit(5).burst == 1  # at least 1
    assert flowd.RateLimit(50, per=1, burst=10) == flowd.RateLimit(50, 1.0, 10)
    with pytest.raises(AttributeError):
        limit.limit = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((0,), {}, "rate_limit limit"),
        ((2.5,), {}, "rate_limit limit"),
        ((True,), {}, "rate_limit limit"),
        ((10**13,), {}, "rate_limit limit"),
        ((10,), {"per": 0}, "rate_limit per"),
        ((10,), {"per": -1.0}, "rate_limit per"),
        ((10,), {"per": "1s"}, "rate_limit per"),
        ((10,), {"burst": 0}, "rate_limit burst"),
        ((10,), {"burst": 1.5}, "rate_limit burst"),
    ],
)
def test_bad_rate_limits_are_refused_naming_the_argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(flowd.ConfigurationError, match=named):
        flowd.RateLimit(*args, **kwargs)


def test_queue_refuses_a_rate_limit_that_is_not_a_rate_limit(client: redis.Redis) -> None:
    with pytest.raises(flowd.ConfigurationError, match=r"rate_limit must be a flowd\.RateLimit"):
        numbered_queue(client, "s", rate_limit=100)


# ---------------------------------------------------------------------------
# The bucket


def test_the_bucket_grants_up_to_its_size_and_refills_at_the_rate(
    client: redis.Redis, stream: str
) -> None:
    # Given a bucket of 4 tokens refilled at 10 a second
    bucket = TokenBucket(flowd.RateLimit(10, per=1, burst=4), stream, GROUP)
    assert bucket.key == bucket_key(stream, GROUP) == f"{{{stream}}}:rate:g"
    # When 10 are asked of it, 4 are granted; then none, with the wait for the next one
    assert bucket.take(client, 10)[0] == 4
    granted, wait = bucket.take(client, 10)
    assert granted == 0 and 0 < wait <= 0.1
    assert 0 < client.pttl(bucket.key) <= 1000  # gone once it would be full again
    # Tokens given back are granted again; time refills it, never past its size
    assert bucket.take(client, 0, refund=2) == (0, 0.0)
    assert bucket.take(client, 10)[0] == 2
    time.sleep(0.25)
    assert 2 <= bucket.take(client, 10)[0] <= 4
    # And a bucket given everything back is full: no key is left
    bucket.take(client, 0, refund=4)
    assert client.exists(bucket.key) == 0


# ---------------------------------------------------------------------------
# Across worker processes


@pytest.fixture
def rate_workers(redis_url: str, stream: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Four worker processes on the test's stream with RateLimit(50, per=1, burst=10)."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(RATE_WORKER), redis_url, stream, "50", "1", "10"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(redis_url, stream),
        )
        for _ in range(4)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            terminate(proc, 10)
            assert proc.stderr is not None
            proc.stderr.close()


def test_four_processes_together_start_at_most_the_limit(
    client: redis.Redis, stream: str, rate_workers: list[subprocess.Popen[bytes]]
) -> None:
    # Given four worker processes sharing RateLimit(50, per=1, burst=10), all running
    wait_until(
        lambda: (
            client.scard(f"{stream}:ready") == 4 or any(p.poll() is not None for p in rate_workers)
        ),
        WAIT,
    )
    assert all(p.poll() is None for p in rate_workers), "a worker process exited"
    # When far more jobs wait than the limit allows, for six seconds from the first start
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(1000))
    first = float(as_str(wait_until(lambda: client.lindex(f"{stream}:starts", 0), WAIT)).split()[1])
    wait_until(lambda: time.time() > first + 6.3, 10, interval=0.1)
    starts = [as_str(row).split() for row in client.lrange(f"{stream}:starts", 0, -1)]
    window = [(pid, t) for pid, t in ((p, float(t)) for p, t in starts) if t < first + 6.0]
    # Then the six seconds hold 6 x 50 starts, plus at most the burst
    assert 250 <= len(window) <= 350, len(window)
    # And no wall-clock second holds more than limit + burst
    per_second = Counter(int(t) for _, t in window)
    assert max(per_second.values()) <= 50 + 10, sorted(per_second.items())
    # And the processes shared one budget (each alone would have started 300)
    assert len({pid for pid, _ in window}) >= 3
    # And the rest wait in the stream, not read: only the jobs that started were delivered
    info = {as_str(g["name"]): g for g in client.xinfo_groups(stream)}[GROUP]
    assert int(info["pending"]) <= 4 * 2  # at most what the processes run right now


# ---------------------------------------------------------------------------
# Jobs over the limit, on one Redis and on a cluster


class Failing(Recorder):
    """Records each run, then fails it (so that the claimer retries it)."""

    def __call__(self, task: flowd.Task[Any]) -> None:
        self.record(task)
        raise RuntimeError(f"job {task.job.n} fails, to be retried")


def pending_deliveries(client: Any, streams: list[str]) -> list[int]:
    """The delivery count of every pending entry of the streams."""
    counts = []
    for s in streams:
        rows: Any = client.xpending_range(s, GROUP, "-", "+", 1000)
        counts += [int(row["times_delivered"]) for row in rows]
    return counts


def test_jobs_over_the_limit_are_neither_read_nor_claimed(
    flow_client: Any, stream: str, partitions: int
) -> None:
    # Given a queue in `partitions` streams with two consumers, each with a claimer that
    # retries a failed job after 0.2 s, and a budget of 3 starts for the hour
    limit = flowd.RateLimit(1, per=3600, burst=3)
    recorder = Failing()
    factory = QueueFactory(flow_client, stream)
    claimer = flowd.Claimer(min_idle_time=0.2, interval=0.1, max_retries=10)
    streams = partition_streams(stream, partitions)
    try:
        for consumer in ("a", "b"):
            factory.run(
                factory(
                    recorder,
                    consumer=consumer,
                    partitions=partitions,
                    claimer=claimer,
                    rate_limit=limit,
                    block=0.2,
                )
            )
        # When ten jobs are enqueued, and every run fails
        flowd.Producer(flow_client, stream, partitions=partitions).enqueue_bulk(
            Numbered(n) for n in range(10)
        )
        wait_until(lambda: recorder.count >= 3, WAIT)
        time.sleep(1.0)  # five claimer intervals past min_idle_time
        # Then three ran, once each, over all partitions and both consumers
        assert recorder.count == 3
        # And only those were delivered, once: the claimers did not claim them again
        assert sorted(pending_deliveries(flow_client, streams)) == [1, 1, 1]
        # When the budget is full again (the bucket key gone), three more runs start
        flow_client.delete(bucket_key(stream, GROUP))
        wait_until(lambda: recorder.count >= 6, WAIT)
        time.sleep(0.5)
        assert recorder.count == 6
        # And every delivery is a run: none was counted for a job held back
        assert sum(pending_deliveries(flow_client, streams)) == 6
    finally:
        factory.stop_all()


# ---------------------------------------------------------------------------
# An idle queue, and a drain


def test_an_idle_queue_keeps_its_budget(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a running queue with a budget of 5 starts for the hour, reading an empty
    # stream with a short block (many idle reads)
    recorder = Recorder()
    make_queue.run(
        make_queue(recorder, rate_limit=flowd.RateLimit(1, per=3600, burst=5), block=0.1)
    )
    key = bucket_key(stream, GROUP)
    # When it has been idle for a second
    for _ in range(10):
        time.sleep(0.1)
        # Then it holds no token while it waits: the bucket is full (no key)
        assert client.exists(key) == 0
    # And when six jobs come, five start at once and the sixth waits, unread
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(6))
    wait_until(lambda: recorder.count >= 5, WAIT)
    time.sleep(0.3)
    assert recorder.count == 5
    assert int(client.xpending(stream, GROUP)["pending"]) == 0
    assert client.xlen(stream) == 6


def test_a_drain_starts_jobs_at_the_rate(client: redis.Redis, stream: str) -> None:
    # Given 15 jobs and RateLimit(20, per=1, burst=5)
    recorder = Recorder()
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(15))
    queue = numbered_queue(client, stream, recorder, rate_limit=flowd.RateLimit(20, burst=5))
    # When the queue drains them
    start = time.monotonic()
    assert queue.drain(timeout=WAIT) == 15
    # Then all ran, the last ten at no more than 20 a second after the first five
    assert recorder.ns() == set(range(15))
    assert time.monotonic() - start >= 10 / 20 - 0.05


class RetryingSoon(Recorder):
    """Records each run, then asks for a retry 0.1 s later (a short retry, kept pending)."""

    def __call__(self, task: flowd.Task[Any]) -> None:
        self.record(task)
        raise flowd.Retry(delay=0.1)


def test_short_retries_wait_for_tokens_too(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a job that asks to run again 0.1 s after each run, and 2 starts for the hour
    recorder = RetryingSoon()
    claimer = flowd.Claimer(min_idle_time=30.0, max_retries=10, interval=0.2)
    make_queue.run(
        make_queue(recorder, claimer=claimer, rate_limit=flowd.RateLimit(1, per=3600, burst=2))
    )
    flowd.Producer(client, stream).enqueue(Numbered(0))
    # When its retry falls due with the budget spent
    wait_until(lambda: recorder.count >= 2, WAIT)
    time.sleep(1.0)
    # Then it ran twice only, and its pending entry was not claimed a third time
    assert recorder.count == 2
    assert pending_deliveries(client, [stream]) == [2]
    # And once tokens are free, the retry runs
    client.delete(bucket_key(stream, GROUP))
    wait_until(lambda: recorder.count >= 4, WAIT)
    assert [t.deliveries for t in recorder.tasks] == [1, 2, 3, 4]
