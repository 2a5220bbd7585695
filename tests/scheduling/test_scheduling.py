"""Delayed jobs, cancel and unique jobs: Producer arguments, the scripts, and running queues."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.cluster

import flowd
from flowd._redis import scheduling as sched
from tests.helpers import Numbered, wait_until


class Runs:
    """Thread-safe record of each run: job number -> monotonic start times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.starts: dict[int, list[float]] = {}

    def add(self, task: flowd.Task[Numbered]) -> None:
        now = time.monotonic()
        with self.lock:
            self.starts.setdefault(task.job.n, []).append(now)

    def done(self) -> set[int]:
        with self.lock:
            return set(self.starts)

    def total(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.starts.values())


@pytest.fixture
def queues(client: redis.Redis) -> Iterator[list[flowd.QueueHandle]]:
    """Handles started by the test; each must stop cleanly."""
    handles: list[flowd.QueueHandle] = []
    yield handles
    for handle in handles:
        assert handle.stop(timeout=10)


def _queue(client: Any, stream: str, worker: Any, **kwargs: Any) -> flowd.Queue[Numbered]:
    return flowd.Queue(client, stream=stream, group="g", job=Numbered, worker=worker, **kwargs)


def _keys_of(client: Any, stream: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"*{stream}*"))


# -- Done when: delayed jobs on three queues


def _delayed_twenty(client: Any, stream: str, handles: list[flowd.QueueHandle], **kw: Any) -> None:
    runs = Runs()
    for _ in range(3):
        handles.append(_queue(client, stream, runs.add, **kw).run())
    producer = flowd.Producer(client, stream, partitions=kw.get("partitions", 1))
    enqueued = time.monotonic()
    ids = [producer.enqueue(Numbered(n), delay=1.5) for n in range(20)]
    assert all(i.startswith("s-") for i in ids) and len(set(ids)) == 20
    wait_until(lambda: runs.done() == set(range(20)), timeout=10)
    time.sleep(0.5)  # a duplicate would show up by now
    starts = [t - enqueued for times in runs.starts.values() for t in times]
    assert runs.total() == 20, runs.starts
    assert min(starts) >= 1.4, sorted(starts)
    assert max(starts) <= 1.5 + 1.0, sorted(starts)


def test_delayed_jobs_start_on_time_once_with_three_queues(
    client: redis.Redis, stream: str, queues: list[flowd.QueueHandle]
) -> None:
    _delayed_twenty(client, stream, queues)
    assert flowd.ScheduledJobs(client, stream).count() == 0


def test_delay_zero_and_past_at_enqueue_at_once(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    now_id = producer.enqueue(Numbered(1), delay=0)
    past_id = producer.enqueue(Numbered(2), at=datetime.now(UTC) - timedelta(hours=1))
    zero = producer.enqueue(Numbered(3), delay=timedelta(0))
    assert [e[0].decode() for e in client.xrange(stream)] == [now_id, past_id, zero]
    assert client.zcard(sched.scheduled_key(stream)) == 0


def test_delayed_jobs_wait_in_a_sorted_set_not_the_pel(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = producer.enqueue(Numbered(7), at=later)
    assert client.xlen(stream) == 0
    score = client.zscore(sched.scheduled_key(stream), job_id)
    assert score is not None and abs(score - later.timestamp() * 1000) < 1
    assert client.hgetall(sched.job_key(stream, job_id)) == {b"n": b"7"}
    [listed] = flowd.ScheduledJobs(client, stream).list()
    assert listed.id == job_id and listed.fields == {"n": "7"}
    assert abs((listed.due - later).total_seconds()) < 0.002 and listed.due.tzinfo is UTC


def test_bulk_delay_keeps_order_and_returns_ids(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream, chunk_size=7)
    ids = producer.enqueue_bulk((Numbered(n) for n in range(30)), delay=60)
    assert len(ids) == 30 and client.zcard(sched.scheduled_key(stream)) == 30
    listed = flowd.ScheduledJobs(client, stream).list(limit=100)
    assert {job.id for job in listed} == set(ids)
    at = datetime.now(UTC) - timedelta(seconds=1)
    now_ids = producer.enqueue_bulk([Numbered(100), Numbered(101)], at=at)
    assert [e[0].decode() for e in client.xrange(stream)] == now_ids


# -- Done when: cancel


def test_cancel_before_due_never_runs_and_after_is_false(
    client: redis.Redis, stream: str, queues: list[flowd.QueueHandle]
) -> None:
    runs = Runs()
    queues.append(_queue(client, stream, runs.add).run())
    producer = flowd.Producer(client, stream)
    cancelled = producer.enqueue(Numbered(1), delay=1.0)
    kept = producer.enqueue(Numbered(2), delay=1.0)
    assert producer.cancel(cancelled) is True
    assert producer.cancel(cancelled) is False
    assert not client.exists(sched.job_key(stream, cancelled))
    wait_until(lambda: 2 in runs.done(), timeout=10)
    time.sleep(0.3)
    assert runs.done() == {2}
    assert producer.cancel(kept) is False  # moved to the stream: too late
    assert producer.cancel("s-unknown") is False


# -- Done when: bad arguments, nothing written


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"at": datetime(2030, 1, 1)}, "at"),
        ({"delay": 5, "at": datetime(2030, 1, 1, tzinfo=UTC)}, "delay and at"),
        ({"delay": -1}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"delay": float("nan")}, "delay"),
        ({"at": "2030-01-01T00:00:00Z"}, "at"),
        ({"unique_key": ""}, "unique_key"),
    ],
)
def test_bad_scheduling_arguments_write_nothing(
    client: redis.Redis, stream: str, kwargs: dict[str, Any], named: str
) -> None:
    producer = flowd.Producer(client, stream)
    with pytest.raises(flowd.ConfigurationError, match=named):
        producer.enqueue(Numbered(1), **kwargs)
    if "unique_key" not in kwargs:
        with pytest.raises(flowd.ConfigurationError, match=named):
            producer.enqueue_bulk([Numbered(1)], **kwargs)
    assert _keys_of(client, stream) == []


def test_cancel_needs_an_id(client: redis.Redis, stream: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match="job_id"):
        flowd.Producer(client, stream).cancel(None)  # type: ignore[arg-type]


# -- Done when: drain and StreamInfo.scheduled


def test_drain_runs_due_jobs_and_leaves_future_ones(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    producer.enqueue_bulk((Numbered(n) for n in range(5)), delay=0.2)
    future = producer.enqueue_bulk((Numbered(n) for n in range(10, 13)), delay=3600)
    runs = Runs()
    queue = _queue(client, stream, runs.add)
    queue.drain()  # creates the group; nothing is due yet
    assert runs.done() == set()
    time.sleep(0.3)
    assert queue.drain() == 5
    assert runs.done() == set(range(5))
    info = flowd.stream_info(client, stream)
    assert info.scheduled == 3
    assert info.to_dict()["scheduled"] == 3 and "scheduled: 3 jobs" in info.to_text()
    assert {job.id for job in flowd.ScheduledJobs(client, stream).list()} == set(future)


# -- Done when: unique_key


def test_unique_key_gives_one_id_and_one_run_then_frees_on_ack(
    client: redis.Redis, stream: str
) -> None:
    producer = flowd.Producer(client, stream)
    first = producer.enqueue(Numbered(1), unique_key="recompute:7")
    second = producer.enqueue(Numbered(2), unique_key="recompute:7")
    assert first == second and client.xlen(stream) == 1
    runs = Runs()
    queue = _queue(client, stream, runs.add)
    assert queue.drain() == 1 and runs.done() == {1}
    # Acked: the key was released, and a new enqueue runs again.
    assert not client.exists(sched.unique_key(stream, "recompute:7"))
    third = producer.enqueue(Numbered(3), unique_key="recompute:7")
    assert third != first
    assert queue.drain() == 1 and runs.done() == {1, 3}


def test_unique_key_holds_while_scheduled_and_running(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    held = producer.enqueue(Numbered(1), delay=0.3, unique_key="k")
    assert held.startswith("s-")
    assert producer.enqueue(Numbered(2), unique_key="k") == held
    assert producer.enqueue(Numbered(2), delay=10, unique_key="k") == held
    started, release = threading.Event(), threading.Event()
    running_ids: list[str] = []

    def slow(task: flowd.Task[Numbered]) -> None:
        running_ids.append(task.id)
        started.set()
        release.wait(10)

    time.sleep(0.35)
    queue = _queue(client, stream, slow)
    drained: list[int] = []
    thread = threading.Thread(target=lambda: drained.append(queue.drain()), name="test-drain")
    thread.start()
    try:
        assert started.wait(10)
        # Moved into the stream: the key now names the stream entry, which is running.
        assert producer.enqueue(Numbered(3), unique_key="k") == running_ids[0]
    finally:
        release.set()
        thread.join(10)
    assert drained == [1]
    assert producer.enqueue(Numbered(4), unique_key="k") not in (held, running_ids[0])


def test_a_unique_key_whose_job_was_deleted_frees_itself(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    client.xgroup_create(stream, "g", "0", mkstream=True)
    first = producer.enqueue(Numbered(1), unique_key="k")
    client.xdel(stream, first)  # e.g. trimmed: its release will never come
    second = producer.enqueue(Numbered(2), unique_key="k")
    assert second != first
    assert producer.enqueue(Numbered(3), unique_key="k") == second
    # A scheduled holder that was cancelled frees the key too.
    scheduled = producer.enqueue(Numbered(4), delay=60, unique_key="s")
    assert producer.cancel(scheduled)
    assert producer.enqueue(Numbered(5), delay=60, unique_key="s") != scheduled


def test_unique_key_after_dead_letter_is_free(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    first = producer.enqueue(Numbered(1), unique_key="k")

    def fail(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError("boom")

    claimer = flowd.Claimer(min_idle_time=0.2, max_retries=0, interval=0.1)
    dlq = flowd._redis.keys.dead_letter_stream(stream)
    with _queue(client, stream, fail, claimer=claimer).run():
        wait_until(lambda: client.xlen(dlq) == 1, timeout=20)
        wait_until(lambda: not client.exists(sched.unique_key(stream, "k")), timeout=5)
    assert producer.enqueue(Numbered(2), unique_key="k") != first


# -- the mover itself


def test_move_due_is_bounded_and_in_due_order(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    now = datetime.now(UTC)
    # Enqueued in reverse due order: they must arrive in due order.
    for n in range(10):
        producer.enqueue(Numbered(n), at=now + timedelta(milliseconds=200 - 10 * n))
    time.sleep(0.25)
    first = sched.move_due(client, stream, batch=4)
    assert first.moved == 4 and first.more
    assert sched.move_all_due(client, stream, batch=4) == 6
    order = [int(fields[b"n"]) for _, fields in client.xrange(stream)]
    assert order == list(range(9, -1, -1))
    last = sched.move_due(client, stream)
    assert last.moved == 0 and not last.more and last.next_due_ms is None


def test_move_survives_a_script_flush(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    producer.enqueue(Numbered(1), delay=0.05)
    time.sleep(0.1)
    client.script_flush()  # as after a restart or failover: EVALSHA gets NOSCRIPT
    assert sched.move_due(client, stream).moved == 1


def test_a_client_clock_cannot_move_a_job_early(client: redis.Redis, stream: str) -> None:
    # The due time comes from Redis's TIME inside the script, never from the client:
    # an 'at' one hour ahead of Redis's clock stays scheduled whatever the mover's clock.
    redis_now = client.time()
    at = datetime.fromtimestamp(redis_now[0] + 3600, UTC)
    flowd.Producer(client, stream).enqueue(Numbered(1), at=at)
    assert sched.move_due(client, stream).moved == 0
    assert client.xlen(stream) == 0


def test_many_processes_move_each_job_once(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    producer.enqueue_bulk((Numbered(n) for n in range(2000)), delay=0.2)
    time.sleep(0.25)
    moved: list[int] = []
    lock = threading.Lock()

    def mover() -> None:  # the client's pool gives each thread a connection of its own
        total = sched.move_all_due(client, stream, batch=50)
        with lock:
            moved.append(total)

    threads = [threading.Thread(target=mover, name=f"test-mover-{i}") for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(moved) == 2000
    numbers = sorted(int(fields[b"n"]) for _, fields in client.xrange(stream))
    assert numbers == list(range(2000))


# -- clients with decode_responses=True, and partitions on one Redis


def test_scheduling_with_any_client(any_client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(any_client, stream, partitions=2)
    ids = producer.enqueue_bulk([Numbered(1), Numbered(2)], delay=60)
    unique = producer.enqueue(Numbered(3), delay=60, unique_key="k")
    assert producer.enqueue(Numbered(4), unique_key="k") == unique
    streams = producer.streams
    listed = [job for s in streams for job in flowd.ScheduledJobs(any_client, s).list()]
    assert sorted(job.id for job in listed) == sorted([*ids, unique])
    assert {job.fields["n"] for job in listed if job.fields} == {"1", "2", "3"}
    assert producer.cancel(unique) and producer.cancel(ids[1])
    assert producer.enqueue(Numbered(5), unique_key="k") != unique
    assert sum(flowd.stream_info(any_client, s).scheduled for s in streams) == 1


def test_durable_delayed_enqueue_waits_for_replicas(client: redis.Redis, stream: str) -> None:
    # A lone server has no replica: the scheduled writes are made, then WAIT says too few.
    producer = flowd.Producer(client, stream, replicas=1, replica_timeout=0.1)
    with pytest.raises(flowd.ReplicationError, match="only 0 of 1 replicas") as info:
        producer.enqueue(Numbered(1), delay=60)
    assert info.value.ids[0].startswith("s-")
    with pytest.raises(flowd.ReplicationError) as bulk:
        producer.enqueue_bulk([Numbered(2), Numbered(3)], delay=60)
    assert len(bulk.value.ids) == 2 and all(i.startswith("s-") for i in bulk.value.ids)
    with pytest.raises(flowd.ReplicationError) as unique:
        producer.enqueue(Numbered(4), unique_key="k")
    assert unique.value.ids == [client.xrange(stream)[0][0].decode()]
    assert flowd.ScheduledJobs(client, stream).count() == 3 and client.xlen(stream) == 1
