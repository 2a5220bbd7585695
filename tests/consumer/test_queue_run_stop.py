"""Queue.run() and QueueHandle: processing, concurrency, stop in all its forms, failures."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import flowd
from tests.helpers import (
    Email,
    Hang,
    Numbered,
    QueueFactory,
    Recorder,
    as_str,
    enqueue_numbers,
    flowd_threads,
    id_key,
    last_delivered_id,
    messages,
    no_flowd_threads,
    numbered_queue,
    pending_count,
    pending_ids,
    stream_ids,
    wait_until,
)


def test_5000_jobs_at_concurrency_16_are_each_processed_exactly_once(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 5,000 jobs in the stream
    enqueue_numbers(client, stream, 5000)
    recorder = Recorder()
    queue = make_queue(recorder, concurrency=16)

    # When a queue with 16 workers runs until every job has been seen
    handle = make_queue.run(queue)
    wait_until(lambda: recorder.count >= 5000, timeout=60)
    assert handle.stop(timeout=10) is True

    # Then every job ran exactly once, every message is acked, and the counters agree
    assert sorted(recorder.numbers()) == list(range(5000))
    assert pending_count(client, stream) == 0
    stats = handle.stats()
    assert stats.processed == 5000
    assert stats.failed == 0
    assert stats.in_flight == 0
    assert all(task.deliveries == 1 for task in recorder.tasks)


def test_running_workers_reach_but_never_exceed_concurrency(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given jobs that each take a few milliseconds, many more than the concurrency
    lock = threading.Lock()
    running = 0
    peak = 0

    def body(task: flowd.Task[Numbered]) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    recorder = Recorder(body)
    enqueue_numbers(client, stream, 200)
    queue = make_queue(recorder, concurrency=4)

    # When they are processed at concurrency 4
    handle = make_queue.run(queue)
    in_flight_seen: list[int] = []

    def done() -> bool:
        in_flight_seen.append(handle.stats().in_flight)
        return recorder.count >= 200

    wait_until(done, timeout=30)

    # Then exactly 4 ran at the same time at the peak, never more
    assert peak == 4
    assert max(in_flight_seen) <= 4


def test_stop_during_work_loses_nothing(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 500 jobs of ~10 ms each, processed at concurrency 8
    finished_lock = threading.Lock()
    finished: list[str] = []

    def worker(task: flowd.Task[Numbered]) -> None:
        time.sleep(0.01)
        with finished_lock:
            finished.append(task.id)

    all_ids = enqueue_numbers(client, stream, 500)
    handle = make_queue.run(make_queue(worker, concurrency=8))

    # When the queue is stopped after about 100 jobs finished
    wait_until(lambda: len(finished) >= 100, timeout=30)
    assert handle.stop(timeout=10) is True

    # Then every message was acked after its job finished, is still pending, or was never read
    with finished_lock:
        done = set(finished)
    assert len(done) == len(finished), "a job ran twice"
    pending = pending_ids(client, stream)
    last = id_key(last_delivered_id(client, stream))
    undelivered = {i for i in stream_ids(client, stream) if id_key(i) > last}
    assert set(stream_ids(client, stream)) == set(all_ids)
    assert not done & pending, "a finished job's message is still pending after a clean stop"
    assert not done & undelivered
    assert set(all_ids) == done | pending | undelivered
    acked = set(all_ids) - pending - undelivered
    assert acked <= done, f"acked without its job finishing: {sorted(acked - done)[:5]}"
    assert handle.stats().processed == len(done)
    assert len(done) < 500 or not pending  # the stop happened mid-way, or everything was done


def test_stop_interrupts_a_long_blocking_read_on_an_empty_stream(
    client: redis.Redis, make_queue: QueueFactory
) -> None:
    # Given a queue whose reader blocks for 30 s at a time on an empty stream
    handle = make_queue.run(make_queue(block=30))
    wait_until(lambda: client.info("clients")["blocked_clients"] >= 1, timeout=10)

    # When it is stopped
    started = time.monotonic()
    clean = handle.stop(timeout=5)
    elapsed = time.monotonic() - started

    # Then the blocked read is interrupted and stop returns promptly and cleanly
    assert clean is True
    assert elapsed < 4, f"stop took {elapsed:.1f}s: the blocked XREADGROUP was not interrupted"
    assert not handle.is_running
    assert no_flowd_threads()


def test_stop_is_idempotent_and_safe_from_two_threads_at_once(
    client: redis.Redis, stream: str, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a running queue
    recorder = Recorder()
    queue = make_queue(recorder)
    handle = make_queue.run(queue)
    assert handle.is_running

    # When two threads call stop at the same moment
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def stopper() -> None:
        barrier.wait()
        results.append(handle.stop(timeout=5))

    threads = [threading.Thread(target=stopper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    # Then both get True, the handle is stopped, and stopping again is still True
    assert results == [True, True]
    assert not handle.is_running
    assert handle.stop(timeout=5) is True
    assert handle.stop() is True
    assert handle.join(timeout=1) is True
    assert no_flowd_threads()


def test_stop_twice_from_the_same_thread_returns_the_same_result(
    make_queue: QueueFactory,
) -> None:
    # Given a queue stopped cleanly by the main thread
    handle = make_queue.run(make_queue())
    assert handle.stop(timeout=5) is True

    # When the same thread calls stop again (e.g. an explicit stop, then a `with` exit)
    again = handle.stop(timeout=5)

    # Then it reports the same clean stop instead of False
    assert again is True


def test_run_while_running_raises_and_run_after_stop_works(
    client: redis.Redis, stream: str, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a running queue
    recorder = Recorder()
    queue = make_queue(recorder)
    first = make_queue.run(queue)

    # When run() or drain() is called again while it runs
    # Then HandleStateError is raised
    with pytest.raises(flowd.HandleStateError):
        queue.run()
    with pytest.raises(flowd.HandleStateError):
        queue.drain()

    # When it is stopped and run again
    assert first.stop(timeout=5) is True
    second = make_queue.run(queue)
    producer.enqueue(Numbered(7))

    # Then the new run processes jobs
    wait_until(lambda: recorder.numbers() == [7], timeout=10)
    assert second.is_running
    assert not first.is_running


def test_context_manager_stops_on_exit(
    client: redis.Redis, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a queue used as `with queue.run() as handle:`
    recorder = Recorder()
    queue = make_queue(recorder)

    # When jobs run inside the block and the block exits
    with queue.run() as handle:
        assert isinstance(handle, flowd.QueueHandle)
        assert handle.is_running
        producer.enqueue(Numbered(1))
        wait_until(lambda: recorder.count == 1, timeout=10)

    # Then the handle is stopped and no thread is left
    assert not handle.is_running
    assert no_flowd_threads()


def test_context_manager_stops_when_the_block_raises(make_queue: QueueFactory) -> None:
    # Given a queue used as a context manager
    queue = make_queue()

    # When the block raises
    with pytest.raises(KeyError), queue.run() as handle:
        raise KeyError("boom")

    # Then the exception propagates and the queue is stopped
    assert not handle.is_running
    assert no_flowd_threads()


@pytest.fixture
def sigusr1() -> Iterator[None]:
    """Restores SIGUSR1's handler after the test (pytest-timeout uses SIGALRM)."""
    old = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, old)


def test_stop_from_a_signal_handler(sigusr1: None, make_queue: QueueFactory) -> None:
    # Given a running queue and a SIGUSR1 handler that stops it
    handle = make_queue.run(make_queue())
    results: list[bool] = []

    def on_signal(signum: int, frame: Any) -> None:
        results.append(handle.stop(timeout=5))

    signal.signal(signal.SIGUSR1, on_signal)

    # When the process receives SIGUSR1
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_until(lambda: results, timeout=10)

    # Then the handler's stop returned True and the queue is stopped
    assert results == [True]
    assert not handle.is_running
    assert no_flowd_threads()


def test_signal_handler_stop_wakes_a_main_thread_waiting_in_join(
    sigusr1: None, make_queue: QueueFactory
) -> None:
    # Given a main thread blocked in handle.join(), as a service's main loop would be
    handle = make_queue.run(make_queue())
    results: list[bool] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: results.append(handle.stop(timeout=5)))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))

    # When SIGUSR1 arrives while it waits
    timer.start()
    try:
        joined = handle.join(timeout=20)
    finally:
        timer.cancel()
        timer.join()

    # Then the handler stopped the queue and join returned True
    assert joined is True
    assert results == [True]
    assert not handle.is_running


def test_signal_during_a_stop_in_progress_does_not_deadlock(
    sigusr1: None, client: redis.Redis, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a running job and a SIGUSR1 handler that calls stop
    worker = Hang(20)

    handle = make_queue.run(make_queue(worker))
    producer.enqueue(Numbered(1))
    wait_until(worker.started.is_set, timeout=10)
    inner: list[bool] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: inner.append(handle.stop(timeout=5)))

    def signal_then_release() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: inner, timeout=10)
        worker.release.set()

    helper = threading.Timer(0.3, signal_then_release)

    # When the main thread is inside stop(), waiting for the job, and the signal arrives
    helper.start()
    try:
        outer = handle.stop(timeout=15)
    finally:
        worker.release.set()
        helper.join(15)

    # Then the re-entrant stop returned at once, and the outer stop finished cleanly
    assert len(inner) == 1
    assert outer is True
    assert pending_count(client, make_queue.stream) == 0


def test_stop_called_from_inside_a_job_does_not_wait_for_that_job(
    client: redis.Redis, stream: str, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a job that stops its own queue (a "shut down now" job) and then returns
    results: list[float] = []
    holder: list[flowd.QueueHandle] = []

    def worker(task: flowd.Task[Numbered]) -> None:
        began = time.monotonic()
        holder[0].stop(timeout=5)
        results.append(time.monotonic() - began)

    handle = make_queue(worker).run()  # stopped by its own job
    holder.append(handle)
    try:
        # When that job runs
        msg_id = producer.enqueue(Numbered(1))
        wait_until(lambda: results, timeout=20)
        wait_until(no_flowd_threads, timeout=10)
    finally:
        handle.stop(timeout=5)

    # Then stop did not wait for the very job that called it (with no timeout, that
    # would be a deadlock), the queue is stopped, and the job, which succeeded, was
    # acked rather than left pending to run again
    assert results[0] < 4, f"stop() inside a job waited {results[0]:.1f}s for itself"
    assert not handle.is_running
    assert handle.stats().processed == 1
    assert msg_id not in pending_ids(client, stream)


def test_stop_timeout_with_a_hanging_job_returns_false_and_keeps_it_pending(
    caplog: pytest.LogCaptureFixture,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a job that hangs until released
    worker = Hang(30)

    queue = make_queue(worker, concurrency=2)
    handle = queue.run()  # stopped by hand below: it is expected not to stop cleanly
    try:
        msg_id = producer.enqueue(Numbered(1))
        wait_until(worker.started.is_set, timeout=10)

        # When stop is given 0.5 s
        began = time.monotonic()
        clean = handle.stop(timeout=0.5)
        elapsed = time.monotonic() - began

        # Then it returns False soon, warns naming the running message, which stays pending
        assert clean is False
        assert elapsed < 4
        warnings = messages(caplog, logging.WARNING, msg_id)
        assert warnings, f"no WARNING names {msg_id}: {caplog.text}"
        assert msg_id in pending_ids(client, stream)
        assert not handle.is_running
        assert handle.stop(timeout=0.1) is False  # a later call reports the same outcome
    finally:
        # And once the job is released, its thread ends
        worker.release.set()
        wait_until(no_flowd_threads, timeout=10)


def test_failing_worker_is_logged_counted_and_left_pending(
    caplog: pytest.LogCaptureFixture,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")

    # Given a worker that raises, and no claimer
    def worker(task: flowd.Task[Numbered]) -> None:
        raise ValueError(f"boom {task.job.n}")

    queue = make_queue(worker, concurrency=1)

    # When the queue runs
    handle = make_queue.run(queue)

    # Then run() warned that failures are never retried
    assert messages(caplog, logging.WARNING, "no claimer")

    # When a job fails
    msg_id = producer.enqueue(Numbered(3))

    def error_records() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.levelno == logging.ERROR and msg_id in r.getMessage()
        ]

    wait_until(lambda: handle.stats().failed == 1 and error_records(), timeout=10)

    # Then the error is logged at ERROR with its traceback and the message stays pending
    errors = error_records()
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError
    assert "boom 3" in caplog.text
    assert pending_ids(client, stream) == {msg_id}
    stats = handle.stats()
    assert stats.processed == 0
    assert stats.failed == 1
    # And the queue keeps going
    assert handle.is_running


def test_undecodable_message_never_reaches_the_worker_nor_kills_the_reader(
    caplog: pytest.LogCaptureFixture,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a message without the required field, and one whose field is not an int
    missing = as_str(client.xadd(stream, {"other": "x"}))
    garbled = as_str(client.xadd(stream, {"n": "not a number"}))
    recorder = Recorder()
    handle = make_queue.run(make_queue(recorder, concurrency=2))

    # When valid jobs follow them
    valid = producer.enqueue_bulk(Numbered(n) for n in range(5))

    # Then the valid jobs are processed and the bad ones never reach the worker
    wait_until(lambda: recorder.count == 5, timeout=10)
    assert sorted(recorder.numbers()) == list(range(5))
    assert missing not in recorder.ids()
    assert garbled not in recorder.ids()
    # And without a claimer they are logged at ERROR and stay pending
    assert messages(caplog, logging.ERROR, missing)
    assert messages(caplog, logging.ERROR, garbled)
    wait_until(lambda: pending_ids(client, stream) == {missing, garbled}, timeout=10)
    # And the reader is alive: a later job is still processed
    assert handle.is_running
    assert f"flowd-reader-{stream}" in flowd_threads()
    producer.enqueue(Numbered(99))
    wait_until(lambda: 99 in recorder.numbers(), timeout=10)
    assert set(valid) <= set(recorder.ids())


def test_decode_responses_client_works_for_the_whole_flow(
    any_client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a client with or without decode_responses, and Email jobs
    seen: list[flowd.Task[Email]] = []
    producer = flowd.Producer(any_client, stream)
    ids = producer.enqueue_bulk(
        [Email(to="a@b.c", subject="hi"), Email(to="d@e.f", subject="yo", cc="g@h.i")]
    )

    # When drained and then run
    drained = make_queue(seen.append, client=any_client, job=Email).drain()
    handle = make_queue.run(make_queue(seen.append, client=any_client, job=Email))
    later = producer.enqueue(Email(to="x@y.z", subject="later", attempt=2))
    wait_until(lambda: len(seen) == 3, timeout=10)
    assert handle.stop(timeout=5) is True

    # Then every job decoded as written and every message is acked
    assert drained == 2
    assert [t.id for t in seen] == [*ids, later]
    assert [t.job for t in seen] == [
        Email(to="a@b.c", subject="hi"),
        Email(to="d@e.f", subject="yo", cc="g@h.i"),
        Email(to="x@y.z", subject="later", attempt=2),
    ]
    assert all(isinstance(t.id, str) and t.stream == stream for t in seen)
    assert pending_count(any_client, stream) == 0


def test_threads_carry_flowd_names(
    client: redis.Redis, stream: str, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a queue whose job waits, so a worker thread exists
    before = {t.ident for t in threading.enumerate()}
    worker = Hang(20)

    handle = make_queue.run(
        make_queue(worker, claimer=flowd.Claimer(min_idle_time=30.0, interval=0.1))
    )
    try:
        producer.enqueue(Numbered(1))
        wait_until(worker.started.is_set, timeout=10)

        # When its threads are listed
        names = flowd_threads()
        new = [t.name for t in threading.enumerate() if t.ident not in before]
    finally:
        worker.release.set()
    assert handle.stop(timeout=5) is True

    # Then reader, acker, claimer, lease and workers carry flowd- names with the stream
    assert f"flowd-reader-{stream}" in names
    assert f"flowd-acker-{stream}" in names
    assert f"flowd-claimer-{stream}" in names
    assert f"flowd-lease-{stream}" in names
    assert any(name.startswith(f"flowd-worker-{stream}") for name in names)
    assert all(name.startswith("flowd-") for name in new), new


def test_a_separate_read_client_is_used_for_reading(
    redis_url: str,
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
) -> None:
    # Given a separate, named client for the blocking reads
    name = f"reader-{uuid.uuid4().hex[:8]}"
    reader_client = redis.Redis.from_url(redis_url, client_name=name)
    try:
        recorder = Recorder()
        handle = make_queue.run(make_queue(recorder, read_client=reader_client, block=30))

        # When jobs arrive
        producer.enqueue_bulk(Numbered(n) for n in range(20))

        # Then they are processed, and the blocking read runs on the read client's connection
        wait_until(lambda: recorder.count == 20, timeout=10)

        def reading_on_read_client() -> bool:
            return any(
                as_str(c.get("name", "")) == name and as_str(c.get("cmd", "")) == "xreadgroup"
                for c in client.client_list()
            )

        wait_until(reading_on_read_client, timeout=10)
        wait_until(lambda: pending_count(client, stream) == 0, timeout=10)
        # And stop still interrupts its 30 s block promptly
        began = time.monotonic()
        assert handle.stop(timeout=5) is True
        assert time.monotonic() - began < 4
    finally:
        reader_client.close()


def test_a_stop_that_times_out_leaves_no_reader_waiting_for_permits(
    client: redis.Redis, stream: str
) -> None:
    # Given the only permit held by a job that hangs, and a long block time
    hang = Hang(30)

    enqueue_numbers(client, stream, 1)
    queue = numbered_queue(client, stream, hang, concurrency=1, block=30, claimer=None)
    handle = queue.run()
    try:
        assert hang.started.wait(10)
        # When stop times out on the hung job
        assert handle.stop(timeout=0.5) is False
        # Then the reader, which was waiting for a permit, has ended too
        wait_until(
            lambda: not any(t.name == f"flowd-reader-{stream}" for t in threading.enumerate()),
            timeout=5,
        )
    finally:
        hang.release.set()
    wait_until(
        lambda: not any(t.name.startswith("flowd-") for t in threading.enumerate()), timeout=10
    )
