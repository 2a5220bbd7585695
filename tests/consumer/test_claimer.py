"""The Claimer: reclaiming stuck work, retries, dead letters and leases, on a real Redis.

Messages of a "dead" consumer are made with a raw XREADGROUP under another
consumer name that never acks. Every queue a test starts is stopped by the
``make_queue`` fixture, which requires ``stop(timeout=5)`` to be clean.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd._consumer.claim import ClaimLoop, ClaimOutcome
from flowd._consumer.context import StreamContext
from flowd._consumer.permits import Permits
from flowd._redis.session import Session
from tests.helpers import Numbered, Recorder, as_str, flowd_threads, pending_count, wait_until
from tests.redis_server import RedisServer

GROUP = "g"
#: Generous bound for anything that should happen "soon" on a loaded 2-core machine.
WAIT = 25.0
CRASH_WORKER = Path(__file__).with_name("crash_worker.py")


# ---------------------------------------------------------------------------
# Fixtures and helpers


class Queues:
    """Builds queues on the test's stream and remembers every handle it starts."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.client = client
        self.stream = stream
        self.handles: list[flowd.QueueHandle] = []
        self.stopped: list[flowd.QueueHandle] = []

    def build(self, worker: Callable[[flowd.Task[Any]], None], **kwargs: Any) -> flowd.Queue[Any]:
        kwargs.setdefault("stream", self.stream)
        kwargs.setdefault("group", GROUP)
        kwargs.setdefault("job", Numbered)
        kwargs.setdefault("block", 0.5)
        return flowd.Queue(
            kwargs.pop("client", self.client), worker=worker, **{"claimer": None, **kwargs}
        )

    def start(self, queue: flowd.Queue[Any]) -> flowd.QueueHandle:
        handle = queue.run()
        self.handles.append(handle)
        return handle

    def run(self, worker: Callable[[flowd.Task[Any]], None], **kwargs: Any) -> flowd.QueueHandle:
        return self.start(self.build(worker, **kwargs))

    def stop(self, handle: flowd.QueueHandle, timeout: float) -> bool:
        """Stop a handle within the test; teardown then leaves it alone."""
        self.stopped.append(handle)
        return handle.stop(timeout=timeout)


@pytest.fixture
def make_queue(client: redis.Redis, stream: str) -> Iterator[Queues]:
    queues = Queues(client, stream)
    yield queues
    clean = [
        handle.stop(timeout=5)
        for handle in queues.handles
        if not any(handle is done for done in queues.stopped)
    ]
    assert all(clean), f"a handle did not stop cleanly: {clean}"


def claimer(**kwargs: Any) -> flowd.Claimer:
    """A fast claimer for tests: short idle time and interval."""
    kwargs.setdefault("min_idle_time", 0.3)
    kwargs.setdefault("interval", 0.05)
    return flowd.Claimer(**kwargs)


def create_group(client: redis.Redis, stream: str) -> None:
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)


def enqueue(client: redis.Redis, stream: str, ns: range | list[int]) -> list[str]:
    return flowd.Producer(client, stream).enqueue_bulk([Numbered(n) for n in ns])


def read_as(client: redis.Redis, stream: str, consumer: str, count: int | None = None) -> list[str]:
    """A raw XREADGROUP under ``consumer``, never acked: its messages are left pending."""
    reply: Any = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
    return [as_str(msg_id) for _, entries in reply for msg_id, _ in entries]


def pending_of(client: redis.Redis, stream: str, consumer: str) -> list[str]:
    rows: Any = client.xpending_range(stream, GROUP, "-", "+", 10_000, consumername=consumer)
    return [as_str(row["message_id"]) for row in rows]


def dead_entries(client: redis.Redis, dlq: str) -> list[dict[bytes, bytes]]:
    entries: Any = client.xrange(dlq)
    return [fields for _, fields in entries]


# ---------------------------------------------------------------------------
# Claimer configuration


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_idle_time": -1.0},
        {"min_idle_time": 0},
        {"min_idle_time": timedelta(seconds=-5)},
        {"min_idle_time": "30"},
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"batch": 0},
        {"batch": -3},
        {"dlq_worker": "not callable"},
        {"dlq_stream": ""},
        {"dlq_stream": 1},
        {"interval": -0.5},
    ],
    ids=repr,
)
def test_claimer_rejects_bad_configuration(kwargs: dict[str, Any]) -> None:
    # Given an invalid setting / When a Claimer is built / Then it fails at once
    with pytest.raises(flowd.ConfigurationError):
        flowd.Claimer(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "bound"),
    [
        ({"min_idle_time": 0.005}, "at least 0.1 s"),
        ({"min_idle_time": timedelta(milliseconds=99)}, "at least 0.1 s"),
        ({"min_idle_time": 1, "interval": 0.001}, "at least 0.01 s"),
        ({"batch": 10_001}, "from 1 to 10000"),
    ],
    ids=repr,
)
def test_claimer_refuses_settings_that_would_harm_its_queue(
    kwargs: dict[str, Any], bound: str
) -> None:
    # Given a setting past a bound that keeps a queue from running a job twice at once
    # or flooding Redis / When a Claimer is built / Then the error names the bound and why
    with pytest.raises(flowd.ConfigurationError) as info:
        flowd.Claimer(**kwargs)
    assert bound in str(info.value)
    if "min_idle_time" in kwargs and "interval" not in kwargs:
        assert "renewed every min_idle_time/3" in str(info.value)


def test_claimer_accepts_its_smallest_settings() -> None:
    # Given the bounds themselves / When a Claimer is built / Then they are accepted
    claimer = flowd.Claimer(min_idle_time=0.1, interval=0.01, batch=10_000)
    assert claimer.lease_interval == pytest.approx(0.1 / 3)


def test_claimer_accepts_timedelta_and_defaults() -> None:
    # Given times as timedelta / When a Claimer is built
    c = flowd.Claimer(
        min_idle_time=timedelta(seconds=2), interval=timedelta(milliseconds=100), max_retries=0
    )
    # Then they are float seconds, and the defaults are sane
    assert c.min_idle_time == 2.0
    assert c.interval == pytest.approx(0.1)
    assert c.max_retries == 0
    assert flowd.Claimer(min_idle_time=timedelta(seconds=8)).interval == pytest.approx(2.0)
    assert c.dead_letter_stream("emails") == "{emails}:dead"
    assert flowd.Claimer(dlq_stream="other").dead_letter_stream("emails") == "other"
    assert flowd.Claimer(dlq_stream=False).dead_letter_stream("emails") is None


# ---------------------------------------------------------------------------
# Reclaiming the work of a dead consumer


def test_dead_consumers_messages_are_reclaimed(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given 5 messages read by a consumer that then died (never acked)
    create_group(client, stream)
    enqueue(client, stream, range(5))
    ids = read_as(client, stream, "dead")
    t0 = time.monotonic()
    assert len(ids) == 5
    rec = Recorder()
    settings = claimer(min_idle_time=0.5, interval=0.1)

    # When a queue with a claimer runs in the same group
    handle = make_queue.run(rec.record, claimer=settings)

    # Then every message is processed within min_idle_time + interval (plus slack)
    wait_until(lambda: rec.ns() == set(range(5)), timeout=WAIT)
    elapsed = time.monotonic() - t0
    assert elapsed < settings.min_idle_time + settings.interval + 15.0
    # ... as a redelivery, exactly once each, and acked
    assert all(d >= 2 for _, d, _ in rec.runs), rec.runs
    assert sorted(msg_id for _, _, msg_id in rec.runs) == sorted(ids)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    stats = handle.stats()
    assert stats.processed == 5
    assert stats.retried == 5
    assert stats.failed == 0


def test_deliveries_count_up_across_retries(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given a job that fails on its first two deliveries
    rec = Recorder()

    def flaky(task: flowd.Task[Numbered]) -> None:
        rec.record(task)
        if task.deliveries < 3:
            raise RuntimeError(f"attempt {task.deliveries}")

    handle = make_queue.run(flaky, claimer=claimer(max_retries=3))

    # When it is enqueued
    enqueue(client, stream, [7])

    # Then it runs with deliveries 1, 2, 3 and succeeds on the third
    wait_until(lambda: handle.stats().processed == 1, timeout=WAIT)
    assert rec.deliveries(7) == [1, 2, 3]
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    stats = handle.stats()
    assert (stats.failed, stats.retried, stats.dead_lettered) == (2, 2, 0)
    assert client.xlen(f"{{{stream}}}:dead") == 0


# ---------------------------------------------------------------------------
# Retries and the dead-letter path


def test_always_failing_job_runs_max_retries_plus_one_then_dead_letters(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given a worker that always fails, max_retries=2 and a dlq_worker
    rec = Recorder()
    dead: list[flowd.Task[Numbered]] = []

    def fail(task: flowd.Task[Numbered]) -> None:
        rec.record(task)
        raise RuntimeError(f"boom {task.deliveries}")

    handle = make_queue.run(fail, claimer=claimer(max_retries=2, dlq_worker=dead.append))

    # When 3 jobs are enqueued
    ids = enqueue(client, stream, range(3))
    dlq = f"{{{stream}}}:dead"

    # Then each lands in the DLQ stream and leaves the PEL
    wait_until(lambda: client.xlen(dlq) == 3, timeout=WAIT)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    # ... each ran exactly 3 times, with deliveries 1, 2, 3
    assert rec.counts() == {0: 3, 1: 3, 2: 3}
    for n in range(3):
        assert rec.deliveries(n) == [1, 2, 3]
    # ... the dlq_worker got each once, typed, with the last failure as the reason
    assert sorted(t.id for t in dead) == sorted(ids)
    for task in dead:
        assert task.job == Numbered(ids.index(task.id))
        assert task.error == "RuntimeError: boom 3"
        assert task.deliveries >= 3
    # ... and each DLQ entry keeps the original fields plus flowd's metadata
    entries = dead_entries(client, dlq)
    assert sorted(e[b"flowd:id"].decode() for e in entries) == sorted(ids)
    for entry in entries:
        msg_id = entry[b"flowd:id"].decode()
        assert entry[b"n"] == str(ids.index(msg_id)).encode()
        assert entry[b"flowd:reason"] == b"RuntimeError: boom 3"
        assert int(entry[b"flowd:deliveries"]) >= 3
        assert entry[b"flowd:stream"] == stream.encode()
        assert entry[b"flowd:group"] == GROUP.encode()
    stats = handle.stats()
    assert (stats.processed, stats.failed, stats.dead_lettered) == (0, 9, 3)
    # ... and no failure reason is left behind in Redis
    assert client.exists(f"{{{stream}}}:errors:{GROUP}") == 0


def test_undecodable_message_is_dead_lettered_with_decode_error(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given valid jobs around a raw XADD that lacks the required field "n"
    rec = Recorder()
    dead: list[flowd.Task[Any]] = []
    create_group(client, stream)
    first = enqueue(client, stream, [1])
    bad = as_str(client.xadd(stream, {"other": "x"}))
    last = enqueue(client, stream, [3])
    dlq = f"{{{stream}}}:dead"

    # When a queue with a claimer consumes the stream
    handle = make_queue.run(rec.record, claimer=claimer(max_retries=3, dlq_worker=dead.append))

    # Then the valid jobs run and the bad one goes to the DLQ, never to the worker
    wait_until(lambda: rec.ns() == {1, 3} and client.xlen(dlq) == 1, timeout=WAIT)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    assert sorted(msg_id for _, _, msg_id in rec.runs) == sorted(first + last)
    assert [t.id for t in dead] == [bad]
    assert dead[0].job is None
    assert dead[0].error is not None and dead[0].error.startswith("DecodeError")
    assert "'n'" in dead[0].error
    (entry,) = dead_entries(client, dlq)
    assert entry[b"other"] == b"x"
    assert entry[b"flowd:id"] == bad.encode()
    assert entry[b"flowd:reason"].startswith(b"DecodeError")
    assert b"deliveries" not in entry and b"flowd:deliveries" in entry
    assert handle.stats().dead_lettered == 1


def test_dlq_stream_false_acks_dead_message_with_warning(
    client: redis.Redis, stream: str, make_queue: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    # Given dlq_stream=False, max_retries=0 and an always-failing worker
    caplog.set_level(logging.WARNING, logger="flowd")
    dead: list[flowd.Task[Numbered]] = []

    def fail(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError("boom")

    handle = make_queue.run(
        fail, claimer=claimer(max_retries=0, dlq_worker=dead.append, dlq_stream=False)
    )

    # When a job is enqueued
    (msg_id,) = enqueue(client, stream, [1])

    # Then dlq_worker gets it, it is acked, nothing is kept, and a WARNING says so
    wait_until(lambda: handle.stats().dead_lettered == 1, timeout=WAIT)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    assert [t.id for t in dead] == [msg_id]
    assert dead[0].error == "RuntimeError: boom"
    assert client.exists(f"{{{stream}}}:dead") == 0
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and msg_id in r.getMessage()
    ]
    assert warnings, [r.getMessage() for r in caplog.records]


def test_dlq_stream_name_writes_there(client: redis.Redis, stream: str, make_queue: Queues) -> None:
    # Given dlq_stream naming a stream of our own (in the stream's slot)
    custom = f"{{{stream}}}:graveyard"

    def fail(task: flowd.Task[Numbered]) -> None:
        raise ValueError("nope")

    make_queue.run(fail, claimer=claimer(max_retries=0, dlq_stream=custom))

    # When a job is exhausted
    (msg_id,) = enqueue(client, stream, [1])

    # Then it is written to the custom stream, not to the default one
    wait_until(lambda: client.xlen(custom) == 1, timeout=WAIT)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    (entry,) = dead_entries(client, custom)
    assert entry[b"flowd:id"] == msg_id.encode()
    assert entry[b"flowd:reason"] == b"ValueError: nope"
    assert client.exists(f"{{{stream}}}:dead") == 0


def test_failing_dlq_worker_leaves_message_pending_until_a_later_sweep(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given a dlq_worker that fails the first time it is called
    calls: list[tuple[str, int]] = []  # (id, pending count seen during the call)

    def dlq_worker(task: flowd.Task[Numbered]) -> None:
        calls.append((task.id, pending_count(client, stream)))
        if len(calls) == 1:
            raise RuntimeError("dlq down")

    def fail(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError("boom")

    handle = make_queue.run(fail, claimer=claimer(max_retries=0, dlq_worker=dlq_worker))

    # When a job is exhausted
    (msg_id,) = enqueue(client, stream, [1])

    # Then the message stays pending after the failed call, and a later sweep
    # calls dlq_worker again, which now succeeds and the message is dead-lettered once
    dlq = f"{{{stream}}}:dead"
    wait_until(lambda: client.xlen(dlq) == 1, timeout=WAIT)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    assert calls == [(msg_id, 1), (msg_id, 1)]
    (entry,) = dead_entries(client, dlq)
    assert entry[b"flowd:id"] == msg_id.encode()
    assert entry[b"flowd:reason"] == b"RuntimeError: boom"
    assert handle.stats().dead_lettered == 1


def test_slow_dlq_worker_is_called_once(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given a dlq_worker that takes 4 x min_idle_time
    calls: list[str] = []

    def dlq_worker(task: flowd.Task[Numbered]) -> None:
        calls.append(task.id)
        time.sleep(1.2)

    def fail(task: flowd.Task[Numbered]) -> None:
        raise RuntimeError("boom")

    make_queue.run(fail, claimer=claimer(max_retries=0, dlq_worker=dlq_worker))

    # When a job is exhausted
    (msg_id,) = enqueue(client, stream, [1])

    # Then the dead message is handled once: it is not reclaimed while dlq_worker runs
    dlq = f"{{{stream}}}:dead"
    wait_until(lambda: client.xlen(dlq) >= 1 and pending_count(client, stream) == 0, timeout=WAIT)
    time.sleep(0.3)  # let any second (wrong) call finish
    assert calls == [msg_id]
    assert client.xlen(dlq) == 1


# ---------------------------------------------------------------------------
# Deleted entries (Redis 6.2: nil entries in XAUTOCLAIM; 7.x: a deleted-id list)


def test_deleted_pending_entry_is_acked_and_counted_not_run(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given 3 messages pending under a dead consumer, the middle one then XDELed
    create_group(client, stream)
    ids = enqueue(client, stream, range(3))
    read_as(client, stream, "dead")
    assert client.xdel(stream, ids[1]) == 1
    rec = Recorder()

    # When a queue with a claimer runs
    handle = make_queue.run(rec.record, claimer=claimer())

    # Then the deleted entry is acked and counted, and never reaches the worker
    wait_until(lambda: handle.stats().deleted == 1, timeout=WAIT)
    wait_until(lambda: rec.ns() == {0, 2}, timeout=WAIT)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
    assert sorted(msg_id for _, _, msg_id in rec.runs) == [ids[0], ids[2]]
    stats = handle.stats()
    assert (stats.processed, stats.deleted, stats.dead_lettered) == (2, 1, 0)


# ---------------------------------------------------------------------------
# Leases: a live long job is never reclaimed


def test_long_job_runs_once_with_two_claiming_queues(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given two queues in one group, both with claimers (min_idle_time=0.3)
    rec = Recorder()

    def slow(task: flowd.Task[Numbered]) -> None:
        rec.record(task)
        time.sleep(1.5)  # 5 x min_idle_time

    settings = claimer(min_idle_time=0.3, interval=0.05)
    a = make_queue.run(slow, claimer=settings, consumer="a", concurrency=2)
    b = make_queue.run(slow, claimer=settings, consumer="b", concurrency=2)

    # When jobs that run 5 x min_idle_time are enqueued
    enqueue(client, stream, range(2))

    # Then each runs exactly once, on its first delivery
    wait_until(
        lambda: (
            a.stats().processed + b.stats().processed == 2 and pending_count(client, stream) == 0
        ),
        timeout=WAIT,
    )
    assert rec.counts() == {0: 1, 1: 1}
    assert all(d == 1 for _, d, _ in rec.runs), rec.runs
    assert a.stats().retried + b.stats().retried == 0


def test_claimer_and_lease_threads_stop_with_the_handle(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given a queue with a claimer, running a job longer than min_idle_time
    started = threading.Event()
    rec = Recorder()

    def slow(task: flowd.Task[Numbered]) -> None:
        started.set()
        time.sleep(1.0)
        rec.record(task)

    handle = make_queue.run(slow, claimer=claimer(min_idle_time=0.3))
    enqueue(client, stream, [1])
    assert started.wait(WAIT)
    names = flowd_threads(stream)
    assert f"flowd-claimer-{stream}" in names
    assert f"flowd-lease-{stream}" in names

    # When the handle is stopped while the job runs
    t0 = time.monotonic()
    clean = make_queue.stop(handle, timeout=10)

    # Then the job finished once and was acked, and every flowd thread is gone in time
    assert clean is True
    assert time.monotonic() - t0 < 10
    assert rec.counts() == {1: 1}
    assert pending_count(client, stream) == 0
    assert not flowd_threads(stream)
    assert not handle.is_running
    # ... and stopping it again, from the same thread, is a no-op that still reports clean
    assert handle.stop(timeout=5) is True


# ---------------------------------------------------------------------------
# Concurrency and the XAUTOCLAIM cursor


def test_concurrency_holds_while_reader_and_claimer_feed_work(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given 12 idle messages of a dead consumer
    create_group(client, stream)
    old = enqueue(client, stream, range(12))
    read_as(client, stream, "dead")
    wait_until(lambda: min_idle_ms(client, stream) >= 350)
    rec = Recorder()

    def work(task: flowd.Task[Numbered]) -> None:
        rec.enter()
        try:
            time.sleep(0.05)
            rec.record(task)
        finally:
            rec.leave()

    # When a queue with concurrency 3 runs and 12 new messages arrive meanwhile
    handle = make_queue.run(work, concurrency=3, claimer=claimer(batch=10))
    enqueue(client, stream, range(100, 112))

    # Then all 24 run, at most 3 at a time, the old ones as redeliveries
    wait_until(lambda: len(rec.ns()) == 24, timeout=WAIT)
    assert rec.max_running <= 3
    assert handle.stats().in_flight <= 3
    claimed = {msg_id for _, d, msg_id in rec.runs if d >= 2}
    assert claimed == set(old)
    assert all(d == 1 for n, d, _ in rec.runs if n >= 100)
    wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)


def test_claimer_follows_the_xautoclaim_cursor(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given 60 pending entries of a live consumer at the head of the PEL (kept
    # fresh), then 200 idle entries of a dead one: more than 10 x batch
    create_group(client, stream)
    head = enqueue(client, stream, range(60))
    read_as(client, stream, "alive")
    enqueue(client, stream, range(1000, 1200))
    read_as(client, stream, "dead")
    stop = threading.Event()
    head_ids: list[Any] = list(head)

    def keep_fresh() -> None:
        while not stop.wait(0.05):
            client.xclaim(stream, GROUP, "alive", 0, head_ids, justid=True)

    refresher = threading.Thread(target=keep_fresh, name="test-refresher")
    refresher.start()
    rec = Recorder()
    try:
        # When a queue's claimer takes 5 per XAUTOCLAIM call
        make_queue.run(rec.record, claimer=claimer(min_idle_time=1.0, batch=5))

        # Then all 200 are processed, and the live consumer's entries are left alone
        wait_until(lambda: rec.ns() == set(range(1000, 1200)), timeout=WAIT)
        wait_until(lambda: not pending_of(client, stream, "dead"), timeout=WAIT)
        assert sorted(pending_of(client, stream, "alive")) == sorted(head)
        assert rec.counts() == dict.fromkeys(range(1000, 1200), 1)
    finally:
        stop.set()
        refresher.join(10)


def test_claimer_error_after_claiming_does_not_leak_permits(
    private_redis: RedisServer, stream: str, make_queue: Queues
) -> None:
    # Given a user whom Redis refuses XPENDING (so every claim fails after its
    # XAUTOCLAIM, as a dropped connection would), and idle messages of a dead consumer
    admin = redis.Redis.from_url(private_redis.url)
    user = redis.Redis(
        host="127.0.0.1", port=private_redis.port, username="nopending", password="pw"
    )
    try:
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "nopending", "on", ">pw", "~*", "&*", "+@all", "-xpending"
        )
        create_group(admin, stream)
        enqueue(admin, stream, range(3))
        read_as(admin, stream, "dead")
        rec = Recorder()
        handle = make_queue.run(
            rec.record, client=user, concurrency=2, claimer=claimer(min_idle_time=0.2)
        )
        consumer = handle.consumer
        # ... whose claimer has taken some of them and then failed
        wait_until(lambda: pending_of(admin, stream, consumer), timeout=WAIT)

        # When new jobs arrive
        enqueue(admin, stream, range(100, 104))

        # Then the reader still runs them: the failed claims gave their permits back
        wait_until(lambda: {100, 101, 102, 103} <= rec.ns(), timeout=10)
        assert make_queue.stop(handle, timeout=5) is True
        assert handle.stats().in_flight == 0
    finally:
        user.close()
        admin.close()


# ---------------------------------------------------------------------------
# drain() with a claimer


def test_drain_with_claimer_recovers_dead_consumers_messages(
    client: redis.Redis, stream: str, make_queue: Queues
) -> None:
    # Given 5 messages of a dead consumer, idle longer than min_idle_time, and 3 unread
    create_group(client, stream)
    old = enqueue(client, stream, range(5))
    read_as(client, stream, "dead")
    new = enqueue(client, stream, range(10, 13))

    def all_idle() -> bool:
        rows: Any = client.xpending_range(stream, GROUP, "-", "+", 100)
        return all(row["time_since_delivered"] > 300 for row in rows)

    wait_until(all_idle, timeout=WAIT)
    rec = Recorder()
    queue = make_queue.build(rec.record, claimer=claimer(min_idle_time=0.2))

    # When the queue drains
    processed = queue.drain(timeout=WAIT)

    # Then the new and the dead consumer's messages were all processed and acked
    assert processed == 8
    assert sorted(msg_id for _, _, msg_id in rec.runs) == sorted(old + new)
    assert all(d >= 2 for n, d, _ in rec.runs if n < 10)
    assert pending_count(client, stream) == 0
    assert not flowd_threads(stream)


# ---------------------------------------------------------------------------
# A worker process killed with SIGKILL mid-batch


def test_sigkilled_worker_process_loses_nothing(
    client: redis.Redis, redis_url: str, stream: str, make_queue: Queues
) -> None:
    # Given 20 slow jobs and a worker process (concurrency 4, 1 s per job) working on them
    jobs = set(range(20))
    enqueue(client, stream, sorted(jobs))
    started_key, done_key = f"{stream}:started", f"{stream}:done"

    def members(key: str) -> set[int]:
        return {int(v) for v in client.smembers(key)}

    proc = subprocess.Popen(
        [sys.executable, str(CRASH_WORKER), redis_url, stream, GROUP, "crashy", "1.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        # When it is killed with SIGKILL in the middle of its second batch
        try:
            wait_until(lambda: len(members(started_key)) >= 5 or proc.poll() is not None, WAIT)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert proc.returncode == -signal.SIGKILL, stderr
        interrupted = members(started_key) - members(done_key)
        assert interrupted, "the kill should have interrupted running jobs"
        assert pending_of(client, stream, "crashy"), "the dead worker left nothing pending"

        # ... and a second queue with a claimer takes over
        rec = Recorder()

        def work(task: flowd.Task[Numbered]) -> None:
            rec.record(task)
            client.incr(f"{stream}:runs:{task.job.n}")
            client.sadd(done_key, task.job.n)

        make_queue.run(work, claimer=claimer(min_idle_time=0.5), consumer="rescuer")

        # Then every job ran to completion at least once, and nothing stays pending
        wait_until(lambda: members(done_key) == jobs, timeout=WAIT)
        wait_until(lambda: pending_count(client, stream) == 0, timeout=WAIT)
        assert interrupted <= rec.ns()
        assert all(d >= 2 for n, d, _ in rec.runs if n in interrupted)
        for n in jobs:
            assert int(client.get(f"{stream}:runs:{n}") or 0) >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_the_claimer_skips_ids_this_process_still_holds(client: redis.Redis, stream: str) -> None:
    # Given two entries pending under consumer "me" and idle, of which this process still
    # holds the first (e.g. its job finished during an outage and its XACK is not written)
    create_group(client, stream)
    ids = enqueue(client, stream, [1, 2])
    assert read_as(client, stream, "me") == ids
    dispatched: list[tuple[str, int]] = []

    def dispatch(msg_id: str, fields: Any, deliveries: int, *, claimed: bool = False) -> None:
        dispatched.append((msg_id, deliveries))
        permits.release()  # what the pool does once the job is done

    permits = Permits(4)
    session = Session(client, stream)
    ctx = StreamContext(
        stream=stream,
        group=GROUP,
        consumer="me",
        session=session,
        permits=permits,
        stop=threading.Event(),
        dispatch=dispatch,
        held=lambda: {ids[0]},
        running_since=lambda cutoff: [],
    )
    try:
        wait_until(lambda: min_idle_ms(client, stream) >= 20)

        # When the claimer claims a batch
        outcome = ClaimLoop(ctx, min_idle_time=0.01, interval=0.05, batch=10).claim_batch()
    finally:
        session.close()

    # Then only the entry this process does not hold runs again, and every permit is back
    assert outcome is ClaimOutcome.DONE
    assert dispatched == [(ids[1], 2)]
    assert permits.in_use == 0
    # ... and the held entry spent no delivery: its retries are intact
    held_entry = client.xpending_range(stream, GROUP, ids[0], ids[0], 1)[0]
    assert held_entry["times_delivered"] == 1


def min_idle_ms(client: redis.Redis, stream: str) -> int:
    rows: Any = client.xpending_range(stream, GROUP, min="-", max="+", count=10)
    return min(int(row["time_since_delivered"]) for row in rows)
