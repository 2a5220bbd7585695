"""Expiry: ``enqueue(job, expires=...)``; a job not started by its deadline is never run.

Each job body here INCRs a Redis counter, so "never run" is read from Redis: the
counter of the jobs that expired stays 0, and the dead letters hold them with the
reason "expired" (or, with ``dead_letter_expired=False``, they are acked unrun).
Deadlines are short (a few tenths of a second) and the tests wait until they have
passed before any worker starts; jobs meant to run get minutes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

import flowd
from flowd._redis.keys import derived_key, partition_streams
from flowd.contrib.prometheus import PrometheusHooks
from tests.helpers import (
    REPO,
    Hang,
    Numbered,
    QueueFactory,
    as_str,
    child_env,
    numbered_queue,
    pending_count,
    terminate,
    wait_until,
)

#: A deadline that passes before the test starts a worker.
SHORT = 0.2
#: A deadline no test reaches.
LONG = 300


def wait_past(seconds: float) -> None:
    """Sleep until a deadline ``seconds`` from before this call has surely passed."""
    time.sleep(seconds + 0.05)


class Counting:
    """A worker that INCRs ``{stream}:runs`` in Redis for each run (and remembers the jobs)."""

    def __init__(self, client: Any, stream: str) -> None:
        self.client = client
        self.key = derived_key(stream, "runs")
        self.jobs: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, task: flowd.Task[Numbered]) -> None:
        self.client.incr(self.key)
        with self.lock:
            self.jobs.append(task.job.n)

    @property
    def runs(self) -> int:
        return int(self.client.get(self.key) or 0)


class Seen(flowd.Hooks):
    """Records the expired and dead-lettered tasks its queue reports."""

    def __init__(self) -> None:
        self.expired: list[flowd.Task[Any]] = []
        self.dead: list[flowd.Task[Any]] = []

    def on_expired(self, task: flowd.Task[Any]) -> None:
        self.expired.append(task)

    def on_dead_letter(self, task: flowd.Task[Any]) -> None:
        self.dead.append(task)


def dead_letters(client: Any, stream: str, partitions: int = 1) -> list[flowd.DeadLetter]:
    return [
        dead
        for s in partition_streams(stream, partitions)
        for dead in flowd.DeadLetters(client, s).list(1000)
    ]


# -- what enqueue accepts


@pytest.mark.parametrize(
    "bad",
    [
        0,
        -1,
        -0.5,
        timedelta(0),
        timedelta(seconds=-1),
        True,
        False,
        "60",
        float("nan"),
        float("inf"),
        datetime.now(UTC) - timedelta(seconds=1),
    ],
    ids=repr,
)
def test_bad_expires_is_refused_naming_it_and_nothing_is_sent(
    client: redis.Redis, stream: str, bad: object
) -> None:
    producer = flowd.Producer(client, stream)
    with pytest.raises(flowd.ConfigurationError, match="expires"):
        producer.enqueue(Numbered(1), expires=bad)  # type: ignore[arg-type]
    with pytest.raises(flowd.ConfigurationError, match="expires"):
        producer.enqueue_bulk([Numbered(1)], expires=bad)  # type: ignore[arg-type]
    with pytest.raises(flowd.ConfigurationError, match="expires"):
        producer.enqueue(Numbered(1), delay=5, unique_key="k", expires=bad)  # type: ignore[arg-type]
    assert client.keys(f"*{stream}*") == []


def test_a_naive_datetime_is_refused_with_a_clear_error(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    naive = datetime.now() + timedelta(hours=1)  # naive: the point of the test
    with pytest.raises(flowd.ConfigurationError, match=r"expires .*naive datetime.*tzinfo"):
        producer.enqueue(Numbered(1), expires=naive)
    assert not client.exists(stream)


def test_a_deadline_not_after_the_delayed_start_is_refused(
    client: redis.Redis, stream: str
) -> None:
    # Such a job could never run: say so at the call instead of dead-lettering it later
    producer = flowd.Producer(client, stream)
    with pytest.raises(flowd.ConfigurationError, match=r"expires .* not after the job's start"):
        producer.enqueue(Numbered(1), delay=60, expires=30)
    with pytest.raises(flowd.ConfigurationError, match="from at"):
        soon = datetime.now(UTC) + timedelta(seconds=30)
        producer.enqueue(Numbered(1), at=soon + timedelta(seconds=30), expires=soon)
    with pytest.raises(flowd.ConfigurationError, match="expires"):
        producer.enqueue_bulk([Numbered(1)], delay=60, expires=timedelta(seconds=60))
    assert client.keys(f"*{stream}*") == []


@pytest.mark.parametrize("bad", [0, 1, "no", None])
def test_dead_letter_expired_must_be_a_bool(client: redis.Redis, stream: str, bad: object) -> None:
    with pytest.raises(flowd.ConfigurationError, match="dead_letter_expired"):
        numbered_queue(client, stream, dead_letter_expired=bad)


def test_the_deadline_travels_in_a_reserved_field_the_job_never_sees(
    client: redis.Redis, stream: str
) -> None:
    # Given jobs with each kind of expires, relative ones counted from the call
    producer = flowd.Producer(client, stream)
    before = time.time()
    producer.enqueue(Numbered(1), expires=60)
    producer.enqueue(Numbered(2), expires=timedelta(minutes=1))
    producer.enqueue(Numbered(3), expires=datetime.now(UTC) + timedelta(seconds=60))
    producer.enqueue_bulk([Numbered(4), Numbered(5)], expires=60.0)
    after = time.time()
    # Then each entry holds its job's field and flowd:expires, the deadline in epoch ms
    entries: Any = client.xrange(stream)
    assert len(entries) == 5
    for _, fields in entries:
        assert set(fields) == {b"n", b"flowd:expires"}
        deadline = int(fields[b"flowd:expires"])
        assert int((before + 60) * 1000) <= deadline <= int((after + 60) * 1000)
    # And the jobs decode and run as any other (the decoder never sees the field)
    worker = Counting(client, stream)
    assert numbered_queue(client, stream, worker, claimer=None).drain() == 5
    assert sorted(worker.jobs) == [1, 2, 3, 4, 5]


# -- consuming


def test_expired_jobs_are_dead_lettered_unrun_and_counted(
    any_client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 5 jobs whose deadline passed before any worker ran, and 2 that may still run
    producer = flowd.Producer(any_client, stream)
    expired = producer.enqueue_bulk([Numbered(i) for i in range(5)], expires=SHORT)
    wait_past(SHORT)
    fresh = [producer.enqueue(Numbered(10), expires=LONG), producer.enqueue(Numbered(11))]
    # When a queue with the default dead-letter path runs them
    worker, seen, dlq_seen = Counting(any_client, stream), Seen(), []
    queue = make_queue(worker, claimer=flowd.Claimer(dlq_worker=dlq_seen.append), hooks=[seen])
    handle = make_queue.run(queue)
    wait_until(lambda: handle.stats().expired == 5 and handle.stats().processed == 2)
    stats = handle.stats()
    # Then only the two ran; the five are dead letters with the reason "expired"
    assert worker.runs == 2 and sorted(worker.jobs) == [10, 11]
    assert (stats.dead_lettered, stats.failed, stats.expired) == (5, 0, 5)
    dead = dead_letters(any_client, stream)
    assert sorted(d.original_id for d in dead) == sorted(expired)
    assert {d.reason for d in dead} == {"expired"}
    assert all(d.deliveries == 1 and set(d.fields) == {"n"} for d in dead)
    # And the dlq_worker and both hooks saw each of them, with the reason
    assert sorted(t.id for t in dlq_seen) == sorted(expired)
    assert sorted(t.id for t in seen.expired) == sorted(t.id for t in seen.dead) == sorted(expired)
    assert {t.error for t in seen.expired + seen.dead + dlq_seen} == {"expired"}
    wait_until(lambda: pending_count(any_client, stream) == 0)
    assert set(fresh).isdisjoint(d.original_id for d in dead)


def test_requeued_expired_jobs_run(client: redis.Redis, stream: str) -> None:
    # A requeue is an operator's "run it after all": the deadline stays behind
    flowd.Producer(client, stream).enqueue_bulk([Numbered(1), Numbered(2)], expires=SHORT)
    wait_past(SHORT)
    worker = Counting(client, stream)
    assert numbered_queue(client, stream, worker).drain() == 0
    assert flowd.DeadLetters(client, stream).requeue_all() == 2
    assert numbered_queue(client, stream, worker).drain() == 2
    assert sorted(worker.jobs) == [1, 2]


def test_a_job_waiting_for_a_permit_past_its_deadline_is_not_run(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given one worker thread, busy with a slow job, and a job with a deadline behind it
    hang, producer = Hang(), flowd.Producer(client, stream)
    producer.enqueue(Numbered(1))
    producer.enqueue(Numbered(2), expires=0.5)
    ran: list[int] = []

    def work(task: flowd.Task[Numbered]) -> None:
        ran.append(task.job.n)
        if task.job.n == 1:
            hang(task)

    handle = make_queue.run(make_queue(work, concurrency=1, claimer=flowd.Claimer()))
    assert hang.started.wait(10)
    # When the deadline passes while job 2 waits (in the stream or read ahead), then the
    # slow job ends
    wait_past(0.5)
    hang.release.set()
    # Then job 2 never runs: it is dead-lettered as expired (read ahead and handed back
    # meanwhile, it waits for the claimer's next sweep)
    wait_until(lambda: handle.stats().expired == 1, timeout=30)
    assert ran == [1]
    assert [d.reason for d in dead_letters(client, stream)] == ["expired"]


def test_with_dead_letter_expired_false_expired_jobs_are_acked_and_counted(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given expired jobs, and one that may run, on a queue that keeps results
    producer = flowd.Producer(client, stream)
    expired = producer.enqueue_bulk([Numbered(i) for i in range(3)], expires=SHORT)
    wait_past(SHORT)
    producer.enqueue(Numbered(10), expires=LONG)
    worker, seen = Counting(client, stream), Seen()
    queue = make_queue(
        worker,
        claimer=flowd.Claimer(),
        dead_letter_expired=False,
        result_ttl=60,
        hooks=[seen],
    )
    handle = make_queue.run(queue)
    wait_until(lambda: handle.stats().expired == 3 and handle.stats().processed == 1)
    # Then they are acked unrun, counted as expired, not dead-lettered
    assert worker.runs == 1
    stats = handle.stats()
    assert (stats.expired, stats.dead_lettered, stats.failed) == (3, 0, 0)
    assert dead_letters(client, stream) == []
    wait_until(lambda: pending_count(client, stream) == 0)
    assert sorted(t.id for t in seen.expired) == sorted(expired) and seen.dead == []
    # And their results say they failed, because they expired
    results = flowd.Results(client, stream)
    for job_id in expired:
        result = results.wait(job_id, timeout=10)
        assert (result.status, result.error) == (flowd.JobStatus.FAILED, "expired")


@pytest.mark.parametrize("dead_letter_expired", [True, False])
def test_without_a_claimer_expired_jobs_are_acked(
    client: redis.Redis,
    stream: str,
    dead_letter_expired: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No claimer means no dead-letter path: an expired job is acked, with a WARNING
    # unless the queue asked for that
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1), expires=SHORT)
    wait_past(SHORT)
    worker = Counting(client, stream)
    queue = numbered_queue(
        client, stream, worker, claimer=None, dead_letter_expired=dead_letter_expired, result_ttl=60
    )
    assert queue.drain() == 0
    assert worker.runs == 0 and pending_count(client, stream) == 0
    result = flowd.Results(client, stream).get(job_id)
    assert result is not None and (result.status, result.error) == (
        flowd.JobStatus.FAILED,
        "expired",
    )
    warned = [r for r in caplog.records if "no dead-letter path" in r.getMessage()]
    assert bool(warned) is dead_letter_expired


def test_an_expired_dead_job_reads_as_dead_with_the_reason(
    client: redis.Redis, stream: str
) -> None:
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1), expires=SHORT)
    wait_past(SHORT)
    assert numbered_queue(client, stream, Counting(client, stream), result_ttl=60).drain() == 0
    result = flowd.Results(client, stream).get(job_id)
    assert result is not None
    assert (result.status, result.error, result.value) == (flowd.JobStatus.DEAD, "expired", None)
    assert result.dead_letter_id == dead_letters(client, stream)[0].dlq_id


def test_an_unreadable_deadline_is_dead_lettered_with_why(client: redis.Redis, stream: str) -> None:
    # A flowd:expires that is not a deadline (written by something else) is a bad message
    msg_id = as_str(client.xadd(stream, {"n": "1", "flowd:expires": "tomorrow"}))
    worker = Counting(client, stream)
    assert numbered_queue(client, stream, worker).drain() == 0
    (dead,) = dead_letters(client, stream)
    assert dead.original_id == msg_id and "unreadable flowd:expires" in dead.reason
    assert worker.runs == 0


# -- delayed, unique and retried jobs keep their deadline


def test_delayed_jobs_run_before_their_deadline_and_expire_after_it(
    client: redis.Redis, stream: str
) -> None:
    # Given delayed jobs whose deadline passes while they are scheduled (one with a unique
    # key, some in bulk), and one whose deadline is far
    producer = flowd.Producer(client, stream)
    late = [producer.enqueue(Numbered(1), delay=0.1, expires=0.3, unique_key="one")]
    late += producer.enqueue_bulk([Numbered(2), Numbered(3)], delay=0.1, expires=0.3)
    on_time = producer.enqueue(Numbered(4), delay=0.1, expires=LONG)
    wait_past(0.3)
    # When a queue moves them into the stream and runs them
    worker = Counting(client, stream)
    assert numbered_queue(client, stream, worker, result_ttl=60).drain() == 1
    # Then only the one with time left ran; the others are dead letters, found by the ids
    # enqueue returned, and the unique key is free again
    assert worker.jobs == [4]
    assert [d.reason for d in dead_letters(client, stream)] == ["expired"] * 3
    results = flowd.Results(client, stream)
    assert {results.get(job_id).status for job_id in late} == {flowd.JobStatus.DEAD}  # type: ignore[union-attr]
    assert results.get(on_time).status is flowd.JobStatus.SUCCEEDED  # type: ignore[union-attr]
    assert producer.enqueue(Numbered(5), unique_key="one") not in late


@pytest.mark.parametrize("dead_letter_expired", [True, False])
def test_an_expired_unique_job_frees_its_key(
    client: redis.Redis, stream: str, dead_letter_expired: bool
) -> None:
    producer = flowd.Producer(client, stream)
    first = producer.enqueue(Numbered(1), unique_key="k", expires=SHORT)
    wait_past(SHORT)
    assert producer.enqueue(Numbered(2), unique_key="k") == first  # still waiting: held
    queue = numbered_queue(
        client, stream, Counting(client, stream), dead_letter_expired=dead_letter_expired
    )
    assert queue.drain() == 0
    assert not client.exists(derived_key(stream, "unique:k"))
    assert producer.enqueue(Numbered(3), unique_key="k") != first


def test_a_retry_keeps_the_deadline(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a job that asks for a retry due after its deadline (long enough to leave the
    # pending list: the retry re-adds the entry, with flowd:runs)
    worker = Counting(client, stream)

    def work(task: flowd.Task[Numbered]) -> None:
        worker(task)
        raise flowd.Retry(delay=2.5)

    handle = make_queue.run(make_queue(work, claimer=flowd.Claimer(min_idle_time=0.5)))
    job_id = flowd.Producer(client, stream).enqueue(Numbered(1), expires=2.0)
    deadline = as_str(client.xrange(stream)[0][1][b"flowd:expires"])
    # Then it ran once; its second run was due after the deadline, so it never started
    wait_until(lambda: handle.stats().expired == 1, timeout=15)
    assert worker.runs == 1
    (dead,) = dead_letters(client, stream)
    assert (dead.reason, dead.deliveries) == ("expired", 2)
    raw = client.xrange(flowd.DeadLetters(client, stream).dlq_stream)[0][1]
    assert as_str(raw[b"flowd:expires"]) == deadline and as_str(raw[b"flowd:runs"]) == "1"
    assert dead.original_id != job_id  # the re-added entry


# -- several worker processes, and a cluster


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # all stop at once, then each is waited for
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        terminate(proc, 15)


def test_several_worker_processes_never_run_an_expired_job(
    client: redis.Redis, redis_url: str, stream: str, workers: list[subprocess.Popen[bytes]]
) -> None:
    # Given a backlog that mixes jobs whose deadline passed with jobs that may run
    producer = flowd.Producer(client, stream)
    expired: list[str] = []
    for start in range(0, 60, 10):
        expired += producer.enqueue_bulk(
            [Numbered(n) for n in range(start, start + 5)], expires=SHORT
        )
        producer.enqueue_bulk([Numbered(n) for n in range(start + 5, start + 10)], expires=LONG)
    wait_past(SHORT)
    # When three worker processes consume the stream
    env = child_env(redis_url, stream)
    for _ in range(3):
        command = [sys.executable, "-m", "flowd", "worker", "tests.flow.expiry_app:make_queue"]
        workers.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL))
    # Then every job that may run ran once, and no expired one ran: each is a dead letter
    ran = derived_key(stream, "ran")
    wait_until(lambda: client.scard(ran) == 30, timeout=60)
    wait_until(lambda: len(dead_letters(client, stream)) == 30, timeout=30)
    assert {int(n) for n in client.smembers(ran)} == {
        n for start in range(0, 60, 10) for n in range(start + 5, start + 10)
    }
    assert int(client.get(derived_key(stream, "runs")) or 0) == 30
    dead = dead_letters(client, stream)
    assert sorted(d.original_id for d in dead) == sorted(expired)
    assert {d.reason for d in dead} == {"expired"}


def test_expiry_on_a_cluster_with_partitions(cluster: Any, stream: str) -> None:
    # Given a queue in 3 partitions (one per master), expired and live jobs in each
    client = cluster.client()
    try:
        producer = flowd.Producer(client, stream, partitions=3)
        expired = producer.enqueue_bulk([Numbered(i) for i in range(6)], expires=SHORT)
        expired.append(producer.enqueue(Numbered(6), delay=0.1, expires=0.2, unique_key="u"))
        wait_past(SHORT)
        producer.enqueue_bulk([Numbered(i) for i in range(10, 13)], expires=LONG)
        # When it drains
        worker = Counting(client, stream)
        queue = numbered_queue(client, stream, worker, partitions=3, result_ttl=60)
        assert queue.drain() == 3
        # Then only the live ones ran; the rest are dead letters of their partitions
        assert sorted(worker.jobs) == [10, 11, 12] and worker.runs == 3
        dead = dead_letters(client, stream, 3)
        assert len(dead) == 7 and {d.reason for d in dead} == {"expired"}
        # (ids repeat across partitions: each dead job is asked of its own partition)
        statuses = {flowd.Results(client, d.stream).get(d.original_id).status for d in dead}  # type: ignore[union-attr]
        assert statuses == {flowd.JobStatus.DEAD}
        scheduled = flowd.Results(client, stream, partitions=3).get(expired[-1])
        assert scheduled is not None and scheduled.error == "expired"
    finally:
        client.close()


def test_prometheus_counts_expired_jobs(client: redis.Redis, stream: str) -> None:
    registry = CollectorRegistry()
    flowd.Producer(client, stream).enqueue_bulk([Numbered(1), Numbered(2)], expires=SHORT)
    wait_past(SHORT)
    hooks = [PrometheusHooks(registry)]
    assert numbered_queue(client, stream, Counting(client, stream), hooks=hooks).drain() == 0
    labels = {"stream": stream}
    assert registry.get_sample_value("flowd_jobs_expired_total", labels) == 2
    assert registry.get_sample_value("flowd_jobs_dead_lettered_total", labels) == 2
