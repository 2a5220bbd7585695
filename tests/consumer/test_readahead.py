"""Read-ahead bounded by time, on a real Redis: fairness, lease, hand-back on stop, SIGKILL.

A queue reads beyond its free permits only while recent jobs were short. To
get messages read ahead and left waiting, the tests enqueue a run of instant
jobs (which make the queue read ahead) followed by slower ones (which then hold
every worker while the rest wait in the buffer). Slower means 0.3 s where the
buffer must stay (it still moves, so it is not handed back as stalled), and
seconds where the test is about a stalled buffer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd._consumer.permits import Permits
from tests.helpers import Numbered, wait_until

GROUP = "g"
#: Generous bound for anything that should happen "soon" on a loaded 2-core machine.
WAIT = 25.0
CRASH_WORKER = Path(__file__).with_name("crash_worker.py")


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Recorder:
    """Records (consumer, n, deliveries) of every job it ran, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, int, int, str]] = []

    def worker(
        self, consumer: str, body: Callable[[int], None] = lambda n: None
    ) -> Callable[[flowd.Task[Numbered]], None]:
        def work(task: flowd.Task[Numbered]) -> None:
            body(task.job.n)
            with self.lock:
                self.runs.append((consumer, task.job.n, task.deliveries, task.id))

        return work

    def by(self, consumer: str) -> list[tuple[int, int, str]]:
        with self.lock:
            return [(n, d, msg_id) for c, n, d, msg_id in self.runs if c == consumer]


class Queues:
    """Starts queues on the test's stream and stops every one left running on teardown."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.handles: list[flowd.QueueHandle] = []

    def run(self, worker: Callable[[flowd.Task[Any]], None], **kwargs: Any) -> flowd.QueueHandle:
        kwargs.setdefault("stream", self.stream)
        kwargs.setdefault("group", GROUP)
        kwargs.setdefault("job", Numbered)
        kwargs.setdefault("block", 0.5)
        handle = flowd.Queue(self.client, worker=worker, **kwargs).run()
        self.handles.append(handle)
        return handle


@pytest.fixture
def queues(client: redis.Redis, stream: str) -> Iterator[Queues]:
    made = Queues(client, stream)
    yield made
    for handle in made.handles:
        handle.stop(timeout=10)


def enqueue(client: redis.Redis, stream: str, numbers: range) -> list[str]:
    return flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in numbers)


def pending_rows(client: redis.Redis, stream: str, consumer: str) -> dict[str, tuple[int, int]]:
    """id -> (idle ms, deliveries) of ``consumer``'s pending entries."""
    rows: Any = client.xpending_range(stream, GROUP, "-", "+", 10_000, consumername=consumer)
    return {
        as_str(row["message_id"]): (int(row["time_since_delivered"]), int(row["times_delivered"]))
        for row in rows
    }


# ---------------------------------------------------------------------------
# The buffer under the permits' lock (no Redis)


def test_buffered_items_run_on_the_permit_of_the_worker_that_finished() -> None:
    started: list[str] = []
    permits = Permits(2, started.append)
    # Given both permits free and three items read
    assert permits.admit(["a", "b", "c"], 3) == 2  # a and b start, c waits
    assert permits.buffered == 1
    # When a worker finishes, it takes c with its own permit; the next finish frees one
    assert permits.next_or_release() == "c"
    assert permits.next_or_release() is None
    assert permits.in_use == 1
    # And a permit given back while items wait (the claimer held it) starts one of them
    assert permits.admit(["d"], 1) == 1
    assert permits.admit(["e", "f"], 2) == 0
    permits.release()
    assert started == ["e"]
    assert permits.take_buffer() == ["f"]
    assert permits.buffered == 0


# ---------------------------------------------------------------------------
# Done when: fairness with slow jobs


def test_slow_jobs_are_shared_by_two_consumers_not_hoarded(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given consumer A running (concurrency 2)
    recorder = Recorder()
    slow = recorder.worker("A", lambda n: time.sleep(1.0))
    a = queues.run(slow, concurrency=2, consumer="A", claimer=flowd.Claimer())
    time.sleep(0.3)  # A is blocked in its read

    # When 8 jobs of 1 s are enqueued, then consumer B starts (concurrency 2)
    enqueued_at = time.monotonic()
    enqueue(client, stream, range(8))
    b_work = recorder.worker("B", lambda n: time.sleep(1.0))
    queues.run(b_work, concurrency=2, consumer="B", claimer=flowd.Claimer())

    # Then each runs at least 3 of them, and all 8 end within 3.2 s of the enqueue
    wait_until(lambda: len(recorder.runs) == 8, timeout=WAIT)
    took = time.monotonic() - enqueued_at
    counts = {name: len(recorder.by(name)) for name in ("A", "B")}
    assert counts["A"] >= 3 and counts["B"] >= 3, counts
    assert took <= 3.2, f"8 jobs of 1 s on 2 x 2 workers took {took:.2f}s"
    assert a.stats().buffered == 0


# ---------------------------------------------------------------------------
# Done when: stop with read-ahead messages waiting


FAST = 300  # instant jobs first: they make the queue read ahead
SLOW = 40  # then slow ones, which hold every worker while the rest wait


class SlowAfterFast:
    """A body: instant for n < FAST, then ``seconds`` long; remembers the slow ones started."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: set[int] = set()

    def __call__(self, n: int) -> None:
        if n >= FAST:
            self.started.add(n)
            time.sleep(self.seconds)


def wait_for_buffered(handle: flowd.QueueHandle, body: SlowAfterFast, at_least: int) -> int:
    """Wait until slow jobs run and at least ``at_least`` messages wait behind them."""

    def enough() -> int:
        buffered = handle.stats().buffered
        return buffered if body.started and buffered >= at_least else 0

    return int(wait_until(enough, timeout=WAIT, message="messages read ahead and waiting"))


def test_read_ahead_messages_are_leased_while_they_wait(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given a consumer whose claimer would reclaim anything idle for 1.5 s
    enqueue(client, stream, range(FAST + SLOW))
    recorder = Recorder()
    body = SlowAfterFast(0.3)
    claimer = flowd.Claimer(min_idle_time=1.5, interval=0.1)
    handle = queues.run(recorder.worker("A", body), concurrency=2, consumer="A", claimer=claimer)

    # When messages wait in its buffer behind slower jobs for longer than min_idle_time
    wait_for_buffered(handle, body, 5)
    waiting_from = time.monotonic()
    max_idle = 0
    while time.monotonic() - waiting_from < 2.5:
        started = {msg_id for _, _, msg_id in recorder.by("A")}
        rows = pending_rows(client, stream, "A")
        max_idle = max([max_idle] + [idle for m, (idle, _) in rows.items() if m not in started])
        time.sleep(0.05)

    # Then their idle time is renewed like running jobs' (never reaching min_idle_time),
    # so no claimer (its own included) takes them: each ran once, as a first delivery
    assert handle.stats().buffered > 0
    assert max_idle < 1500, f"a message read ahead stayed idle for {max_idle} ms"
    assert all(d == 1 for _, d, _ in recorder.by("A"))


def test_stop_hands_back_read_ahead_messages_to_other_consumers(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given consumer A with messages read ahead and waiting behind two slow jobs
    enqueue(client, stream, range(FAST + SLOW))
    recorder = Recorder()
    body = SlowAfterFast(0.3)
    interval = 3.0  # claimer sweeps; min_idle_time is far longer
    claimer = flowd.Claimer(min_idle_time=60.0, interval=interval)
    a = queues.run(recorder.worker("A", body), concurrency=2, consumer="A", claimer=claimer)
    wait_for_buffered(a, body, 5)
    before = pending_rows(client, stream, "A")

    # When A stops
    stop_started = time.monotonic()
    assert a.stop(timeout=10) is True
    stop_took = time.monotonic() - stop_started

    # Then stop returned on time (its two running jobs, not the buffer, set the pace) ...
    assert stop_took < 3.0, f"stop() took {stop_took:.2f}s"
    ran_on_a = {msg_id for _, _, msg_id in recorder.by("A")}
    handed = pending_rows(client, stream, "A")
    assert handed, f"A should have handed messages back; stats {a.stats()}, before {before}"
    assert not set(handed) & ran_on_a
    # ... the handed-back ones are idle for years, their delivery count not increased
    for msg_id, (idle, deliveries) in handed.items():
        assert idle > 3600_000
        assert deliveries <= before.get(msg_id, (0, 1))[1]  # read once with ">": 1

    # And when consumer B starts, its first claimer sweep runs every one of them,
    # within one claimer interval (not after min_idle_time), as their first delivery
    b_started = time.monotonic()
    queues.run(recorder.worker("B"), concurrency=2, consumer="B", claimer=claimer)
    wait_until(lambda: set(handed) <= {m for _, _, m in recorder.by("B")}, timeout=WAIT)
    took = time.monotonic() - b_started
    assert took < interval, f"handed-back messages took {took:.2f}s to run on B"
    assert all(d == 1 for _, d, m in recorder.by("B") if m in handed)
    # Nothing was lost: every job ran on A or on B
    wait_until(lambda: len({n for _, n, _, _ in recorder.runs}) == FAST + SLOW, timeout=WAIT)


def test_stop_without_claimer_runs_read_ahead_messages(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given a queue without a claimer (nothing could take messages handed back)
    enqueue(client, stream, range(FAST + 10))
    recorder = Recorder()
    body = SlowAfterFast(0.1)
    handle = queues.run(recorder.worker("A", body), concurrency=2, consumer="A", claimer=None)
    wait_for_buffered(handle, body, 2)

    # When it stops with a deadline that allows them to run
    assert handle.stop(timeout=20) is True

    # Then it ran them before returning: nothing is left pending
    assert len({n for _, n, _, _ in recorder.runs}) == FAST + 10
    wait_until(lambda: int(client.xpending(stream, GROUP)["pending"]) == 0, timeout=WAIT)


def test_a_stalled_buffer_is_handed_to_an_idle_consumer(
    client: redis.Redis, stream: str, queues: Queues
) -> None:
    # Given consumer A reading ahead, then stuck on two long jobs, and an idle consumer B
    enqueue(client, stream, range(FAST + SLOW))
    recorder = Recorder()
    body = SlowAfterFast(3.0)
    claimer = flowd.Claimer(min_idle_time=60.0, interval=0.2)
    a = queues.run(recorder.worker("A", body), concurrency=2, consumer="A", claimer=claimer)
    wait_for_buffered(a, body, 5)
    queues.run(recorder.worker("B"), concurrency=2, consumer="B", claimer=claimer)

    # When nothing starts from A's buffer for a while
    # Then A hands it back and B runs those jobs, long before min_idle_time, as first
    # deliveries: slow jobs do not make a consumer hoard work another one could do
    wait_until(lambda: len(recorder.by("B")) >= SLOW - 2, timeout=WAIT)
    assert a.stats().buffered == 0
    assert all(d == 1 for _, d, _ in recorder.by("B"))
    assert {n for n, _, _ in recorder.by("B")} <= set(range(FAST, FAST + SLOW))
    for handle in queues.handles:
        handle.stop(timeout=0.5)  # A's two long jobs stay pending for a later claim


# ---------------------------------------------------------------------------
# Done when: SIGKILL while holding read-ahead messages


def test_sigkill_with_read_ahead_messages_loses_none(
    client: redis.Redis, redis_url: str, stream: str, queues: Queues
) -> None:
    # Given a worker process that reads ahead (instant jobs first), then holds slow jobs
    jobs = set(range(FAST + SLOW))
    enqueue(client, stream, range(FAST + SLOW))
    started_key, done_key = f"{stream}:started", f"{stream}:done"

    def members(key: str) -> set[int]:
        return {int(v) for v in client.smembers(key)}

    def read_ahead_waiting() -> set[str]:
        """Pending under the process, never started: messages it read ahead."""
        started = members(started_key)
        entries: Any = client.xrange(stream)
        number = {as_str(msg_id): int(fields[b"n"]) for msg_id, fields in entries}
        return {m for m in pending_rows(client, stream, "crashy") if number[m] not in started}

    proc = subprocess.Popen(
        [sys.executable, str(CRASH_WORKER), redis_url, stream, GROUP, "crashy", "0.3", str(FAST)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # When it is killed with SIGKILL while messages it read ahead wait in its buffer
        try:
            wait_until(
                lambda: (
                    (members(started_key) >= set(range(FAST)) and len(read_ahead_waiting()))
                    or proc.poll() is not None
                ),
                WAIT,
            )
            held = read_ahead_waiting()
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert proc.returncode == -signal.SIGKILL, stderr
        assert held, "the process should have held messages read ahead"

        # Then another consumer's claimer recovers every one of them: none is lost
        recorder = Recorder()

        def record_done(n: int) -> None:
            client.sadd(done_key, n)

        claimer = flowd.Claimer(min_idle_time=1.0, interval=0.2)
        queues.run(recorder.worker("rescuer", record_done), consumer="rescuer", claimer=claimer)
        wait_until(lambda: members(done_key) == jobs, timeout=WAIT)
        wait_until(lambda: int(client.xpending(stream, GROUP)["pending"]) == 0, timeout=WAIT)
        assert held <= {m for _, _, m in recorder.by("rescuer")}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
