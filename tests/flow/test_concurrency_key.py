"""Per-key concurrency: ``Queue(concurrency_key=..., max_per_key=...)`` across processes.

The multi-process tests run tests/flow/keyed_worker.py children on one stream; each
job counts itself in Redis (INCR at its start, DECR at its end), so a second job of one
key running at once anywhere shows as an overlap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from tests.helpers import (
    GROUP,
    REPO,
    Numbered,
    QueueFactory,
    Recorder,
    as_str,
    enqueue_numbers,
    numbered_queue,
    pending_ids,
    terminate,
    wait_until,
)
from tests.redis_cluster import RedisCluster

WORKER = Path(__file__).with_name("keyed_worker.py")
WAIT = 60.0


class Workers:
    """keyed_worker.py children on the test's stream, terminated (or killed) at the end."""

    def __init__(self, redis_url: str, stream: str) -> None:
        self.redis_url = redis_url
        self.stream = stream
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, consumer: str, seconds: float, hot: int, min_idle: float = 1.0) -> Any:
        args = (self.redis_url, self.stream, consumer, seconds, hot, min_idle)
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() else "")
        return proc

    def stop(self) -> list[str]:
        """Stop them all; the stderr of each that did not exit cleanly."""
        errors = []
        for proc in self.procs:
            if proc.poll() is None:
                terminate(proc, 20)
            if proc.returncode not in (0, -signal.SIGKILL):
                errors.append(proc.stderr.read() if proc.stderr else "")
        for proc in self.procs:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return errors


@pytest.fixture
def workers(redis_url: str, stream: str) -> Iterator[Workers]:
    made = Workers(redis_url, stream)
    try:
        yield made
    finally:
        errors = made.stop()
    assert not errors, errors


def ints(values: Any) -> list[int]:
    return [int(v) for v in values]


def held_leases(client: redis.Redis, stream: str) -> list[str]:
    """Keys of ``stream`` (max_per_key=1) whose lease is held: their holder is pending."""
    pending = pending_ids(client, stream)
    keys = client.keys(f"{{{stream}}}:concurrency:{GROUP}:*")
    held = []
    for key in keys:
        holder = client.get(key)
        if holder is not None and as_str(holder) in pending:
            held.append(as_str(key))
    return held


def delivery_counts(client: redis.Redis, stream: str) -> list[int]:
    rows: Any = client.xpending_range(stream, GROUP, min="-", max="+", count=10_000)
    return [int(row["times_delivered"]) for row in rows]


def test_one_job_per_key_across_processes_while_other_keys_flow(
    client: redis.Redis, stream: str, workers: Workers
) -> None:
    # Given 20 jobs of one hot key (0.1 s each: 2 s one after another, twice the
    # 1 s min_idle_time) and then 12 jobs of keys of their own
    # consumed by three processes with max_per_key=1
    for name in ("w1", "w2", "w3"):
        workers.start(name, 0.1, hot=20)
    # When the jobs come
    enqueue_numbers(client, stream, 32)
    counts: list[int] = []

    def all_done() -> bool:
        counts.extend(delivery_counts(client, stream))
        return client.llen(f"{stream}:done") == 32

    wait_until(all_done, WAIT, interval=0.05)
    done = ints(client.lrange(f"{stream}:done", 0, -1))
    # Then every job ran once, and never two of one key at once anywhere
    assert sorted(done) == list(range(32))
    assert client.get(f"{stream}:overlaps") is None
    # ... while the other keys went on: all 12 finished before the hot key's 10th job
    assert done.index(max(n for n in done if n >= 20)) < done.index(9)
    assert max(ints(client.lrange(f"{stream}:totals", 0, -1))) >= 2
    # ... and the jobs that waited for their key spent no delivery: each ran on its
    # first, and no pending entry was ever seen delivered twice
    deliveries = client.hgetall(f"{stream}:deliveries")
    assert {int(v) for v in deliveries.values()} == {1}
    assert counts and max(counts) == 1  # 0: handed back from a stalled read-ahead
    assert not held_leases(client, stream)


def test_a_killed_workers_key_is_free_after_its_lease(
    client: redis.Redis, stream: str, workers: Workers, make_queue: QueueFactory
) -> None:
    # Given a worker process running job 0 of the hot key (for 60 s)
    proc = workers.start("doomed", -1.0, hot=2)
    producer = flowd.Producer(client, stream)
    producer.enqueue(Numbered(0))
    wait_until(lambda: client.sismember(f"{stream}:started", 0), WAIT)

    # ... and a second consumer, this process, with a 1 s lease
    def work(task: flowd.Task[Numbered]) -> None:
        client.sadd(f"{stream}:started", task.job.n)
        client.rpush(f"{stream}:done", task.job.n)

    make_queue.run(
        make_queue(
            work,
            concurrency=2,
            block=0.5,
            claimer=flowd.Claimer(min_idle_time=1),
            concurrency_key=lambda job: "hot" if job.n < 2 else job.n,
            max_per_key=1,
        )
    )
    second = producer.enqueue(Numbered(1))  # the hot key, to whichever consumer reads it
    producer.enqueue(Numbered(7))  # another key: runs at once
    wait_until(lambda: b"7" in client.lrange(f"{stream}:done", 0, -1), WAIT)
    # When the first worker holds the key for more than its lease time, job 1 waits
    time.sleep(2.5)
    assert not client.sismember(f"{stream}:started", 1)
    assert second in pending_ids(client, stream)
    # When the first worker is killed
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # Then the key is free again after the lease: job 1 runs, and job 0 is claimed and
    # runs again, here, never beside another job of its key
    wait_until(lambda: len(client.lrange(f"{stream}:done", 0, -1)) == 3, WAIT)
    assert sorted(ints(client.lrange(f"{stream}:done", 0, -1))) == [0, 1, 7]
    assert client.get(f"{stream}:overlaps") is None
    wait_until(lambda: not pending_ids(client, stream), WAIT)


def test_a_key_function_that_fails_dead_letters_with_its_reason(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a key function that raises for job 3 and returns no key for job 4
    def key(job: Numbered) -> object:
        if job.n == 3:
            raise LookupError("no customer for job 3")
        return None if job.n == 4 else job.n % 2

    rec = Recorder()
    ids = enqueue_numbers(client, stream, 6)
    # When a queue runs them
    queue = make_queue(rec, claimer=flowd.Claimer(), concurrency_key=key, block=0.5)
    handle = make_queue.run(queue)
    dead = flowd.DeadLetters(client, stream)
    wait_until(lambda: rec.count == 4 and len(dead.list()) == 2, WAIT)
    # Then those two are dead-lettered with the reason, and the others ran
    reasons = {entry.original_id: entry.reason for entry in dead.list()}
    assert reasons[ids[3]] == "concurrency_key raised LookupError: no customer for job 3"
    assert reasons[ids[4]] == ("concurrency_key returned NoneType None, not a str, int or bytes")
    assert sorted(rec.numbers()) == [0, 1, 2, 5]
    assert handle.is_running
    wait_until(lambda: not pending_ids(client, stream), WAIT)


def test_a_failed_job_frees_its_key_while_it_waits_for_its_retry(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given two jobs of one key, the first failing once (retried after 30 s)
    def work(task: flowd.Task[Numbered]) -> None:
        if task.job.n == 0:
            raise RuntimeError("try later")

    rec = Recorder(work)
    first, _ = enqueue_numbers(client, stream, 2)
    queue = make_queue(rec, claimer=flowd.Claimer(min_idle_time=30), concurrency_key=lambda job: 1)
    handle = make_queue.run(queue)
    # Then the second runs at once: the failed run released the key
    # (within 15 s: the lease would last 30 s)
    wait_until(lambda: rec.ns() == {1} and handle.stats().failed == 1, 15)
    wait_until(lambda: pending_ids(client, stream) == {first}, WAIT)
    assert not held_leases(client, stream)


def test_stop_hands_back_jobs_waiting_for_their_key(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a queue running job 0 of a key, with jobs 1 and 2 of that key waiting
    started = threading.Event()

    def work(task: flowd.Task[Numbered]) -> None:
        if task.job.n == 0:
            started.set()
            time.sleep(0.5)

    ids = enqueue_numbers(client, stream, 3)
    queue = make_queue(work, claimer=flowd.Claimer(), concurrency_key=lambda job: "k")
    handle = queue.run()
    assert started.wait(WAIT)
    wait_until(lambda: handle.stats().processed == 0 and len(pending_ids(client, stream)) == 3)
    # When it stops
    assert handle.stop(timeout=10)
    # Then job 0 finished, and the waiting ones are pending, never delivered since
    assert pending_ids(client, stream) == set(ids[1:])
    assert set(delivery_counts(client, stream)) == {0}
    assert not held_leases(client, stream)  # job 0's XACK ended its lease
    # ... so the next run takes them as first deliveries
    rec = Recorder()
    make_queue.run(make_queue(rec, claimer=flowd.Claimer(), concurrency_key=lambda job: "k"))
    wait_until(lambda: rec.count == 2, WAIT)
    assert sorted(rec.runs) == [(1, 1, ids[1]), (2, 1, ids[2])]


def test_drain_runs_the_jobs_that_wait_for_their_key(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given 12 jobs of 3 keys
    enqueue_numbers(client, stream, 12)
    rec = Recorder()
    running: dict[int, int] = {}
    overlaps = []
    lock = threading.Lock()

    def work(task: flowd.Task[Numbered]) -> None:
        key = task.job.n % 3
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 2:
                overlaps.append(task.job.n)
        time.sleep(0.02)
        with lock:
            running[key] -= 1
        rec(task)

    # When a drain runs them with two per key
    queue = make_queue(
        work, concurrency=8, claimer=None, concurrency_key=lambda job: job.n % 3, max_per_key=2
    )
    # Then it returns once every one ran, at most two of a key at once
    assert queue.drain(timeout=WAIT) == 12
    assert sorted(rec.numbers()) == list(range(12))
    assert not overlaps
    assert max(running.values()) == 0


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"concurrency_key": "customer_id"}, "concurrency_key"),
        ({"concurrency_key": lambda job: job.n, "max_per_key": 0}, "max_per_key"),
        ({"concurrency_key": lambda job: job.n, "max_per_key": "2"}, "max_per_key"),
        ({"concurrency_key": lambda job: job.n, "max_per_key": True}, "max_per_key"),
        ({"max_per_key": 2}, "concurrency_key"),
    ],
)
def test_bad_settings_are_refused_naming_them(
    client: redis.Redis, stream: str, options: dict[str, Any], names: str
) -> None:
    with pytest.raises(flowd.ConfigurationError, match=names):
        numbered_queue(client, stream, **options)


@pytest.fixture
def cluster_client(cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    made = cluster.client()
    yield made
    made.close()


def test_one_job_per_key_on_a_cluster(cluster_client: redis.cluster.RedisCluster) -> None:
    # Given a stream on a cluster, with 30 jobs of 3 keys, and two consumers
    stream = f"keys-{os.getpid()}-{time.monotonic_ns()}"
    flowd.Producer(cluster_client, stream).enqueue_bulk(Numbered(n) for n in range(30))
    lock = threading.Lock()
    running: dict[int, int] = {}
    overlaps: list[int] = []
    rec = Recorder()

    def work(task: flowd.Task[Numbered]) -> None:
        key = task.job.n % 3
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(task.job.n)
        time.sleep(0.01)
        with lock:
            running[key] -= 1
        rec(task)

    handles = [
        numbered_queue(
            cluster_client,
            stream,
            work,
            consumer=name,
            concurrency=4,
            block=0.5,
            claimer=flowd.Claimer(min_idle_time=1),
            concurrency_key=lambda job: job.n % 3,
        ).run()
        for name in ("c1", "c2")
    ]
    try:
        # Then every job runs once, never two of a key at once
        wait_until(lambda: rec.count >= 30, WAIT)
    finally:
        assert all([handle.stop(timeout=10) for handle in handles])
    assert sorted(rec.numbers()) == list(range(30))
    assert not overlaps
    assert {t.deliveries for t in rec.tasks} == {1}


def test_two_per_key_across_two_consumers(client: redis.Redis, stream: str) -> None:
    # Given 24 jobs of 2 keys, and two consumers allowing two jobs of a key at once
    lock = threading.Lock()
    running: dict[int, int] = {}
    most: dict[int, int] = {}
    rec = Recorder()

    def work(task: flowd.Task[Numbered]) -> None:
        key = task.job.n % 2
        with lock:
            running[key] = running.get(key, 0) + 1
            most[key] = max(most.get(key, 0), running[key])
        time.sleep(0.03)
        with lock:
            running[key] -= 1
        rec(task)

    enqueue_numbers(client, stream, 24)
    handles = [
        numbered_queue(
            client,
            stream,
            work,
            consumer=name,
            concurrency=4,
            block=0.5,
            claimer=flowd.Claimer(min_idle_time=1),
            concurrency_key=lambda job: job.n % 2,
            max_per_key=2,
        ).run()
        for name in ("c1", "c2")
    ]
    try:
        wait_until(lambda: rec.count >= 24, WAIT)
    finally:
        assert all([handle.stop(timeout=10) for handle in handles])
    # Then each ran once, at most two of a key at once, and two did run side by side
    assert sorted(rec.numbers()) == list(range(24))
    assert max(most.values()) == 2
    assert {t.deliveries for t in rec.tasks} == {1}


def test_a_key_last_held_by_an_acked_job_is_taken_without_asking_redis(
    client: redis.Redis, stream: str
) -> None:
    # Given 200 jobs of 4 keys on one consumer, one job per key at once
    lock = threading.Lock()
    running: dict[int, int] = {}
    overlaps: list[int] = []
    rec = Recorder()

    def work(task: flowd.Task[Numbered]) -> None:
        key = task.job.n % 4
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(key)
        time.sleep(0.002)
        with lock:
            running[key] -= 1
        rec(task)

    enqueue_numbers(client, stream, 200)
    client.config_resetstat()
    handle = numbered_queue(
        client,
        stream,
        work,
        concurrency=4,
        block=0.5,
        claimer=flowd.Claimer(min_idle_time=5),
        concurrency_key=lambda job: job.n % 4,
    ).run()
    try:
        wait_until(lambda: rec.count >= 200, WAIT)
    finally:
        assert handle.stop(timeout=10)
    # Then each ran once, never two of a key at once
    assert sorted(rec.numbers()) == list(range(200))
    assert not overlaps
    # And most leases were taken over from a job this consumer saw acked: Redis was
    # asked whether the last holder is still pending for few of them
    asked = client.info("commandstats").get("cmdstat_xpending", {}).get("calls", 0)
    assert asked < 100, asked
