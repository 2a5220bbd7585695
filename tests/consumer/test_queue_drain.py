"""Queue.drain(): the backlog in the caller's time (cron mode)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis

import flowd
from tests.helpers import (
    GROUP,
    Numbered,
    QueueFactory,
    Recorder,
    as_str,
    enqueue_numbers,
    group_info,
    id_key,
    messages,
    no_flowd_threads,
    pending_count,
    pending_ids,
    wait_until,
)


def test_drain_processes_the_backlog_and_returns_its_count(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a backlog of 300 jobs
    enqueue_numbers(client, stream, 300)
    recorder = Recorder()
    queue = make_queue(recorder, concurrency=4)

    # When drain() runs
    processed = queue.drain()

    # Then it processed them all, acked them, and left no thread behind
    assert processed == 300
    assert sorted(recorder.numbers()) == list(range(300))
    assert pending_count(client, stream) == 0
    assert no_flowd_threads()

    # When drain() runs again with nothing left
    # Then it returns 0
    assert queue.drain() == 0
    assert recorder.count == 300


def test_drain_counts_only_successes(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 10 jobs of which the odd ones fail
    enqueue_numbers(client, stream, 10)

    def worker(task: flowd.Task[Numbered]) -> None:
        if task.job.n % 2:
            raise RuntimeError("odd")

    # When drained
    processed = make_queue(worker).drain()

    # Then only the successes count, and the failures stay pending
    assert processed == 5
    assert pending_count(client, stream) == 5


def test_drain_runs_this_consumers_own_pending_messages_first(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 10 jobs, 4 of them read earlier by consumer "cron-1" and never acked
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    enqueue_numbers(client, stream, 10)
    earlier: Any = client.xreadgroup(GROUP, "cron-1", {stream: ">"}, count=4)
    left_pending = {as_str(msg_id) for msg_id, _ in earlier[0][1]}
    assert len(left_pending) == 4
    recorder = Recorder()

    # When a drain runs under the same consumer name
    processed = make_queue(recorder, consumer="cron-1").drain()

    # Then all 10 are processed, the 4 old ones as redeliveries
    assert processed == 10
    assert sorted(recorder.numbers()) == list(range(10))
    deliveries = {t.id: t.deliveries for t in recorder.tasks}
    for msg_id in left_pending:
        assert deliveries[msg_id] >= 2, deliveries
    assert all(deliveries[i] == 1 for i in deliveries if i not in left_pending)
    assert pending_count(client, stream) == 0


def test_drain_acks_own_pending_entries_deleted_from_the_stream(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 3 jobs read earlier by "cron-1", one of which was then deleted from the stream
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = enqueue_numbers(client, stream, 3)
    client.xreadgroup(GROUP, "cron-1", {stream: ">"})
    client.xdel(stream, ids[0])
    recorder = Recorder()

    # When a drain runs under that consumer name
    processed = make_queue(recorder, consumer="cron-1").drain()

    # Then the two remaining jobs run, and the deleted entry leaves the pending list
    assert processed == 2
    assert sorted(recorder.numbers()) == [1, 2]
    assert pending_count(client, stream) == 0


def test_drain_with_a_claimer_sweeps_messages_of_other_idle_consumers(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 5 jobs read by a consumer that died without acking, idle for a while
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = enqueue_numbers(client, stream, 5)
    client.xreadgroup(GROUP, "dead-1", {stream: ">"})

    def idle_long_enough() -> bool:
        rows: Any = client.xpending_range(stream, GROUP, min="-", max="+", count=10)
        return len(rows) == 5 and all(r["time_since_delivered"] >= 300 for r in rows)

    wait_until(idle_long_enough, timeout=10)
    recorder = Recorder()
    queue = make_queue(recorder, claimer=flowd.Claimer(min_idle_time=0.2, max_retries=3))

    # When another consumer drains with a claimer
    processed = queue.drain()

    # Then it claims and processes them as second deliveries
    assert processed == 5
    assert sorted(recorder.ids(), key=id_key) == ids
    assert all(t.deliveries == 2 for t in recorder.tasks)
    assert pending_count(client, stream) == 0


def test_drain_on_a_fresh_stream_creates_the_group_and_returns_zero(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a stream that does not exist
    assert not client.exists(stream)

    # When drained
    processed = make_queue().drain()

    # Then it returns 0 and the group now exists
    assert processed == 0
    assert group_info(client, stream) is not None


def test_drain_timeout_with_a_hanging_job_returns_around_the_timeout(
    caplog: pytest.LogCaptureFixture,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given one job that hangs and two that do not
    release = threading.Event()

    def worker(task: flowd.Task[Numbered]) -> None:
        if task.job.n == 0:
            release.wait(30)

    hanging = producer.enqueue(Numbered(0))
    producer.enqueue_bulk([Numbered(1), Numbered(2)])
    queue = make_queue(worker)
    try:
        # When drain is given 1.5 s
        began = time.monotonic()
        processed = queue.drain(timeout=1.5)
        elapsed = time.monotonic() - began

        # Then it returns soon after the timeout, counting the jobs that finished
        assert elapsed < 6, f"drain(timeout=1.5) took {elapsed:.1f}s"
        assert processed == 2
        assert hanging in pending_ids(client, stream)
        assert messages(caplog, logging.WARNING, hanging)
    finally:
        # And the hanging job's thread ends once it is released
        release.set()
        wait_until(no_flowd_threads, timeout=10)


def test_drain_with_redis_unreachable_raises(make_queue: QueueFactory) -> None:
    # Given a client for a port where nothing listens
    from tests.redis_server import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        # When drain runs
        # Then the connection error reaches the caller
        with pytest.raises(redis.exceptions.ConnectionError):
            make_queue(client=dead).drain()
    finally:
        dead.close()
