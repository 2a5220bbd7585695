"""flowd as a contender: Producer enqueue, Queue in this process, ``flowd worker`` processes."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from bench_app import BenchJob, LatencyJob, flowd_queue
from bench_bodies import make_body

import flowd
from benchmarks.compare.process import bench_env, run_worker_process
from benchmarks.compare.server import DB, Context, unique
from benchmarks.compare.streams import check_xlen, counter_reached, fill_stream, flowd_finished
from benchmarks.compare.timing import RUN_TIMEOUT, timed_rate


def enqueue_flowd(bulk: bool) -> Callable[[Context, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-enq-flowd")
        jobs = [BenchJob(i, "bench-key") for i in range(n)]
        producer = flowd.Producer(client, stream)

        def one_by_one() -> None:
            enqueue = producer.enqueue
            for job in jobs:
                enqueue(job)

        try:
            add = (lambda: producer.enqueue_bulk(jobs)) if bulk else one_by_one
            rate, elapsed = timed_rate(n, add)
            check_xlen(client, stream, n)
        finally:
            client.delete(stream)
        return rate, {"seconds": elapsed}

    return run


def flowd_inprocess(
    concurrency: int, adaptive: bool = True
) -> Callable[[Context, str, int], tuple[float, dict[str, Any]]]:
    """flowd in this process (``adaptive=False``: a fixed ``concurrency``)."""

    def run(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-flowd")
        key = unique("bench-counter")
        last = fill_stream(client, stream, n, key, None, group=False)
        queue = flowd_queue(
            client, stream, make_body(body, client), concurrency, adaptive_concurrency=adaptive
        )
        done = (
            counter_reached(client, key, n)
            if body == "incr"
            else lambda: flowd_finished(client, stream, last)
        )
        try:
            start = time.perf_counter()
            handle = queue.run()
            try:
                deadline = start + RUN_TIMEOUT
                while handle.stats().processed < n:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"flowd processed {handle.stats().processed} of {n}")
                    time.sleep(0.002)
                while not done():
                    time.sleep(0.001)
                elapsed = time.perf_counter() - start
                limit = handle.stats().active_limit
            finally:
                clean = handle.stop(timeout=30)
            if not clean:
                raise RuntimeError("flowd did not stop cleanly")
        finally:
            client.delete(stream, key)
        return n / elapsed, {"seconds": elapsed, "active_limit": limit}

    return run


def worker_argv(url: str, processes: int | None = None) -> list[str]:
    """``python -m flowd worker bench_app:make_queue`` (its queue comes from $BENCH_*)."""
    argv = [
        sys.executable,
        "-m",
        "flowd",
        "--log-level",
        "WARNING",
        "worker",
        "bench_app:make_queue",
        "--url",
        url,
    ]
    if processes is not None:
        argv += ["--processes", str(processes)]
    return argv


def flowd_worker(
    concurrency: int, processes: int
) -> Callable[[Context, str, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-worker")
        key, marker = unique("bench-counter"), unique("bench-marker")
        last = fill_stream(client, stream, n, key, marker, group=False)
        argv = worker_argv(ctx.url(DB["flowd"]), processes)
        env = bench_env(BENCH_STREAM=stream, BENCH_BODY=body, BENCH_CONCURRENCY=str(concurrency))
        done = (
            counter_reached(client, key, n)
            if body == "incr"
            else lambda: flowd_finished(client, stream, last)
        )
        try:
            return run_worker_process(
                ctx, f"flowd worker c{concurrency} x{processes}", argv, env, client, marker, done, n
            )
        finally:
            client.delete(stream, key, marker)

    return run


def latency_flowd(client: redis.Redis, stream: str, samples: list[float], stop: threading.Event):
    def worker(task: flowd.Task[LatencyJob]) -> None:
        samples.append(time.time() - task.job.t)

    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=LatencyJob,
        worker=worker,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=30.0, max_retries=3),
    )
    handle = queue.run()

    def finish() -> None:
        stop.wait()
        handle.stop(timeout=30)

    return finish
