"""Jobs whose exceptions cannot be printed (issue 21, case 3): the failure is recorded
with a safe text, no worker thread dies and no permit leaks."""

from __future__ import annotations

import threading
from typing import Any

import redis

import flowd
from tests.helpers import GROUP, QueueFactory, Recorder, as_str, enqueue_numbers, wait_until


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class BadCode:
    def __repr__(self) -> str:
        raise ValueError("no repr")

    def __str__(self) -> str:
        raise ValueError("no str")


def hostile(task: flowd.Task[Any]) -> None:
    n = task.job.n
    if n % 3 == 0:
        raise Unprintable()
    if n % 3 == 1:
        raise SystemExit(BadCode())
    raise flowd.GiveUp(BadCode())  # type: ignore[arg-type]


def test_a_thousand_unprintable_failures_leave_every_thread_and_permit(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    total = 1000
    enqueue_numbers(client, stream, total)
    dead = f"{{{stream}}}:dead"
    queue = make_queue(
        hostile,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=30, max_retries=0),
    )
    handle = make_queue.run(queue)
    wait_until(lambda: client.xlen(dead) == total, timeout=60)
    wait_until(lambda: handle.stats().dead_lettered == total, timeout=10)

    pool = handle._engine.pool
    wait_until(lambda: pool.permits.in_use == 0, timeout=10)
    workers = [t for t in threading.enumerate() if pool.is_worker_thread(t)]
    assert len(workers) == 4 and all(t.is_alive() for t in workers)

    reasons = {as_str(f[b"flowd:reason"]).split(":")[0] for _, f in client.xrange(dead)}
    assert reasons == {"Unprintable", "SystemExit", "GiveUp"}
    texts = {as_str(f[b"flowd:reason"]) for _, f in client.xrange(dead, count=6)}
    assert any("<unprintable" in t for t in texts)

    # and the queue still runs normal jobs
    recorder = Recorder()
    handle.stop(timeout=5)
    again = make_queue(recorder, concurrency=4, claimer=None)
    make_queue.run(again)
    ids = enqueue_numbers(client, stream, 5, start=total)
    wait_until(lambda: recorder.count == 5, timeout=10)
    assert set(recorder.ids()) == set(ids)
    assert client.xpending(stream, GROUP)["pending"] == 0
