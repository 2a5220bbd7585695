"""Queue(time_limit=...): TimeLimitExceeded raised in a job's thread, on a real Redis."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import derived_key
from tests.helpers import Numbered, wait_until

GROUP = "g"
WAIT = 25.0


def test_time_limit_must_be_a_duration(client: redis.Redis, stream: str) -> None:
    for bad in (0, -1, "1"):
        with pytest.raises(flowd.ConfigurationError, match="time_limit"):
            flowd.Queue(
                client,
                stream=stream,
                group=GROUP,
                job=Numbered,
                worker=print,
                time_limit=bad,  # type: ignore[arg-type]
            )


def test_a_python_loop_past_its_limit_is_interrupted(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that loops in Python for 10 s, and time_limit=0.5
    seen: list[tuple[str, float]] = []

    def work(task: flowd.Task[Numbered]) -> None:
        began = time.monotonic()
        try:
            while time.monotonic() - began < 10:
                pass
        except BaseException as exc:
            seen.append((type(exc).__name__, time.monotonic() - began))
            raise

    handle = start(work, time_limit=0.5, claimer=flowd.Claimer(min_idle_time=60))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then TimeLimitExceeded is raised in it within 2 s, and the run counts as failed
    wait_until(lambda: handle.stats().failed == 1, timeout=WAIT)
    assert seen[0][0] == "TimeLimitExceeded"
    assert 0.45 <= seen[0][1] <= 2.0
    msg_id = client.xrange(stream)[0][0].decode()
    reason = wait_until(lambda: client.hget(derived_key(stream, f"errors:{GROUP}"), msg_id))
    assert reason == b"TimeLimitExceeded: the job ran past its time limit of 0.5s"
    # And stop() afterwards is clean
    assert handle.stop(timeout=10)


def test_time_limit_failure_follows_the_backoff_then_the_dlq(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that always runs past its limit, a backoff, and max_retries=1
    def work(task: flowd.Task[Numbered]) -> None:
        while True:
            pass

    start(
        work,
        time_limit=0.2,
        claimer=flowd.Claimer(
            min_idle_time=30, max_retries=1, backoff=flowd.Backoff(initial=0.1, jitter=0)
        ),
    )
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then it runs twice and is dead-lettered with the time limit as its reason
    dead = flowd.DeadLetters(client, stream)
    wait_until(lambda: dead.count() == 1, timeout=WAIT)
    letter = dead.list()[0]
    assert letter.reason == "TimeLimitExceeded: the job ran past its time limit of 0.2s"
    assert letter.deliveries == 2
    assert "TimeLimitExceeded" in letter.traceback


def test_a_job_blocked_in_c_code_is_named_and_stays_leased(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle], caplog: Any
) -> None:
    # Given a job blocked in C code (time.sleep) for 2 s, past time_limit=0.3, and a claimer
    # that would take a message idle for 0.5 s
    runs: list[int] = []
    outcome: list[str] = []

    def work(task: flowd.Task[Numbered]) -> None:
        runs.append(task.deliveries)
        try:
            time.sleep(2.0)
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        outcome.append("returned")  # pragma: no cover - the limit must interrupt it

    caplog.set_level(logging.WARNING, logger="flowd")
    handle = start(work, time_limit=0.3, claimer=flowd.Claimer(min_idle_time=0.5, max_retries=0))
    msg_id = flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then a WARNING names the message while it is stuck
    wait_until(
        lambda: [r for r in caplog.records if "blocked outside Python" in r.getMessage()],
        timeout=WAIT,
    )
    stuck = [r.getMessage() for r in caplog.records if "blocked outside Python" in r.getMessage()]
    assert msg_id in stuck[0]
    # And once back in Python it is interrupted; it was never run twice meanwhile
    wait_until(lambda: outcome, timeout=WAIT)
    assert outcome == ["TimeLimitExceeded"]
    assert runs == [1]
    wait_until(lambda: handle.stats().failed == 1, timeout=WAIT)


def test_the_exception_never_lands_outside_a_job(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle], caplog: Any
) -> None:
    # Given 1,000 jobs whose run times straddle the time limit, on 4 threads
    limit = 0.02
    started = 0
    interrupted = 0
    lock = threading.Lock()

    def work(task: flowd.Task[Numbered]) -> None:
        nonlocal started, interrupted
        with lock:
            started += 1
        end = time.monotonic() + random.uniform(0.5, 1.5) * limit
        try:
            while time.monotonic() < end:
                pass
        except flowd.TimeLimitExceeded:
            with lock:
                interrupted += 1
            raise

    caplog.set_level(logging.ERROR, logger="flowd")
    handle = start(work, concurrency=4, time_limit=limit, claimer=flowd.Claimer(min_idle_time=60))
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(1000))
    wait_until(lambda: started == 1000, timeout=60)
    wait_until(lambda: handle.stats().in_flight == 0, timeout=WAIT)
    # Then every run ended as a success or as a failure raised inside the job: no
    # exception surfaced in flowd's own code (the pool and its permits are intact)
    stats = handle.stats()
    assert stats.processed + stats.failed == 1000
    assert stats.failed >= interrupted > 0
    assert stats.processed > 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all("failed (delivery" in r.getMessage() for r in errors), errors[:3]
    assert handle.stop(timeout=10)
