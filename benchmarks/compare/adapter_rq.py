"""rq as a contender: ``Queue.enqueue`` / ``enqueue_many``, and a burst SimpleWorker.

rq and ``peer_rq`` are imported when a run starts, so that a missing rq fails only its
own runs (and ``peer_rq`` reads $BENCH_RQ_URL, set once the server is up).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from benchmarks.compare.process import peer_env, run_worker_process
from benchmarks.compare.server import DB, Context, unique
from benchmarks.compare.streams import counter_reached
from benchmarks.compare.timing import timed_rate


def enqueue_rq(bulk: bool) -> Callable[[Context, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
        import peer_rq
        import rq

        queue = rq.Queue(unique("bench"), connection=ctx.client(DB["rq"]))
        try:
            if bulk:
                datas = [rq.Queue.prepare_data(peer_rq.job, (i, "bench-key")) for i in range(n)]
                rate, elapsed = timed_rate(n, lambda: queue.enqueue_many(datas))
            else:

                def one_by_one() -> None:
                    enqueue, job = queue.enqueue, peer_rq.job
                    for i in range(n):
                        enqueue(job, i, "bench-key")

                rate, elapsed = timed_rate(n, one_by_one)
            if len(queue) != n:
                raise RuntimeError(f"rq queue holds {len(queue)} jobs, expected {n}")
        finally:
            ctx.flush_peer("rq")
        return rate, {"seconds": elapsed}

    return run


def rq_worker(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
    import peer_rq
    import rq

    client = ctx.client(DB["rq"])
    name = unique("bench")
    key, marker = unique("bench-counter"), unique("bench-marker")
    queue = rq.Queue(name, connection=client)
    datas = [rq.Queue.prepare_data(peer_rq.job, (-1, marker))]
    datas += [rq.Queue.prepare_data(peer_rq.job, (i, key)) for i in range(n)]
    for start in range(0, len(datas), 5000):
        queue.enqueue_many(datas[start : start + 5000])
    finished = rq.registry.FinishedJobRegistry(name, connection=client)
    done = counter_reached(client, key, n) if body == "incr" else lambda: finished.count >= n + 1
    argv = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--burst",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "--url",
        ctx.url(DB["rq"]),
        "--logging_level",
        "WARNING",
        name,
    ]
    try:
        return run_worker_process(
            ctx, "rq", argv, peer_env(body), client, marker, done, n, exits_itself=True
        )
    finally:
        ctx.flush_peer("rq")
