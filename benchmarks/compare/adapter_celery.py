"""Celery as a contender: ``task.delay`` per job, and a threads-pool worker of 8.

``peer_celery`` is imported when a run starts (it reads $BENCH_CELERY_URL, set once the
server is up, and a missing Celery fails only its own runs).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.compare.process import peer_env, run_worker_process
from benchmarks.compare.server import DB, PEER_QUEUE, Context, unique
from benchmarks.compare.streams import counter_reached
from benchmarks.compare.timing import timed_rate


def enqueue_celery(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
    import peer_celery

    def one_by_one() -> None:
        delay = peer_celery.job.delay
        for i in range(n):
            delay(i, "bench-key")

    try:
        rate, elapsed = timed_rate(n, one_by_one)
        found = ctx.client(DB["celery"]).llen(PEER_QUEUE)
        if found != n:
            raise RuntimeError(f"celery queue holds {found} messages, expected {n}")
    finally:
        ctx.flush_peer("celery")
    return rate, {"seconds": elapsed}


def celery_worker(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
    import peer_celery

    client = ctx.client(DB["celery"])
    key, marker = unique("bench-counter"), unique("bench-marker")
    task = peer_celery.job
    with peer_celery.app.producer_or_acquire() as producer:
        task.apply_async((-1, marker), producer=producer)
        for i in range(n):
            task.apply_async((i, key), producer=producer)

    def finished() -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.llen(PEER_QUEUE)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        return bool(queued == 0 and unacked == 0)

    done = counter_reached(client, key, n) if body == "incr" else finished
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "peer_celery",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        "8",
        "--queues",
        PEER_QUEUE,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "WARNING",
    ]
    try:
        return run_worker_process(ctx, "celery", argv, peer_env(body), client, marker, done, n)
    finally:
        ctx.flush_peer("celery")
