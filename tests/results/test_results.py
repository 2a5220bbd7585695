"""Results and job state: what a job returned, where a job is now, and waiting for it."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.records import STATE_TTL_MS
from tests.helpers import GROUP, Numbered, QueueFactory, wait_until
from tests.redis_cluster import RedisCluster
from tests.results.conftest import CLUSTER_PARTITIONS, Records

Status = flowd.JobStatus


@dataclass
class Receipt:
    n: int
    total: Decimal
    at: datetime
    tags: list[str]


def _receipt(task: flowd.Task[Numbered]) -> Receipt:
    return Receipt(
        task.job.n, Decimal("1.10") * task.job.n, datetime(2026, 1, 2, tzinfo=UTC), ["a"]
    )


def test_a_returned_dataclass_is_read_back_typed(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
    records: Records,
) -> None:
    make_queue.run(make_queue(_receipt, result_ttl=60))
    job_id = producer.enqueue(Numbered(3))
    result = results.wait(job_id, timeout=10, type=Receipt)
    assert result.status is Status.SUCCEEDED
    assert result.value == Receipt(3, Decimal("3.30"), datetime(2026, 1, 2, tzinfo=UTC), ["a"])
    assert result.deliveries == 1
    assert result.id == job_id
    assert result.consumer is not None and result.error is None
    assert result.enqueued_at is not None and result.started_at is not None
    assert result.finished_at is not None
    assert result.enqueued_at <= result.started_at + timedelta(seconds=1)
    assert result.started_at <= result.finished_at
    # Without type=, the plain JSON.
    plain = results.get(job_id)
    assert plain is not None
    assert plain.value == {"n": 3, "total": "3.30", "at": 1767312000.0, "tags": ["a"]}
    # Acked in the same step.
    assert records.pending() == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (7, 7), ("text", "text"), ([1, 2], [1, 2]), ({"a": [1]}, {"a": [1]})],
)
def test_scalar_and_container_values(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    value: Any,
    expected: Any,
    results: flowd.Results,
) -> None:
    make_queue.run(make_queue(lambda task: value, result_ttl=60))
    job_id = producer.enqueue(Numbered(1))
    result = results.wait(job_id, timeout=10)
    assert result.status is Status.SUCCEEDED
    assert result.value == expected


def test_a_value_without_json_form_fails_the_run_with_its_reason(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
    records: Records,
) -> None:
    claimer = flowd.Claimer(min_idle_time=60)
    make_queue.run(make_queue(lambda task: object(), result_ttl=60, claimer=claimer))
    job_id = producer.enqueue(Numbered(1))
    result = wait_until(
        lambda: (r := results.get(job_id)) is not None and r.status is Status.RETRYING and r
    )
    assert result.error.startswith("EncodeError: the job's return value (object)")
    assert "cannot be stored as JSON" in result.error
    assert records.pending() == 1  # not acked: nothing was dropped
    assert not records.exists(job_id)


def test_wait_wakes_soon_after_the_job_ends(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
) -> None:
    ended: dict[int, float] = {}

    def worker(task: flowd.Task[Numbered]) -> int:
        time.sleep(0.05)
        ended[task.job.n] = time.monotonic()
        return task.job.n

    make_queue.run(make_queue(worker, result_ttl=60, concurrency=1))
    lags = []
    for n in range(20):
        job_id = producer.enqueue(Numbered(n))
        result = results.wait(job_id, timeout=10)
        woke = time.monotonic()
        assert result.value == n
        lags.append(woke - ended[n])
    # Within 0.2 s of the job's end (the bound), in the median of 20.
    assert statistics.median(lags) < 0.2, lags


def test_wait_raises_result_timeout_on_time(
    stream: str,
    producer: flowd.Producer,
    results: flowd.Results,
) -> None:
    job_id = producer.enqueue(Numbered(1))  # no worker runs
    started = time.monotonic()
    with pytest.raises(flowd.ResultTimeout) as caught:
        results.wait(job_id, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5
    assert caught.value.job_id == job_id
    assert caught.value.status is Status.WAITING
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, flowd.FlowdError)


def test_failed_then_succeeded_shows_retrying_then_succeeded(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
) -> None:
    runs: list[int] = []

    def worker(task: flowd.Task[Numbered]) -> str:
        runs.append(task.deliveries)
        if task.deliveries == 1:
            raise ValueError("first run fails")
        return "second run"

    claimer = flowd.Claimer(min_idle_time=1, max_retries=3)
    job_id = producer.enqueue(Numbered(1))
    handle = make_queue.run(make_queue(worker, result_ttl=60, claimer=claimer))
    retrying = wait_until(
        lambda: (r := results.get(job_id)) is not None and r.status is Status.RETRYING and r
    )
    assert retrying.error == "ValueError: first run fails"
    assert retrying.traceback is not None and "first run fails" in retrying.traceback
    assert retrying.deliveries == 1
    done = results.wait(job_id, timeout=15)
    assert done.status is Status.SUCCEEDED
    assert done.value == "second run"
    assert done.deliveries == 2
    assert runs == [1, 2]
    assert handle.stats().processed == 1


def test_a_dead_job_shows_dead_with_reason_and_traceback(
    client: redis.Redis,
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
    records: Records,
) -> None:
    def worker(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError(f"job {task.job.n} always fails")

    claimer = flowd.Claimer(min_idle_time=1, max_retries=1)
    make_queue.run(make_queue(worker, result_ttl=60, claimer=claimer))
    job_id = producer.enqueue(Numbered(4))
    result = results.wait(job_id, timeout=20)
    assert result.status is Status.DEAD
    assert result.error == "RuntimeError: job 4 always fails"
    assert result.traceback is not None and "always fails" in result.traceback
    assert result.finished_at is not None
    dead = [d for s in records.streams for d in flowd.DeadLetters(client, s).list()]
    assert [d.dlq_id for d in dead] == [result.dead_letter_id]
    assert dead[0].original_id == job_id


def test_dead_and_failed_records_are_kept_without_result_ttl(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
    records: Records,
) -> None:
    def worker(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError("nope")

    no_dlq = flowd.Claimer(min_idle_time=1, max_retries=0, dlq_stream=False)
    make_queue.run(make_queue(worker, claimer=no_dlq))
    job_id = producer.enqueue(Numbered(1))
    result = results.wait(job_id, timeout=20)
    assert result.status is Status.FAILED
    assert result.error == "RuntimeError: nope"
    assert result.dead_letter_id is None
    ttl = records.pttl(job_id)
    assert STATE_TTL_MS - 60_000 < ttl <= STATE_TTL_MS


def test_where_is_a_job_without_result_ttl(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
    records: Records,
) -> None:
    assert results.get("1-0") is None  # never handed out
    assert results.get("s-unknown") is None
    gate = threading.Event()
    started = threading.Event()

    def worker(task: flowd.Task[Numbered]) -> None:
        if task.job.n == 1:
            started.set()
            gate.wait(10)

    waiting = producer.enqueue(Numbered(1))
    assert results.get(waiting).status is Status.WAITING  # type: ignore[union-attr]
    later = producer.enqueue(Numbered(2), delay=60)
    scheduled = results.get(later)
    assert scheduled is not None and scheduled.status is Status.SCHEDULED
    assert scheduled.enqueued_at is not None
    assert abs((scheduled.enqueued_at - datetime.now(UTC)).total_seconds()) < 60
    cancelled = producer.enqueue(Numbered(3), delay=60)
    assert producer.cancel(cancelled)
    assert results.get(cancelled).status is Status.CANCELLED  # type: ignore[union-attr]

    queue = make_queue(worker)
    make_queue.run(queue)
    started.wait(10)
    running = results.get(waiting)
    assert running is not None and running.status is Status.RUNNING
    assert running.consumer == queue.consumer and running.deliveries == 1
    gate.set()
    done = wait_until(
        lambda: (r := results.get(waiting)) is not None and r.status is Status.SUCCEEDED and r
    )
    assert done.value is None  # nothing kept without result_ttl
    assert not records.exists(waiting)
    # Once its entry is trimmed, nothing is left to say where it is.
    records.delete_entry(waiting)
    assert results.get(waiting) is None


def test_a_delayed_job_keeps_its_id(
    producer: flowd.Producer, make_queue: QueueFactory, results: flowd.Results, records: Records
) -> None:
    make_queue.run(make_queue(lambda task: task.job.n * 10, result_ttl=60))
    job_id = producer.enqueue(Numbered(5), delay=0.3)
    assert job_id.startswith("s-")
    assert results.get(job_id).status is Status.SCHEDULED  # type: ignore[union-attr]
    result = results.wait(job_id, timeout=10)
    assert result.status is Status.SUCCEEDED and result.value == 50
    assert result.id == job_id
    moved_to = records.alias(job_id)
    assert moved_to is not None and "-" in moved_to


def test_a_unique_job_returns_the_id_to_look_up(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
) -> None:
    first = producer.enqueue(Numbered(1), unique_key="only")
    again = producer.enqueue(Numbered(2), unique_key="only")
    assert again == first
    make_queue.run(make_queue(lambda task: task.job.n, result_ttl=60))
    result = results.wait(again, timeout=10)
    assert result.status is Status.SUCCEEDED and result.value == 1


def test_a_long_retry_is_followed_to_its_new_id(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
) -> None:
    def worker(task: flowd.Task[Numbered]) -> str:
        if task.deliveries == 1:
            raise flowd.Retry(delay=0.5)  # longer than min_idle_time/3: acked and scheduled
        return "after the retry"

    claimer = flowd.Claimer(min_idle_time=1, max_retries=3)
    make_queue.run(make_queue(worker, result_ttl=60, claimer=claimer))
    job_id = producer.enqueue(Numbered(1))
    result = results.wait(job_id, timeout=15)
    assert result.status is Status.SUCCEEDED
    assert result.value == "after the retry"
    assert result.deliveries == 2


def test_results_expire(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
    records: Records,
) -> None:
    make_queue.run(make_queue(lambda task: "kept briefly", result_ttl=timedelta(seconds=1)))
    job_id = producer.enqueue(Numbered(1))
    assert results.wait(job_id, timeout=10).value == "kept briefly"
    assert 0 < records.pttl(job_id) <= 1000
    wait_until(lambda: not records.exists(job_id), timeout=5)
    after = results.get(job_id)
    assert after is not None and after.value is None  # the acked entry is still in the stream


def test_many_waiters_on_one_job_all_wake(
    stream: str,
    producer: flowd.Producer,
    make_queue: QueueFactory,
    results: flowd.Results,
) -> None:
    job_id = producer.enqueue(Numbered(9))
    got: list[Any] = []

    def wait() -> None:
        got.append(results.wait(job_id, timeout=15).value)

    waiters = [threading.Thread(target=wait) for _ in range(10)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)
    make_queue.run(make_queue(lambda task: task.job.n, result_ttl=60))
    for waiter in waiters:
        waiter.join(20)
    assert got == [9] * 10


def test_bad_arguments_are_refused_at_the_call(client: redis.Redis, stream: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match="job_id"):
        flowd.Results(client, stream).get("")
    with pytest.raises(flowd.ConfigurationError, match="stream"):
        flowd.Results(client, "")
    with pytest.raises(flowd.ConfigurationError, match="timeout"):
        flowd.Results(client, stream).wait("1-0", timeout=-1)
    with pytest.raises(flowd.ConfigurationError, match="result_ttl"):
        flowd.Queue(client, stream=stream, group=GROUP, job=Numbered, worker=print, result_ttl=0)


def test_a_drain_keeps_results_too(
    producer: flowd.Producer, make_queue: QueueFactory, results: flowd.Results, records: Records
) -> None:
    ids = producer.enqueue_bulk(Numbered(n) for n in range(50))
    assert make_queue(lambda task: task.job.n + 1, result_ttl=60).drain() == 50
    # Bulk jobs go round-robin over the partitions; ids are unique within one only.
    exact = [flowd.Results(results.client, s) for s in records.streams]
    values = [exact[n % len(exact)].get(i).value for n, i in enumerate(ids)]  # type: ignore[union-attr]
    assert values == list(range(1, 51))
    assert records.pending() == 0


def test_an_id_two_partitions_made_is_refused_not_guessed(
    results_cluster: RedisCluster, stream: str
) -> None:
    client = results_cluster.client()
    streams = flowd.partition_streams(stream, CLUSTER_PARTITIONS)
    client.xadd(streams[0], {"n": "1"}, id="5-0")
    client.xadd(streams[1], {"n": "2"}, id="5-0")
    results = flowd.Results(client, stream, partitions=CLUSTER_PARTITIONS)
    with pytest.raises(flowd.ConfigurationError, match="known to 2 partitions"):
        results.get("5-0")
    assert flowd.Results(client, streams[0]).get("5-0").status is Status.WAITING  # type: ignore[union-attr]
    client.close()
