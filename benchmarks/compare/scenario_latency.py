"""Scenario 3, latency: enqueue-to-start p50/p99 at a steady rate, raw loop and flowd.

A producer thread XADDs a job every 1/rate s, stamping ``time.time()`` just before the
XADD (the same raw XADD for both contenders); the consumer records ``time.time()`` when
the job starts. The first half second is dropped as warm-up.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from benchmarks.compare.adapter_flowd import latency_flowd
from benchmarks.compare.adapter_raw import latency_raw
from benchmarks.compare.config import Config
from benchmarks.compare.results import Results
from benchmarks.compare.rounds import rotated
from benchmarks.compare.server import DB, Context, unique


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def paced_producer(
    client: redis.Redis, stream: str, rate: int, total: int, stop: threading.Event
) -> threading.Thread:
    """A thread that XADDs ``total`` LatencyJobs at ``rate`` per second, each stamped with
    ``time.time()`` just before its XADD (the same raw XADD for every contender)."""

    def produce() -> None:
        start = time.perf_counter()
        for i in range(total):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if stop.is_set():
                return
            client.xadd(stream, {"n": str(i), "key": "bench-key", "t": repr(time.time())})

    return threading.Thread(target=produce, name="bench-producer")


def latency_run(
    ctx: Context, start_consumer: Callable[..., Callable[[], None]], rate: int, seconds: float
) -> tuple[float, float, dict[str, Any]]:
    client, stream = ctx.client(DB["flowd"]), unique("bench-latency")
    total = int(rate * seconds)
    samples: list[float] = []
    stop = threading.Event()
    try:
        finish = start_consumer(client, stream, samples, stop)
        time.sleep(0.3)  # let the consumer reach its blocking read
        producer = paced_producer(client, stream, rate, total, stop)
        producer.start()
        producer.join()
        deadline = time.perf_counter() + 30
        while len(samples) < total and time.perf_counter() < deadline:
            time.sleep(0.01)
        stop.set()
        finish()
    finally:
        stop.set()
        client.delete(stream)
    if len(samples) < total:
        raise RuntimeError(f"latency run saw {len(samples)} of {total} jobs")
    warm = samples[min(len(samples) // 10, rate // 2) :]  # the first half second is warm-up
    p50, p99 = percentile(warm, 50) * 1000, percentile(warm, 99) * 1000
    return p50, p99, {"samples": len(warm), "max_ms": max(warm) * 1000}


def run_latency(ctx: Context, cfg: Config, results: Results, repeat: int) -> None:
    contenders = [("raw 1 thread", latency_raw), ("flowd c8", latency_flowd)]
    for name, start in rotated(contenders, repeat):
        try:
            p50, p99, extra = latency_run(ctx, start, cfg.latency_rate, cfg.latency_seconds)
        except Exception as exc:
            print(f"  latency/{name}: FAILED: {exc!r}", file=sys.stderr)
            for q in ("p50", "p99"):
                results.add("latency", q, name, "ms", 0, None, None, error=repr(exc))
            continue
        n = int(cfg.latency_rate * cfg.latency_seconds)
        base = None if name == "raw 1 thread" else "raw 1 thread"
        results.add("latency", "p50", name, "ms", n, base, p50, extra)
        results.add("latency", "p99", name, "ms", n, base, p99, extra)
        print(f"  latency    {name:<22} p50 {p50:.3f} ms  p99 {p99:.3f} ms", flush=True)
