"""Dramatiq as a contender: ``actor.send`` per job, and one worker process of 8 threads.

``peer_dramatiq`` is imported when a run starts (it reads $BENCH_DRAMATIQ_URL, set once
the server is up, and a missing Dramatiq fails only its own runs).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.compare.process import peer_env, run_worker_process
from benchmarks.compare.server import DB, PEER_QUEUE, Context, unique
from benchmarks.compare.streams import counter_reached
from benchmarks.compare.timing import timed_rate


def enqueue_dramatiq(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
    import peer_dramatiq

    def one_by_one() -> None:
        send = peer_dramatiq.job.send
        for i in range(n):
            send(i, "bench-key")

    try:
        rate, elapsed = timed_rate(n, one_by_one)
        found = ctx.client(DB["dramatiq"]).hlen(f"dramatiq:{PEER_QUEUE}.msgs")
        if found != n:
            raise RuntimeError(f"dramatiq queue holds {found} messages, expected {n}")
    finally:
        ctx.flush_peer("dramatiq")
    return rate, {"seconds": elapsed}


def dramatiq_worker(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
    import peer_dramatiq

    client = ctx.client(DB["dramatiq"])
    key, marker = unique("bench-counter"), unique("bench-marker")
    send = peer_dramatiq.job.send
    send(-1, marker)
    for i in range(n):
        send(i, key)
    msgs = f"dramatiq:{PEER_QUEUE}.msgs"
    done = counter_reached(client, key, n) if body == "incr" else lambda: client.hlen(msgs) == 0
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "peer_dramatiq",
        "--processes",
        "1",
        "--threads",
        "8",
        "--queues",
        PEER_QUEUE,
    ]
    try:
        return run_worker_process(ctx, "dramatiq", argv, peer_env(body), client, marker, done, n)
    finally:
        ctx.flush_peer("dramatiq")
