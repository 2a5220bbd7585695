"""Tracing overhead: no-op jobs with TracingHooks (and traced enqueues) against none.

Run from the repository root (needs ``opentelemetry-sdk``):

    python benchmarks/bench_tracing.py                 # 3 alternating rounds, 20,000 jobs
    python benchmarks/bench_tracing.py --url redis://127.0.0.1:7000/0 --jobs 50000

Both sides run in this one process against one redis-server, alternating; spans go
through the SDK's batch processor to an exporter that drops them, so what is
measured is flowd's and the SDK's cost, not an exporter's. The issue's bar: traced
runs at >= 0.7x the untraced rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flowd  # noqa: E402
from flowd.contrib.opentelemetry import TracingHooks  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


@dataclass
class Ping(flowd.Job):
    n: int


class DropExporter(SpanExporter):
    """Takes every span and keeps none."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def rate(client: redis.Redis, jobs: int, traced: bool) -> float:
    """Jobs per second of a queue at concurrency 8 over ``jobs`` no-op jobs."""
    stream = f"bench-tracing-{uuid.uuid4().hex[:8]}"
    flowd.Producer(client, stream, tracing=traced).enqueue_bulk(Ping(i) for i in range(jobs))
    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Ping,
        worker=lambda task: None,
        hooks=[TracingHooks()] if traced else [],
    )
    start = time.perf_counter()
    handle = queue.run()
    while handle.stats().processed < jobs:
        time.sleep(0.002)
    assert handle.stop(timeout=30), "the queue did not stop cleanly"
    elapsed = time.perf_counter() - start
    client.delete(stream)
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a Redis to use (default: a private redis-server)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    trace.set_tracer_provider(provider)
    server = None
    if not args.url:
        server = RedisServer()
        server.start()
    try:
        client = redis.Redis.from_url(args.url or server.url)  # type: ignore[union-attr]
        plain: list[float] = []
        traced: list[float] = []
        for _ in range(args.rounds):
            plain.append(rate(client, args.jobs, traced=False))
            traced.append(rate(client, args.jobs, traced=True))
        ratios = [t / p for t, p in zip(traced, plain, strict=True)]
        print(f"untraced: {statistics.median(plain):,.0f} jobs/s (median of {args.rounds})")
        print(f"traced:   {statistics.median(traced):,.0f} jobs/s")
        print(f"traced / untraced: {statistics.median(ratios):.2f}x (bar: >= 0.70x)")
    finally:
        provider.shutdown()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
