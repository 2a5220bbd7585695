"""Load and soak: a steady enqueue rate keeps memory flat; run/stop cycles leak nothing.

The soak lasts ``FLOWD_SOAK_SECONDS`` (default 60, warm-up included); set it
higher for a longer run, e.g. ``FLOWD_SOAK_SECONDS=1800``. Each test has a
redis-server of its own, so its ``CLIENT LIST`` shows only this test's clients.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
import redis

import flowd
from tests.helpers import numbered_queue, running_server, wait_until
from tests.redis_server import RedisServer

GROUP = "g"
WARM_UP = 10.0
SAMPLE_EVERY = 2.0
# At least six samples after the warm-up, whatever FLOWD_SOAK_SECONDS says
SOAK_SECONDS = max(float(os.environ.get("FLOWD_SOAK_SECONDS", "60")), WARM_UP + 6 * SAMPLE_EVERY)
RATE = 2000  # jobs per second
BATCH = 100  # jobs per enqueue_bulk round trip
MB = 1024 * 1024


@dataclass
class Payload(flowd.Job):
    """A job of a realistic size: a few fields, a couple hundred bytes."""

    n: int
    to: str
    subject: str
    body: str
    tags: list[str]


def payload(n: int) -> Payload:
    return Payload(
        n=n,
        to=f"user{n}@example.com",
        subject=f"message {n}",
        body="x" * 120,
        tags=["soak", str(n % 7)],
    )


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with running_server() as server:
        yield server


class Producer(threading.Thread):
    """Enqueues at RATE jobs per second, in BATCH-sized pipelined round trips, until stopped."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.producer = flowd.Producer(client, stream)
        self.stop_event = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self.stop_event.is_set():
                due = int((time.monotonic() - started) * RATE)
                if due - self.sent >= BATCH:
                    jobs = [payload(self.sent + i) for i in range(BATCH)]
                    self.producer.enqueue_bulk(jobs)
                    self.sent += BATCH
                else:
                    self.stop_event.wait(BATCH / RATE / 2)
        except BaseException as exc:
            self.error = exc
            raise


@dataclass
class Sample:
    at: float
    rss: int
    threads: int  # all of the process's
    flowd_threads: int
    backlog: int


def test_steady_load_keeps_memory_and_threads_flat(server: RedisServer) -> None:
    stream = "soak"
    client = redis.Redis(port=server.port)
    producer_client = redis.Redis(port=server.port)
    seen = bytearray(1)  # the worker touches the job, as real work would

    def work(task: flowd.Task[Payload]) -> None:
        seen[0] = (seen[0] + len(task.job.body) + task.job.n) % 256

    queue = flowd.Queue(
        client,
        stream=stream,
        group=GROUP,
        job=Payload,
        worker=work,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=10.0),
        housekeeping=flowd.Housekeeping(interval=2.0),  # trims acked entries as it goes
    )
    process = psutil.Process()
    samples: list[Sample] = []
    producer = Producer(producer_client, stream)

    # Given a queue under a steady RATE jobs/s
    handle = queue.run()
    try:
        started = time.monotonic()
        producer.start()
        # When it runs for SOAK_SECONDS, sampled every SAMPLE_EVERY seconds after the warm-up
        next_sample = started + WARM_UP
        while time.monotonic() < started + SOAK_SECONDS:
            time.sleep(max(0.0, min(next_sample, started + SOAK_SECONDS) - time.monotonic()))
            if time.monotonic() >= next_sample:
                stats = handle.stats()
                samples.append(
                    Sample(
                        time.monotonic() - started,
                        process.memory_info().rss,
                        threading.active_count(),
                        len(flowd_thread_names()),
                        producer.sent - stats.processed,
                    )
                )
                next_sample += SAMPLE_EVERY
            assert producer.is_alive(), producer.error
        producer.stop_event.set()
        producer.join(10)
        # Then the backlog is worked off at once
        wait_until(lambda: handle.stats().processed >= producer.sent, timeout=20)
    finally:
        producer.stop_event.set()
        assert handle.stop(timeout=10)
        stream_length = client.xlen(stream)
        client.close()
        producer_client.close()

    report = "\n".join(
        f"{s.at:6.1f}s rss={s.rss / MB:7.1f} MB threads={s.threads} "
        f"flowd_threads={s.flowd_threads} backlog={s.backlog}"
        for s in samples
    )
    print(report)  # shown with -rP, e.g. for a long FLOWD_SOAK_SECONDS run
    stats = handle.stats()
    elapsed = SOAK_SECONDS
    # The producer kept its rate, the queue kept up, and nothing failed or was lost
    assert producer.error is None
    assert producer.sent >= 0.9 * RATE * elapsed, (producer.sent, report)
    assert stats.processed == producer.sent and stats.failed == 0, stats
    assert max(s.backlog for s in samples) < 2 * RATE, report
    # Memory is flat after the warm-up: the end is within max(10 MB, 10%) of the start
    assert len(samples) >= 6, report
    start_rss = statistics.median(s.rss for s in samples[:3])
    end_rss = statistics.median(s.rss for s in samples[-3:])
    assert end_rss - start_rss < max(10 * MB, 0.10 * start_rss), report
    # The thread count does not move (other tests' threads may only end meanwhile)
    assert len({s.flowd_threads for s in samples}) == 1, report
    assert samples[-1].threads <= samples[0].threads, report
    # And housekeeping kept the stream short (approximate trims leave whole nodes)
    assert stream_length < 10 * RATE, stream_length


def flowd_thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("flowd-"))


def connections(admin: redis.Redis) -> int:
    return len(admin.client_list())


def test_run_stop_and_drain_cycles_leak_no_threads_or_connections(server: RedisServer) -> None:
    stream = "cycles"
    admin = redis.Redis(port=server.port)  # the only client left connected between cycles
    client = redis.Redis(port=server.port)
    done: list[int] = []
    lock = threading.Lock()

    def work(task: flowd.Task[Payload]) -> None:
        time.sleep(0.001)
        with lock:
            done.append(task.job.n)

    queue = numbered_queue(
        client,
        stream,
        work,
        job=Payload,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=30.0),
        housekeeping=flowd.Housekeeping(interval=0.5),
    )
    producer = flowd.Producer(client, stream)
    threads_before = threading.active_count()
    assert connections(admin) == 1
    sent = 0
    counts: list[tuple[int, int]] = []
    for cycle in range(30):
        # run(), some jobs, stop(): when idle on even cycles, in the middle of work on odd ones
        with queue.run() as handle:
            producer.enqueue_bulk([payload(n) for n in range(sent, sent + 40)])
            sent += 40
            if cycle % 2 == 0:
                wait_until(lambda sent=sent: len(done) == sent)
            else:
                wait_until(lambda handle=handle: handle.stats().processed >= 1)
            assert handle.stop(timeout=5) is True
        # and a drain(): it also runs what the stopped run left pending
        producer.enqueue_bulk([payload(n) for n in range(sent, sent + 10)])
        sent += 10
        queue.drain(timeout=10)
        # Then no job was lost or run twice
        assert sorted(done) == list(range(sent))
        # And every thread is gone and, with the client's own pool emptied, no connection
        # of flowd's is left open
        assert flowd_thread_names() == []
        client.connection_pool.disconnect()
        wait_until(lambda: threading.active_count() == threads_before, timeout=5)
        wait_until(lambda: connections(admin) == 1, timeout=5)
        counts.append((threading.active_count(), connections(admin)))
    assert set(counts) == {(threads_before, 1)}, counts
    admin.close()
    client.close()
