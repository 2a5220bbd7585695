"""The consumer: Queue, QueueHandle, cron-mode drain and reconnects, against a real Redis."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import flowd
from flowd._redis import check_version
from tests.helpers import Email, Numbered, wait_until
from tests.redis_server import RedisServer

GROUP = "g"


# ---------------------------------------------------------------------------
# helpers


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_key(msg_id: Any) -> tuple[int, int]:
    ms, seq = as_str(msg_id).split("-")
    return int(ms), int(seq)


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    entries: Any = client.xrange(stream)
    return [as_str(msg_id) for msg_id, _ in entries]


def pending_ids(client: redis.Redis, stream: str, group: str = GROUP) -> set[str]:
    rows: Any = client.xpending_range(stream, group, min="-", max="+", count=1_000_000)
    return {as_str(row["message_id"]) for row in rows}


def pending_count(client: redis.Redis, stream: str, group: str = GROUP) -> int:
    return int(client.xpending(stream, group)["pending"])


def group_info(client: redis.Redis, stream: str, group: str = GROUP) -> dict[str, Any] | None:
    for info in client.xinfo_groups(stream):
        if as_str(info["name"]) == group:
            return dict(info)
    return None


def last_delivered_id(client: redis.Redis, stream: str, group: str = GROUP) -> str:
    info = group_info(client, stream, group)
    assert info is not None, f"group {group} missing on {stream}"
    return as_str(info["last-delivered-id"])


def flowd_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flowd-") and t.is_alive()]


def no_flowd_threads() -> bool:
    return not flowd_threads()


def messages(caplog: pytest.LogCaptureFixture, level: int, text: str = "") -> list[str]:
    """Messages of flowd records at exactly ``level`` that contain ``text``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("flowd") and r.levelno == level and text in r.getMessage()
    ]


def noop(task: flowd.Task[Any]) -> None:
    return None


class Recorder:
    """A worker that records every task it finished, thread-safely."""

    def __init__(self, body: Callable[[flowd.Task[Any]], None] | None = None) -> None:
        self.lock = threading.Lock()
        self.tasks: list[flowd.Task[Any]] = []
        self.body = body

    def __call__(self, task: flowd.Task[Any]) -> None:
        if self.body is not None:
            self.body(task)
        with self.lock:
            self.tasks.append(task)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.tasks)

    def ids(self) -> list[str]:
        with self.lock:
            return [t.id for t in self.tasks]

    def numbers(self) -> list[int]:
        with self.lock:
            return [t.job.n for t in self.tasks]


class QueueFactory:
    """Builds queues on the test's stream and stops every handle it started on teardown."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.handles: list[flowd.QueueHandle] = []

    def __call__(
        self,
        worker: Callable[[flowd.Task[Any]], None] = noop,
        *,
        client: Any = None,
        **kwargs: Any,
    ) -> flowd.Queue[Any]:
        kwargs.setdefault("stream", self.stream)
        kwargs.setdefault("group", GROUP)
        kwargs.setdefault("job", Numbered)
        return flowd.Queue(self.client if client is None else client, worker=worker, **kwargs)

    def run(self, queue: flowd.Queue[Any]) -> flowd.QueueHandle:
        handle = queue.run()
        self.handles.append(handle)
        return handle

    def stop_all(self) -> None:
        # stop() runs on a fresh thread: a handle that the test body already stopped from
        # the main thread would otherwise take this call for a re-entrant one (see
        # test_stop_twice_from_the_same_thread_returns_the_same_result).
        results: dict[int, bool] = {}

        def stop(index: int, handle: flowd.QueueHandle) -> None:
            results[index] = handle.stop(timeout=5)

        for index, handle in enumerate(self.handles):
            stopper = threading.Thread(target=stop, args=(index, handle), name="test-stopper")
            stopper.start()
            stopper.join(10)
        unclean = [repr(h) for i, h in enumerate(self.handles) if results.get(i) is not True]
        assert not unclean, f"handles did not stop cleanly: {unclean}"


@pytest.fixture
def make_queue(client: redis.Redis, stream: str) -> Iterator[QueueFactory]:
    factory = QueueFactory(client, stream)
    yield factory
    factory.stop_all()


@pytest.fixture
def producer(client: redis.Redis, stream: str) -> flowd.Producer:
    return flowd.Producer(client, stream)


@pytest.fixture
def private_client(private_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


def enqueue_numbers(client: redis.Redis, stream: str, count: int, start: int = 0) -> list[str]:
    return flowd.Producer(client, stream).enqueue_bulk(
        Numbered(n) for n in range(start, start + count)
    )


# ---------------------------------------------------------------------------
# throughput, exactly once, concurrency bound


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


# ---------------------------------------------------------------------------
# stop


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
    release = threading.Event()
    started = threading.Event()

    def worker(task: flowd.Task[Numbered]) -> None:
        started.set()
        release.wait(20)

    handle = make_queue.run(make_queue(worker))
    producer.enqueue(Numbered(1))
    wait_until(started.is_set, timeout=10)
    inner: list[bool] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: inner.append(handle.stop(timeout=5)))

    def signal_then_release() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: inner, timeout=10)
        release.set()

    helper = threading.Timer(0.3, signal_then_release)

    # When the main thread is inside stop(), waiting for the job, and the signal arrives
    helper.start()
    try:
        outer = handle.stop(timeout=15)
    finally:
        release.set()
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
    release = threading.Event()
    started = threading.Event()

    def worker(task: flowd.Task[Numbered]) -> None:
        started.set()
        release.wait(30)

    queue = make_queue(worker, concurrency=2)
    handle = queue.run()  # stopped by hand below: it is expected not to stop cleanly
    try:
        msg_id = producer.enqueue(Numbered(1))
        wait_until(started.is_set, timeout=10)

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
        release.set()
        wait_until(no_flowd_threads, timeout=10)


# ---------------------------------------------------------------------------
# failures and bad messages


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


# ---------------------------------------------------------------------------
# drain (cron mode)


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


# ---------------------------------------------------------------------------
# resilience


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
    assert elapsed < 2, f"run() blocked for {elapsed:.1f}s while Redis was down"


def test_stop_during_an_outage_returns_within_its_timeout(
    private_redis: RedisServer,
    down_client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
) -> None:
    # Given a running queue that has processed a job
    recorder = Recorder()
    handle = make_queue(recorder, client=down_client).run()  # stopped by hand below
    try:
        enqueue_numbers(down_client, stream, 1)
        wait_until(lambda: recorder.count == 1 and handle.stats().in_flight == 0, timeout=10)
        wait_until(lambda: pending_count(down_client, stream) == 0, timeout=10)

        # When Redis goes down and, while the queue retries, it is stopped
        private_redis.stop()
        time.sleep(0.5)
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
    assert elapsed < 3


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


def test_unavailable_warning_is_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
    private_redis: RedisServer,
    private_client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    # Given a running queue with a claimer (reader, claimer, lease and acker threads)
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

    # Then "unavailable" was logged at most once per loop thread, not once per retry
    unavailable = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "Redis unavailable" in r.getMessage()
    ]
    assert 1 <= len(unavailable) <= 4, unavailable
    assert handle.is_running


# ---------------------------------------------------------------------------
# threads, configuration, read client, version


def test_threads_carry_flowd_names(
    client: redis.Redis, stream: str, producer: flowd.Producer, make_queue: QueueFactory
) -> None:
    # Given a queue whose job waits, so a worker thread exists
    before = {t.ident for t in threading.enumerate()}
    release = threading.Event()
    started = threading.Event()

    def worker(task: flowd.Task[Numbered]) -> None:
        started.set()
        release.wait(20)

    handle = make_queue.run(
        make_queue(worker, claimer=flowd.Claimer(min_idle_time=30.0, interval=0.1))
    )
    try:
        producer.enqueue(Numbered(1))
        wait_until(started.is_set, timeout=10)

        # When its threads are listed
        names = flowd_threads()
        new = [t.name for t in threading.enumerate() if t.ident not in before]
    finally:
        release.set()
    assert handle.stop(timeout=5) is True

    # Then reader, acker, claimer, lease and workers carry flowd- names with the stream
    assert f"flowd-reader-{stream}" in names
    assert f"flowd-acker-{stream}" in names
    assert f"flowd-claimer-{stream}" in names
    assert f"flowd-lease-{stream}" in names
    assert any(name.startswith(f"flowd-worker-{stream}") for name in names)
    assert all(name.startswith("flowd-") for name in new), new


class NotAJob:
    n: int = 0


@dataclasses.dataclass
class PlainDataclass:
    n: int


@pytest.mark.parametrize(
    "override",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": 1.5},
        {"concurrency": True},
        {"block": -1},
        {"block": 0},
        {"block": "2"},
        {"stream": ""},
        {"stream": None},
        {"group": ""},
        {"consumer": ""},
        {"job": NotAJob},
        {"job": PlainDataclass},
        {"job": Numbered(1)},
        {"worker": "not callable"},
        {"worker": None},
        {"client": "redis://localhost"},
        {"client": object()},
        {"read_client": 42},
        {"claimer": 5},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_bad_configuration_raises_at_construction(
    client: redis.Redis, stream: str, override: dict[str, Any]
) -> None:
    # Given otherwise valid arguments with one bad value
    kwargs: dict[str, Any] = {
        "stream": stream,
        "group": GROUP,
        "job": Numbered,
        "worker": noop,
    }
    override = dict(override)
    target = override.pop("client", client)
    kwargs.update(override)

    # When the queue is built
    # Then ConfigurationError (also a ValueError and a FlowdError) is raised, with nothing sent
    with pytest.raises(flowd.ConfigurationError) as info:
        flowd.Queue(target, **kwargs)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, flowd.FlowdError)
    assert not client.exists(stream)


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


@pytest.mark.parametrize("version", ["6.0.16", "5.0.7", "6.1.240"])
def test_check_version_rejects_servers_older_than_6_2(version: str) -> None:
    # Given the version string of a server older than 6.2
    # When it is checked
    # Then RedisVersionError names the version found
    with pytest.raises(flowd.RedisVersionError) as info:
        check_version(version)
    assert version in str(info.value)
    assert info.value.found == version
    assert isinstance(info.value, flowd.FlowdError)


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.2.4", "10.0.0"])
def test_check_version_accepts_6_2_and_later(version: str) -> None:
    # Given a supported version, when it is checked, then nothing is raised
    check_version(version)


def test_the_test_server_passes_the_version_check(redis_version: tuple[int, ...]) -> None:
    # Given the server the suite runs against, when its version is checked, then it passes
    check_version(".".join(map(str, redis_version)))


def test_a_stop_that_times_out_leaves_no_reader_waiting_for_permits(
    client: redis.Redis, stream: str
) -> None:
    # Given the only permit held by a job that hangs, and a long block time
    release = threading.Event()
    started = threading.Event()

    def hang(task: flowd.Task[Numbered]) -> None:
        started.set()
        release.wait(30)

    enqueue_numbers(client, stream, 1)
    queue = flowd.Queue(
        client, stream=stream, group="g", job=Numbered, worker=hang, concurrency=1, block=30
    )
    handle = queue.run()
    try:
        assert started.wait(10)
        # When stop times out on the hung job
        assert handle.stop(timeout=0.5) is False
        # Then the reader, which was waiting for a permit, has ended too
        wait_until(
            lambda: not any(t.name == f"flowd-reader-{stream}" for t in threading.enumerate()),
            timeout=5,
        )
    finally:
        release.set()
    wait_until(
        lambda: not any(t.name.startswith("flowd-") for t in threading.enumerate()), timeout=10
    )
