"""Retry control on a real Redis: Retry, GiveUp, Backoff, where retries wait, and deliveries.

Time limits are in test_timelimit.py; tracebacks of dead letters in
test_deadletters.py and test_cli_tools.py.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import derived_key
from tests.helpers import Numbered, numbered_queue, wait_until

GROUP = "g"
WAIT = 25.0


class Runs:
    """What a worker saw: (monotonic start, deliveries) of each run, per job number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_job: dict[int, list[tuple[float, int]]] = {}

    def add(self, task: flowd.Task[Numbered]) -> None:
        with self.lock:
            self.by_job.setdefault(task.job.n, []).append((time.monotonic(), task.deliveries))

    def of(self, n: int) -> list[tuple[float, int]]:
        with self.lock:
            return list(self.by_job.get(n, []))

    def gaps(self, n: int) -> list[float]:
        starts = [start for start, _ in self.of(n)]
        return [b - a for a, b in itertools.pairwise(starts)]

    def raising(
        self, error: Callable[[], BaseException], *, first_only: bool = False
    ) -> Callable[[flowd.Task[Numbered]], None]:
        """A worker that records each run, then raises ``error()`` (on the first delivery
        only, if ``first_only``)."""

        def work(task: flowd.Task[Numbered]) -> None:
            self.add(task)
            if not first_only or task.deliveries == 1:
                raise error()

        return work


def pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, GROUP)["pending"])


# ---------------------------------------------------------------------------
# The public values


def test_backoff_delays_grow_and_are_capped() -> None:
    backoff = flowd.Backoff(initial=0.5, factor=3, maximum=timedelta(seconds=10), jitter=0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]
    assert backoff.delay(100_000) == 10.0  # no OverflowError
    assert backoff.maximum == 10.0


def test_backoff_jitter_spreads_within_its_fraction() -> None:
    backoff = flowd.Backoff(initial=10, jitter=0.1)
    delays = [backoff.delay(1) for _ in range(500)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert max(delays) - min(delays) > 0.5  # actually spread, not constant


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": -1},
        {"initial": "1"},
        {"factor": 0.5},
        {"factor": float("inf")},
        {"maximum": 0.5, "initial": 1},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"jitter": True},
    ],
)
def test_backoff_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(flowd.ConfigurationError):
        flowd.Backoff(**kwargs)


def test_claimer_rejects_a_backoff_that_is_not_one() -> None:
    with pytest.raises(flowd.ConfigurationError, match="backoff"):
        flowd.Claimer(backoff=2.0)  # type: ignore[arg-type]


def test_retry_and_give_up_values() -> None:
    assert flowd.Retry().delay is None
    assert flowd.Retry(delay=timedelta(milliseconds=1500)).delay == 1.5
    assert isinstance(flowd.Retry(), flowd.FlowdError)
    assert flowd.GiveUp("card declined").reason == "card declined"
    with pytest.raises(flowd.ConfigurationError):
        flowd.Retry(delay=-1)
    with pytest.raises(flowd.ConfigurationError):
        flowd.Retry(delay="soon")  # type: ignore[arg-type]
    # A time limit interrupts the job: an `except Exception` in it must not swallow it.
    assert not issubclass(flowd.TimeLimitExceeded, Exception)


# ---------------------------------------------------------------------------
# Retry


def test_short_retry_stays_pending_and_runs_after_its_delay(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle], caplog: Any
) -> None:
    # Given a job that asks for a retry in 0.5 s, and a claimer that would wait 30 s
    runs = Runs()
    work = runs.raising(lambda: flowd.Retry(delay=0.5), first_only=True)

    caplog.set_level(logging.INFO, logger="flowd")
    handle = start(work, claimer=flowd.Claimer(min_idle_time=30))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # When it runs twice
    wait_until(lambda: len(runs.of(1)) == 2, timeout=WAIT)
    # Then the second run started 0.4-2.5 s after the first, counted as delivery 2
    assert 0.4 <= runs.gaps(1)[0] <= 2.5
    assert [d for _, d in runs.of(1)] == [1, 2]
    wait_until(lambda: pending(client, stream) == 0, timeout=WAIT)
    stats = handle.stats()
    assert (stats.processed, stats.failed, stats.retry_requested) == (1, 0, 1)
    # And the Retry was logged at INFO, not as an error
    asked = [r for r in caplog.records if "asked for a retry" in r.getMessage()]
    assert [r.levelno for r in asked] == [logging.INFO]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_long_retry_leaves_the_pel_for_the_scheduled_set(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that asks for a retry in 3 s, with min_idle_time 1 s
    runs = Runs()
    work = runs.raising(lambda: flowd.Retry(delay=3))

    start(work, claimer=flowd.Claimer(min_idle_time=1))
    msg_id = flowd.Producer(client, stream).enqueue(Numbered(7))
    wait_until(lambda: runs.of(7), timeout=WAIT)
    # Then it leaves the PEL (acked) and waits in the scheduled set, due ~3 s later
    # by Redis's clock, with the runs done so far and the group that asked
    wait_until(lambda: pending(client, stream) == 0, timeout=WAIT)
    members = client.zrange(derived_key(stream, "scheduled"), 0, -1, withscores=True)
    assert len(members) == 1
    member, due_ms = members[0][0].decode(), members[0][1]
    now_s, now_us = client.time()
    assert 1000 <= due_ms - (now_s * 1000 + now_us // 1000) <= 3000
    fields = client.hgetall(derived_key(stream, f"scheduled:{member}"))
    assert fields[b"flowd:runs"] == b"1"
    assert fields[b"flowd:group"] == GROUP.encode()
    assert b"flowd:retry-of" in fields
    assert fields[b"n"] == b"7"
    assert msg_id in member
    # And no claimer runs it again meanwhile, though min_idle_time passes twice
    time.sleep(2.0)
    assert len(runs.of(7)) == 1


def test_a_rescheduled_entry_counts_the_runs_before_it(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given an entry as the scheduler adds it back after a retry (two runs done before)
    runs = Runs()
    start(runs.add, claimer=flowd.Claimer(min_idle_time=30, max_retries=5))
    retry_of = {"flowd:retry-of": "1-1"}
    client.xadd(stream, {"n": "3", "flowd:runs": "2", "flowd:group": GROUP, **retry_of})
    # And one that another group's retry added back
    client.xadd(stream, {"n": "4", "flowd:runs": "1", "flowd:group": "other", **retry_of})
    # And one that another program wrote with flowd:group, without the retry's marker
    client.xadd(stream, {"n": "6", "flowd:runs": "4", "flowd:group": "other"})
    client.xadd(stream, {"n": "5"})
    # Then its run is delivery 3; the other group's entry is acked without a run
    wait_until(lambda: runs.of(5), timeout=WAIT)
    wait_until(lambda: pending(client, stream) == 0, timeout=WAIT)
    assert [d for _, d in runs.of(3)] == [3]
    assert runs.of(4) == []
    # and the foreign one runs, as a first delivery (its flowd: fields are not believed)
    assert [d for _, d in runs.of(6)] == [1]


def test_retry_counts_toward_max_retries(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that always asks for a retry, and max_retries=2
    runs = Runs()
    dead: list[flowd.Task[Any]] = []
    work = runs.raising(lambda: flowd.Retry(delay=0.1))

    handle = start(
        work, claimer=flowd.Claimer(min_idle_time=10, max_retries=2, dlq_worker=dead.append)
    )
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then it runs three times, and is dead-lettered after the third
    wait_until(lambda: flowd.DeadLetters(client, stream).count() == 1, timeout=WAIT)
    assert [d for _, d in runs.of(1)] == [1, 2, 3]
    assert dead[0].error is not None and "Retry" in dead[0].error
    letters = flowd.DeadLetters(client, stream).list()
    assert [(e.deliveries, e.reason) for e in letters] == [(3, dead[0].error)]
    assert handle.stats().retry_requested == 3
    assert pending(client, stream) == 0


# ---------------------------------------------------------------------------
# GiveUp


def test_give_up_dead_letters_at_once_with_its_reason(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that gives up, and a claimer that would retry after 0.5 s
    runs = Runs()
    dead: list[flowd.Task[Any]] = []
    work = runs.raising(lambda: flowd.GiveUp("card declined"))

    handle = start(
        work, claimer=flowd.Claimer(min_idle_time=0.5, max_retries=3, dlq_worker=dead.append)
    )
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then it is dead-lettered with that reason, for the dlq_worker and in the DLQ
    wait_until(lambda: flowd.DeadLetters(client, stream).count() == 1, timeout=WAIT)
    assert dead[0].error == "GiveUp: card declined"
    assert dead[0].job == Numbered(1)
    letters = flowd.DeadLetters(client, stream).list()
    assert [e.reason for e in letters] == ["GiveUp: card declined"]
    assert letters[0].deliveries == 1
    # And it never runs again, though min_idle_time passes several times
    time.sleep(1.5)
    assert len(runs.of(1)) == 1
    stats = handle.stats()
    assert (stats.gave_up, stats.dead_lettered, stats.failed) == (1, 1, 0)
    assert pending(client, stream) == 0


def test_give_up_whose_dlq_worker_fails_is_not_run_again(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that gives up, and a dlq_worker that fails the first time
    runs = Runs()
    calls: list[str | None] = []
    work = runs.raising(lambda: flowd.GiveUp("card declined"))

    def dlq_worker(task: flowd.Task[Any]) -> None:
        calls.append(task.error)
        if len(calls) == 1:
            raise RuntimeError("DLQ handler down")

    start(work, claimer=flowd.Claimer(min_idle_time=0.5, max_retries=3, dlq_worker=dlq_worker))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then the claimer dead-letters it on its next claim, with the same reason,
    # and the job does not run again
    wait_until(lambda: flowd.DeadLetters(client, stream).count() == 1, timeout=WAIT)
    assert calls == ["GiveUp: card declined", "GiveUp: card declined"]
    assert [e.reason for e in flowd.DeadLetters(client, stream).list()] == calls[1:]
    assert len(runs.of(1)) == 1


# ---------------------------------------------------------------------------
# Backoff


def test_backoff_spaces_the_runs_then_dead_letters(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given an always-failing job, Backoff(0.4, x2, no jitter) and max_retries=2
    runs = Runs()
    work = runs.raising(lambda: RuntimeError("always"))

    backoff = flowd.Backoff(initial=0.4, factor=2, jitter=0)
    handle = start(work, claimer=flowd.Claimer(min_idle_time=10, max_retries=2, backoff=backoff))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then it runs three times, about 0.4 s and 0.8 s apart, then goes to the DLQ
    dead = flowd.DeadLetters(client, stream)
    wait_until(lambda: dead.count() == 1, timeout=WAIT)
    assert [d for _, d in runs.of(1)] == [1, 2, 3]
    first, second = runs.gaps(1)
    assert 0.35 <= first <= 2.0
    assert 0.75 <= second <= 2.5
    letter = dead.list()[0]
    assert letter.reason == "RuntimeError: always"
    assert letter.deliveries == 3
    assert "RuntimeError: always" in letter.traceback
    stats = handle.stats()
    assert (stats.failed, stats.dead_lettered) == (3, 1)
    assert pending(client, stream) == 0


def test_without_backoff_a_failure_waits_for_min_idle_time(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that fails once, and no backoff
    runs = Runs()
    work = runs.raising(lambda: RuntimeError("once"), first_only=True)

    start(work, claimer=flowd.Claimer(min_idle_time=1.5, interval=0.1))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    wait_until(lambda: len(runs.of(1)) == 2, timeout=WAIT)
    # Then the retry came after min_idle_time, as before retry control
    assert runs.gaps(1)[0] >= 1.4


# ---------------------------------------------------------------------------
# drain()


def test_drain_gives_up_and_retries(client: redis.Redis, stream: str) -> None:
    # Given a job that gives up, and one that asks for a retry in 0.3 s
    runs = Runs()

    def work(task: flowd.Task[Numbered]) -> None:
        runs.add(task)
        if task.job.n == 1:
            raise flowd.GiveUp("never")
        if task.deliveries == 1:
            raise flowd.Retry(delay=0.3)

    flowd.Producer(client, stream).enqueue_bulk([Numbered(1), Numbered(2)])
    queue = numbered_queue(client, stream, work, claimer=flowd.Claimer(min_idle_time=30))
    # When drain() runs: the first is dead-lettered, the second waits for its delay
    assert queue.drain(timeout=20) == 0
    assert [e.reason for e in flowd.DeadLetters(client, stream).list()] == ["GiveUp: never"]
    assert pending(client, stream) == 1
    # Then a drain after the delay runs it, as its second delivery
    time.sleep(0.5)
    assert queue.drain(timeout=20) == 1
    assert [d for _, d in runs.of(2)] == [1, 2]
    assert len(runs.of(1)) == 1
    assert pending(client, stream) == 0


def test_long_retry_runs_again_after_its_delay_and_never_in_between(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given a job that asks for a retry in 3 s once, with min_idle_time 1 s
    runs = Runs()
    work = runs.raising(lambda: flowd.Retry(delay=3), first_only=True)

    handle = start(work, claimer=flowd.Claimer(min_idle_time=1))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then it runs twice: no run in between, the second 2.8-5 s after the first,
    # as delivery 2 (the runs before the move count)
    wait_until(lambda: len(runs.of(1)) == 2, timeout=WAIT)
    assert 2.8 <= runs.gaps(1)[0] <= 5.0
    assert [d for _, d in runs.of(1)] == [1, 2]
    wait_until(lambda: handle.stats().processed == 1, timeout=WAIT)
    time.sleep(1.5)  # a claimer sweep or two: nothing more runs
    assert len(runs.of(1)) == 2
    assert pending(client, stream) == 0
    assert client.zcard(derived_key(stream, "scheduled")) == 0


def test_long_backoff_retries_count_toward_max_retries(
    client: redis.Redis, stream: str, start: Callable[..., flowd.QueueHandle]
) -> None:
    # Given an always-failing job whose backoff waits longer than min_idle_time
    runs = Runs()
    work = runs.raising(lambda: RuntimeError("always"))

    backoff = flowd.Backoff(initial=1.2, factor=1, jitter=0)
    start(work, claimer=flowd.Claimer(min_idle_time=0.5, max_retries=2, backoff=backoff))
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # Then it runs max_retries + 1 times across the moves, then goes to the DLQ
    dead = flowd.DeadLetters(client, stream)
    wait_until(lambda: dead.count() == 1, timeout=WAIT)
    assert [d for _, d in runs.of(1)] == [1, 2, 3]
    assert all(gap >= 1.1 for gap in runs.gaps(1))
    assert dead.list()[0].deliveries == 3
