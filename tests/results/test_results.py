"""Results and job state: what a job returned, where a job is now, and waiting for it.

Each test runs on one Redis and on a 3-master cluster with 3 partitions (conftest)."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from redis.connection import Connection

import flowd
from flowd._redis.records import STATE_TTL_MS, ack_call, packed_ack_call
from tests.helpers import GROUP, Numbered, wait_until
from tests.redis_cluster import RedisCluster
from tests.results.conftest import CLUSTER_PARTITIONS, JobRunner, Records

Status = flowd.JobStatus
#: A claimer that retries soon (1 s), and one that leaves a failure pending for long.
SOON = flowd.Claimer(min_idle_time=1, max_retries=3)
LATER = flowd.Claimer(min_idle_time=60)


@dataclass
class Receipt:
    n: int
    total: Decimal
    at: datetime
    tags: list[str]


NEW_YEAR = datetime(2026, 1, 2, tzinfo=UTC)


def _receipt(task: flowd.Task[Numbered]) -> Receipt:
    return Receipt(task.job.n, Decimal("1.10") * task.job.n, NEW_YEAR, ["a"])


def _fails(task: flowd.Task[Numbered]) -> None:
    raise RuntimeError(f"job {task.job.n} always fails")


def test_a_returned_dataclass_is_read_back_typed(jobs: JobRunner, records: Records) -> None:
    job_id, result = jobs.run(_receipt, 3, type=Receipt, result_ttl=60)
    assert result.status is Status.SUCCEEDED
    assert result.value == Receipt(3, Decimal("3.30"), NEW_YEAR, ["a"])
    assert (result.id, result.deliveries, result.error) == (job_id, 1, None)
    assert result.consumer is not None
    assert result.enqueued_at is not None and result.started_at is not None
    assert result.finished_at is not None
    assert result.enqueued_at <= result.started_at + timedelta(seconds=1)
    assert result.started_at <= result.finished_at
    # Without type=, the plain JSON; and it was acked in the same step.
    plain = jobs.results.get(job_id)
    assert plain is not None
    assert plain.value == {"n": 3, "total": "3.30", "at": 1767312000.0, "tags": ["a"]}
    assert records.pending() == 0


@pytest.mark.parametrize(
    "value",
    [None, 7, "text", [1, 2], {"a": [1]}, {"city": "Zoë in 東京"}, {"lone": "\ud800"}, "\udfff"],
)
def test_scalar_and_container_values(jobs: JobRunner, value: Any) -> None:
    _, result = jobs.run(lambda task: value, result_ttl=60)
    assert (result.status, result.value) == (Status.SUCCEEDED, value)


def test_records_are_written_after_redis_forgot_the_script(
    jobs: JobRunner, client: Any, records: Records
) -> None:
    # Given a queue that wrote one result (its acker's script is loaded)
    jobs.start(lambda task: {"n": task.job.n}, result_ttl=60)
    first = jobs.producer.enqueue(Numbered(1))
    assert jobs.results.wait(first, timeout=20).value == {"n": 1}
    # When Redis forgets its scripts (a restart, a failover) and more jobs end
    for node in client.get_nodes() if hasattr(client, "get_nodes") else [client]:
        (node.redis_connection if hasattr(node, "redis_connection") else node).script_flush()
    # Then their results and acks are written all the same (one at a time: partitions
    # make their own ids, and two made in one millisecond could be the same)
    for n in range(2, 6):
        job_id = jobs.producer.enqueue(Numbered(n))
        assert jobs.results.wait(job_id, timeout=20).value == {"n": n}
    assert records.pending() == 0


def test_a_value_without_json_form_fails_the_run_with_its_reason(
    jobs: JobRunner, records: Records
) -> None:
    jobs.start(lambda task: object(), result_ttl=60, claimer=LATER)
    job_id = jobs.producer.enqueue(Numbered(1))
    result = jobs.reaches(job_id, Status.RETRYING)
    assert result.error is not None
    assert result.error.startswith("EncodeError: the job's return value (object)")
    assert "cannot be stored as JSON" in result.error
    assert records.pending() == 1  # not acked: nothing was dropped
    assert not records.exists(job_id)


def test_wait_wakes_soon_after_the_job_ends(jobs: JobRunner) -> None:
    ended: dict[int, float] = {}

    def worker(task: flowd.Task[Numbered]) -> int:
        time.sleep(0.05)
        ended[task.job.n] = time.monotonic()
        return task.job.n

    jobs.start(worker, result_ttl=60, concurrency=1)
    lags = []
    for n in range(20):
        result = jobs.results.wait(jobs.producer.enqueue(Numbered(n)), timeout=10)
        lags.append(time.monotonic() - ended[n])
        assert result.value == n
    # Within 0.2 s of the job's end (the bound), in the median of 20.
    assert statistics.median(lags) < 0.2, lags


def test_wait_raises_result_timeout_on_time(jobs: JobRunner) -> None:
    job_id = jobs.producer.enqueue(Numbered(1))  # no worker runs
    started = time.monotonic()
    with pytest.raises(flowd.ResultTimeout) as caught:
        jobs.results.wait(job_id, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert (caught.value.job_id, caught.value.status) == (job_id, Status.WAITING)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, flowd.FlowdError)


def test_failed_then_succeeded_shows_retrying_then_succeeded(jobs: JobRunner) -> None:
    runs: list[int] = []

    def worker(task: flowd.Task[Numbered]) -> str:
        runs.append(task.deliveries)
        if task.deliveries == 1:
            raise ValueError("first run fails")
        return "second run"

    job_id = jobs.producer.enqueue(Numbered(1))
    handle = jobs.start(worker, result_ttl=60, claimer=SOON)
    retrying = jobs.reaches(job_id, Status.RETRYING)
    assert (retrying.error, retrying.deliveries) == ("ValueError: first run fails", 1)
    assert retrying.traceback is not None and "first run fails" in retrying.traceback
    done = jobs.results.wait(job_id, timeout=15)
    assert (done.status, done.value, done.deliveries) == (Status.SUCCEEDED, "second run", 2)
    assert runs == [1, 2]
    assert handle.stats().processed == 1


def test_a_dead_job_shows_dead_with_reason_and_traceback(jobs: JobRunner, records: Records) -> None:
    claimer = flowd.Claimer(min_idle_time=1, max_retries=1)
    job_id, result = jobs.run(_fails, 4, result_ttl=60, claimer=claimer)
    assert (result.status, result.error) == (Status.DEAD, "RuntimeError: job 4 always fails")
    assert result.traceback is not None and "always fails" in result.traceback
    assert result.finished_at is not None
    dead = [d for s in records.streams for d in flowd.DeadLetters(records.client, s).list()]
    assert [(d.dlq_id, d.original_id) for d in dead] == [(result.dead_letter_id, job_id)]


def test_dead_and_failed_records_are_kept_without_result_ttl(
    jobs: JobRunner, records: Records
) -> None:
    no_dlq = flowd.Claimer(min_idle_time=1, max_retries=0, dlq_stream=False)
    job_id, result = jobs.run(_fails, claimer=no_dlq)
    assert (result.status, result.error) == (Status.FAILED, "RuntimeError: job 1 always fails")
    assert result.dead_letter_id is None
    assert STATE_TTL_MS - 60_000 < records.pttl(job_id) <= STATE_TTL_MS


def test_where_is_a_job_without_result_ttl(jobs: JobRunner, records: Records) -> None:
    results, producer = jobs.results, jobs.producer
    assert results.get("1-0") is None  # never handed out
    assert results.get("s-unknown") is None
    gate, started = threading.Event(), threading.Event()

    def worker(task: flowd.Task[Numbered]) -> None:
        started.set()
        gate.wait(10)

    waiting = producer.enqueue(Numbered(1))
    assert results.get(waiting).status is Status.WAITING  # type: ignore[union-attr]
    scheduled = results.get(producer.enqueue(Numbered(2), delay=60))
    assert scheduled is not None and scheduled.status is Status.SCHEDULED
    assert scheduled.enqueued_at is not None
    assert abs((scheduled.enqueued_at - datetime.now(UTC)).total_seconds()) < 60
    cancelled = producer.enqueue(Numbered(3), delay=60)
    assert producer.cancel(cancelled)
    assert results.get(cancelled).status is Status.CANCELLED  # type: ignore[union-attr]

    jobs.start(worker, consumer="runner")
    started.wait(10)
    running = jobs.reaches(waiting, Status.RUNNING)
    assert (running.consumer, running.deliveries) == ("runner", 1)
    gate.set()
    assert jobs.reaches(waiting, Status.SUCCEEDED).value is None  # nothing kept
    assert not records.exists(waiting)
    # Once its entry is trimmed, nothing is left to say where it is.
    records.delete_entry(waiting)
    assert results.get(waiting) is None


def test_a_delayed_job_keeps_its_id(jobs: JobRunner, records: Records) -> None:
    jobs.start(lambda task: task.job.n * 10, result_ttl=60)
    job_id = jobs.producer.enqueue(Numbered(5), delay=0.3)
    assert job_id.startswith("s-")
    assert jobs.results.get(job_id).status is Status.SCHEDULED  # type: ignore[union-attr]
    result = jobs.results.wait(job_id, timeout=10)
    assert (result.status, result.value, result.id) == (Status.SUCCEEDED, 50, job_id)
    moved_to = records.alias(job_id)
    assert moved_to is not None and "-" in moved_to


def test_a_unique_job_returns_the_id_to_look_up(jobs: JobRunner) -> None:
    first = jobs.producer.enqueue(Numbered(1), unique_key="only")
    assert jobs.producer.enqueue(Numbered(2), unique_key="only") == first
    jobs.start(lambda task: task.job.n, result_ttl=60)
    result = jobs.results.wait(first, timeout=10)
    assert (result.status, result.value) == (Status.SUCCEEDED, 1)


def test_a_long_retry_is_followed_to_its_new_id(jobs: JobRunner) -> None:
    def worker(task: flowd.Task[Numbered]) -> str:
        if task.deliveries == 1:
            raise flowd.Retry(delay=0.5)  # longer than min_idle_time/3: acked and scheduled
        return "after the retry"

    _, result = jobs.run(worker, result_ttl=60, claimer=SOON)
    assert (result.status, result.value) == (Status.SUCCEEDED, "after the retry")
    assert result.deliveries == 2


def test_results_expire(jobs: JobRunner, records: Records) -> None:
    job_id, result = jobs.run(lambda task: "kept briefly", result_ttl=timedelta(seconds=1))
    assert result.value == "kept briefly"
    # Kept in a bucket of one second's successes, which expires a second after it ends.
    assert 0 < records.pttl(job_id) <= 2000
    wait_until(lambda: not records.exists(job_id), timeout=5)
    after = jobs.results.get(job_id)
    assert after is not None and after.value is None  # the acked entry is still in the stream


def test_many_waiters_on_one_job_all_wake(jobs: JobRunner) -> None:
    job_id = jobs.producer.enqueue(Numbered(9))
    got: list[Any] = []

    def wait() -> None:
        got.append(jobs.results.wait(job_id, timeout=15).value)

    waiters = [threading.Thread(target=wait) for _ in range(10)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)
    jobs.start(lambda task: task.job.n, result_ttl=60)
    for waiter in waiters:
        waiter.join(20)
    assert got == [9] * 10


def test_a_drain_keeps_results_too(jobs: JobRunner, records: Records) -> None:
    ids = jobs.producer.enqueue_bulk(Numbered(n) for n in range(50))
    assert jobs.make_queue(lambda task: task.job.n + 1, result_ttl=60).drain() == 50
    # Bulk jobs go round-robin over the partitions; ids are unique within one only.
    exact = [flowd.Results(records.client, s) for s in records.streams]
    values = [exact[n % len(exact)].get(i).value for n, i in enumerate(ids)]  # type: ignore[union-attr]
    assert values == list(range(1, 51))
    assert records.pending() == 0


def test_bad_arguments_are_refused_at_the_call(client: Any, stream: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match="job_id"):
        flowd.Results(client, stream).get("")
    with pytest.raises(flowd.ConfigurationError, match="stream"):
        flowd.Results(client, "")
    with pytest.raises(flowd.ConfigurationError, match="timeout"):
        flowd.Results(client, stream).wait("1-0", timeout=-1)
    with pytest.raises(flowd.ConfigurationError, match="result_ttl"):
        flowd.Queue(client, stream=stream, group=GROUP, job=Numbered, worker=print, result_ttl=0)


def test_an_id_two_partitions_made_is_refused_not_guessed(
    cluster: RedisCluster, stream: str
) -> None:
    client = cluster.client()
    streams = flowd.partition_streams(stream, CLUSTER_PARTITIONS)
    client.xadd(streams[0], {"n": "1"}, id="5-0")
    client.xadd(streams[1], {"n": "2"}, id="5-0")
    results = flowd.Results(client, stream, partitions=CLUSTER_PARTITIONS)
    with pytest.raises(flowd.ConfigurationError, match="known to 2 streams"):
        results.get("5-0")
    assert flowd.Results(client, streams[0]).get("5-0").status is Status.WAITING  # type: ignore[union-attr]
    client.close()


def test_give_up_and_undecodable_entries_end_dead(jobs: JobRunner, records: Records) -> None:
    def worker(task: flowd.Task[Numbered]) -> None:
        raise flowd.GiveUp("no point")

    _, result = jobs.run(worker, result_ttl=60, claimer=SOON)
    assert (result.status, result.error) == (Status.DEAD, "GiveUp: no point")
    assert result.deliveries == 1
    # An entry that does not decode into the job never runs: dead, with the reason.
    bad = records.client.xadd(records.streams[0], {"n": "not a number"}).decode()
    dead = flowd.Results(records.client, records.streams[0]).wait(bad, timeout=20)
    assert dead.status is Status.DEAD
    assert dead.error is not None and "n" in dead.error


def test_the_hand_framed_ack_call_is_what_redis_py_would_send() -> None:
    # Given records with and without non-ASCII text, on a stream whose name has some
    pairs = [("1-0", '{"value":1}'), ("2-0", '{"value":"Zoë 東京"}'), ("3-0", "")]
    # Then the frame is byte for byte redis-py's
    expected = b"".join(Connection().pack_commands([ack_call("é{s}", "g", 60_000, pairs)]))
    assert packed_ack_call("é{s}", "g", 60_000, pairs) == expected


def test_an_error_text_utf8_cannot_encode_is_kept_escaped(jobs: JobRunner) -> None:
    # Given a job whose exception's message holds a lone surrogate
    def fails(task: flowd.Task[Numbered]) -> None:
        raise ValueError("bad \udc80 byte")

    claimer = flowd.Claimer(min_idle_time=0.3, interval=0.1, max_retries=0)
    jobs.start(fails, result_ttl=60, claimer=claimer)
    job_id = jobs.producer.enqueue(Numbered(1))
    # Then it ends dead with its reason and traceback, the surrogate escaped
    result = jobs.reaches(job_id, Status.DEAD)
    assert result.error == "ValueError: bad \\udc80 byte"
    assert result.traceback is not None and "bad \\udc80 byte" in result.traceback
