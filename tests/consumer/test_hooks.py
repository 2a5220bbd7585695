"""Hooks: every event reaches the hooks that override it, and a raising hook is harmless."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis

import flowd
from tests.helpers import Numbered, numbered_queue, retry_once_or_give_up, wait_until


class Recorder(flowd.Hooks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []

    def _add(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)

    def before_job(self, task: flowd.Task[Any]) -> None:
        self._add("before", task.job.n)

    def after_success(self, task: flowd.Task[Any], duration: float) -> None:
        assert duration >= 0
        self._add("success", task.job.n)

    def after_failure(self, task: flowd.Task[Any], exc: BaseException, duration: float) -> None:
        self._add("failure", task.job.n, str(exc))

    def after_retry(self, task: flowd.Task[Any], exc: flowd.Retry, duration: float) -> None:
        assert duration >= 0
        self._add("retry", task.job.n, exc.delay)

    def after_give_up(self, task: flowd.Task[Any], exc: flowd.GiveUp, duration: float) -> None:
        assert duration >= 0
        self._add("give_up", task.job.n, exc.reason)

    def on_dead_letter(self, task: flowd.Task[Any]) -> None:
        self._add("dead", task.job.n, task.error)

    def on_claim(self, task: flowd.Task[Any]) -> None:
        self._add("claim", task.job.n, task.deliveries)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [e for e in self.events if e[0] == kind]


def test_retry_and_give_up_reach_their_own_hooks_not_after_failure(
    client: redis.Redis, stream: str
) -> None:
    # Given job 1 that asks for one retry and job 2 that gives up
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(3))
    recorder = Recorder()

    queue = numbered_queue(
        client,
        stream,
        retry_once_or_give_up,
        hooks=[recorder],
        claimer=flowd.Claimer(min_idle_time=5, interval=0.05),
    )
    handle = queue.run()
    try:
        # When it runs until job 1 succeeded on its second run and job 2 is dead
        wait_until(lambda: len(recorder.of("success")) == 2 and recorder.of("dead"), timeout=20)
    finally:
        assert handle.stop(timeout=5)
    # Then the retry and the give-up reached their own events, and no failure was reported
    assert recorder.of("retry") == [("retry", 1, 0.1)]
    assert recorder.of("give_up") == [("give_up", 2, "card declined")]
    assert recorder.of("failure") == []
    assert sorted(e[1] for e in recorder.of("success")) == [0, 1]
    assert recorder.of("dead") == [("dead", 2, "GiveUp: card declined")]
    stats = handle.stats()
    assert (stats.retry_requested, stats.gave_up, stats.failed) == (1, 1, 0)


class Broken(flowd.Hooks):
    def before_job(self, task: flowd.Task[Any]) -> None:
        raise RuntimeError("hook bug")


def test_every_event_reaches_the_hooks(client: redis.Redis, stream: str) -> None:
    # Given jobs 0..4 where job 3 always fails, and max_retries=1
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(5))
    recorder = Recorder()

    def work(task: flowd.Task[Numbered]) -> None:
        if task.job.n == 3:
            raise ValueError("bad three")

    queue = numbered_queue(
        client,
        stream,
        work,
        hooks=[recorder],
        claimer=flowd.Claimer(min_idle_time=0.1, max_retries=1, interval=0.02),
    )
    handle = queue.run()
    try:
        # When it runs until job 3 is dead
        wait_until(lambda: recorder.of("dead"), timeout=20)
    finally:
        assert handle.stop(timeout=5)
    # Then each job started, four succeeded, job 3 failed twice, was claimed once, and died
    assert sorted(e[1] for e in recorder.of("before")) == [0, 1, 2, 3, 3, 4]
    assert sorted(e[1] for e in recorder.of("success")) == [0, 1, 2, 4]
    assert recorder.of("failure") == [("failure", 3, "bad three")] * 2
    assert recorder.of("claim") == [("claim", 3, 2)]
    assert recorder.of("dead") == [("dead", 3, "ValueError: bad three")]


def test_a_raising_hook_is_logged_and_the_job_still_runs(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a hook that raises before every job
    flowd.Producer(client, stream).enqueue(Numbered(1))
    done: list[int] = []
    queue = numbered_queue(
        client, stream, lambda task: done.append(task.job.n), hooks=[Broken()], claimer=None
    )
    handle = queue.run()
    try:
        # Then the job runs and is acked all the same, and the hook's error is logged
        wait_until(lambda: done == [1], timeout=10)
        wait_until(lambda: client.xpending(stream, "g")["pending"] == 0, timeout=10)
    finally:
        assert handle.stop(timeout=5)
    assert any("hook" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_hooks_must_be_hooks(client: redis.Redis, stream: str) -> None:
    for bad in (Recorder(), [object()], ["x"]):
        with pytest.raises(flowd.ConfigurationError):
            numbered_queue(client, stream, lambda task: None, hooks=bad, claimer=None)  # type: ignore[arg-type]
