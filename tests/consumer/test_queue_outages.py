"""A running queue when Redis is down, restarts, loses its group or its stream."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

import flowd
from tests.helpers import (
    Numbered,
    QueueFactory,
    Recorder,
    enqueue_numbers,
    flowd_threads,
    group_info,
    messages,
    no_flowd_threads,
    pending_count,
    wait_until,
)
from tests.redis_server import RedisServer


@pytest.fixture(params=["from_url", "constructor"])
def down_client(
    request: pytest.FixtureRequest, private_redis: RedisServer
) -> Iterator[redis.Redis]:
    """A client for the private server, built both usual ways.

    ``Redis.from_url`` gets no retry policy in redis-py 8; ``redis.Redis(host=, port=)``
    gets redis-py's default Retry (3 retries with exponential backoff), which also
    applies when a connection is opened.
    """
    if request.param == "from_url":
        client = redis.Redis.from_url(private_redis.url)
    else:
        client = redis.Redis(host="127.0.0.1", port=private_redis.port)
    yield client
    client.close()


def test_redis_down_at_start_is_survived(
    caplog: pytest.LogCaptureFixture,
    private_redis: RedisServer,
    down_client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a Redis that is down
    private_redis.stop()
    recorder = Recorder()
    queue = make_queue(recorder, client=down_client)

    # When the queue is started
    began = time.monotonic()
    handle = make_queue.run(queue)
    elapsed = time.monotonic() - began

    # Then run() did not raise, and the queue keeps trying
    assert handle.is_running

    # When Redis comes up and jobs are enqueued
    private_redis.start()
    enqueue_numbers(down_client, stream, 20)

    # Then they are all processed
    wait_until(lambda: recorder.count >= 20, timeout=30)
    assert sorted(recorder.numbers()) == list(range(20))
    wait_until(lambda: pending_count(down_client, stream) == 0, timeout=10)
    assert not messages(caplog, logging.ERROR)
    # And run() had returned at once, as documented, although Redis was down
    assert elapsed < 5, f"run() blocked for {elapsed:.1f}s while Redis was down"


def test_stop_during_an_outage_returns_within_its_timeout(
    caplog: pytest.LogCaptureFixture,
    private_redis: RedisServer,
    down_client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a running queue that has processed a job
    recorder = Recorder()
    handle = make_queue(recorder, client=down_client).run()  # stopped by hand below
    try:
        enqueue_numbers(down_client, stream, 1)
        wait_until(lambda: recorder.count == 1 and handle.stats().in_flight == 0, timeout=10)
        wait_until(lambda: pending_count(down_client, stream) == 0, timeout=10)

        # When Redis goes down and, while the queue retries, it is stopped
        private_redis.stop()
        wait_until(lambda: messages(caplog, logging.WARNING, "Redis unavailable"), timeout=10)
        began = time.monotonic()
        clean = handle.stop(timeout=1)
        elapsed = time.monotonic() - began
        alive = flowd_threads()
    finally:
        # (let a thread stuck in a connection attempt finish before the test ends)
        if private_redis.proc is None:
            private_redis.start()
        wait_until(no_flowd_threads, timeout=30)

    # Then stop ends every thread within its timeout: nothing was in flight
    assert clean is True, f"stop(timeout=1) was not clean; live threads: {alive}"
    assert not alive
    assert elapsed < 5, f"stop(timeout=1) took {elapsed:.1f}s"


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restart_mid_run_loses_no_job(
    kill: bool,
    private_redis: RedisServer,
    private_client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
) -> None:
    # Given 2,000 jobs in a Redis with AOF on, and a queue with a claimer for lost acks
    all_ids = enqueue_numbers(private_client, stream, 2000)
    recorder = Recorder(lambda task: time.sleep(0.001))
    queue = make_queue(
        recorder,
        client=private_client,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=1.0, max_retries=50, interval=0.25),
    )
    handle = make_queue.run(queue)

    # When Redis restarts after some of them were processed
    wait_until(lambda: recorder.count >= 300, timeout=30)
    private_redis.restart(kill=kill)
    at_restart = recorder.count

    # Then every job is processed at least once and, in the end, acked
    wait_until(lambda: set(recorder.ids()) >= set(all_ids), timeout=60)
    wait_until(lambda: pending_count(private_client, stream) == 0, timeout=30)
    duplicates = sum(c - 1 for c in Counter(recorder.ids()).values() if c > 1)
    print(
        f"restart(kill={kill}) after {at_restart} runs: {recorder.count} runs in all, "
        f"{duplicates} duplicates"
    )
    assert handle.is_running
    assert handle.stats().dead_lettered == 0


def test_group_deleted_while_running_is_recreated(
    caplog: pytest.LogCaptureFixture,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a running queue that has processed a job
    recorder = Recorder()
    handle = make_queue.run(make_queue(recorder))
    producer.enqueue(Numbered(0))
    wait_until(lambda: recorder.count == 1, timeout=10)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=10)

    # When the stream (and with it the group) is deleted, then new jobs are added
    client.delete(stream)
    new_ids = producer.enqueue_bulk(Numbered(n) for n in range(1, 11))

    # Then the group is recreated and the new jobs are processed
    wait_until(lambda: set(recorder.ids()) >= set(new_ids), timeout=20)
    assert group_info(client, stream) is not None
    wait_until(lambda: pending_count(client, stream) == 0, timeout=10)
    assert handle.is_running


def test_stream_deleted_under_a_blocked_reader_is_not_an_unexpected_error(
    caplog: pytest.LogCaptureFixture,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a reader blocked in XREADGROUP on an empty stream
    recorder = Recorder()
    handle = make_queue.run(make_queue(recorder, block=10))
    producer.enqueue(Numbered(0))
    wait_until(lambda: recorder.count == 1, timeout=10)
    wait_until(lambda: client.info("clients")["blocked_clients"] >= 1, timeout=10)

    # When the stream key is deleted under it (Redis 7 answers the blocked read with
    # "UNBLOCKED the stream key no longer exists"), then a job is added
    client.delete(stream)
    new_id = producer.enqueue(Numbered(1))
    wait_until(lambda: new_id in recorder.ids(), timeout=20)

    # Then the vanished stream is handled like a missing group: no ERROR with traceback,
    # only the report that the data it held was lost
    assert handle.is_running
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, caplog.text
    assert all("vanished" in r.getMessage() and r.exc_info is None for r in errors), caplog.text
    assert handle.stats().groups_lost == 1


def test_short_socket_timeout_with_a_longer_block_keeps_working(
    caplog: pytest.LogCaptureFixture, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a client whose socket times out after 0.2 s and a queue that blocks 2 s
    short = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        recorder = Recorder()
        handle = make_queue.run(make_queue(recorder, client=short, block=2))

        # When the queue idles for longer than the socket timeout, then jobs arrive
        time.sleep(1.5)
        enqueue_numbers(short, stream, 10)

        # Then they are processed and nothing was logged at ERROR
        wait_until(lambda: recorder.count == 10, timeout=10)
        assert handle.is_running
        assert not messages(caplog, logging.ERROR)
        assert handle.stop(timeout=5) is True
    finally:
        short.close()


def test_unavailable_warning_is_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
    private_redis: RedisServer,
    private_client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a running queue with a claimer (reader, claimer, lease, scheduler,
    # housekeeping and acker threads)
    recorder = Recorder()
    queue = make_queue(
        recorder,
        client=private_client,
        claimer=flowd.Claimer(min_idle_time=10.0, interval=0.1),
    )
    handle = make_queue.run(queue)
    enqueue_numbers(private_client, stream, 1)
    wait_until(lambda: recorder.count == 1, timeout=10)

    # When Redis is down for about 2 s
    private_redis.stop()
    time.sleep(2.0)
    private_redis.start()
    enqueue_numbers(private_client, stream, 1, start=1)
    wait_until(lambda: recorder.count == 2, timeout=30)
    wait_until(lambda: pending_count(private_client, stream) == 0, timeout=30)

    # Then "unavailable" was logged once by each loop thread that met the outage
    # (which ones depends on who talked to Redis while it was down), not once per retry
    unavailable = Counter(
        r.threadName
        for r in caplog.records
        if r.levelno >= logging.WARNING and "Redis unavailable" in r.getMessage()
    )
    assert unavailable, "no thread reported the outage"
    assert all(count == 1 for count in unavailable.values()), unavailable
    assert all(name.startswith("flowd-") for name in unavailable), unavailable
    assert handle.is_running
