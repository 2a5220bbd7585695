"""Enqueue throughput: flowd's Producer against raw redis-py, on the same server, interleaved.

Run from the repository root::

    python benchmarks/bench_enqueue.py                    # a private redis-server, 100,000 jobs x 5
    python benchmarks/bench_enqueue.py --single           # also one-at-a-time XADD vs enqueue
    python benchmarks/bench_enqueue.py --url redis://127.0.0.1:6380/0 --json results.json

"Raw" is DESIGN.md's baseline: redis-py pipelined XADD, 1,000 per pipeline,
``transaction=False``, with the field dicts built before the clock starts. flowd
starts from the Job instances and pays for encoding them. Each repeat uses fresh
stream names, runs the contenders in alternating order and deletes its streams.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for flowd (if not installed) and tests.redis_server

import redis  # noqa: E402

import flowd  # noqa: E402

RAW_PIPELINE = 1000


@dataclass
class Small(flowd.Job):
    """A small job of three fields."""

    to: str
    subject: str
    attempt: int = 0


def make_jobs(n: int) -> list[Small]:
    return [Small(to=f"user{i}@example.com", subject="hello") for i in range(n)]


def make_fields(n: int) -> list[dict[str, str]]:
    return [{"to": f"user{i}@example.com", "subject": "hello", "attempt": "0"} for i in range(n)]


# ---------------------------------------------------------------------------
# The contenders: each takes (client, stream) and its prepared input, and adds n entries.


def raw_bulk(client: redis.Redis, stream: str, fields: list[dict[str, str]]) -> None:
    for start in range(0, len(fields), RAW_PIPELINE):
        pipe = client.pipeline(transaction=False)
        for f in fields[start : start + RAW_PIPELINE]:
            pipe.xadd(stream, f)  # type: ignore[arg-type]
        pipe.execute()


def flowd_bulk(client: redis.Redis, stream: str, jobs: list[Small]) -> None:
    flowd.Producer(client, stream).enqueue_bulk(jobs)


def raw_single(client: redis.Redis, stream: str, fields: list[dict[str, str]]) -> None:
    for f in fields:
        client.xadd(stream, f)  # type: ignore[arg-type]


def flowd_single(client: redis.Redis, stream: str, jobs: list[Small]) -> None:
    producer = flowd.Producer(client, stream)
    for job in jobs:
        producer.enqueue(job)


@dataclass
class Scenario:
    name: str
    n: int
    raw: Callable[[redis.Redis, str, list[dict[str, str]]], None]
    flowd: Callable[[redis.Redis, str, list[Small]], None]


def timed(client: redis.Redis, stream: str, run: Callable[[], None], n: int) -> float:
    """Jobs per second of ``run``, checked to have added exactly n entries."""
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    length = client.xlen(stream)
    if length != n:
        raise RuntimeError(f"{stream}: expected {n} entries, found {length}")
    return n / elapsed


def run_scenario(client: redis.Redis, scenario: Scenario, repeat: int) -> dict[str, Any]:
    fields = make_fields(scenario.n)
    jobs = make_jobs(scenario.n)
    # Warm up both paths (connections, plan cache, allocator) on a small batch.
    warm = f"bench-warmup-{uuid.uuid4().hex}"
    try:
        scenario.raw(client, warm, fields[:1000])
        scenario.flowd(client, warm, jobs[:1000])
    finally:
        client.delete(warm)

    raw_rates: list[float] = []
    flowd_rates: list[float] = []
    for i in range(repeat):
        tag = uuid.uuid4().hex
        raw_stream, flowd_stream = f"bench-raw-{tag}", f"bench-flowd-{tag}"
        try:
            contenders = [
                ("raw", lambda s=raw_stream: scenario.raw(client, s, fields), raw_stream),
                ("flowd", lambda s=flowd_stream: scenario.flowd(client, s, jobs), flowd_stream),
            ]
            if i % 2:
                contenders.reverse()  # alternate who goes first
            for who, run, stream in contenders:
                rate = timed(client, stream, run, scenario.n)
                (raw_rates if who == "raw" else flowd_rates).append(rate)
        finally:
            client.delete(raw_stream, flowd_stream)
    ratios = [f / r for f, r in zip(flowd_rates, raw_rates, strict=True)]
    return {
        "scenario": scenario.name,
        "n": scenario.n,
        "repeat": repeat,
        "raw_jobs_per_s": raw_rates,
        "flowd_jobs_per_s": flowd_rates,
        "ratio_flowd_over_raw": ratios,
        "ratio_median": statistics.median(ratios),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'scenario':<8} {'n':>8} {'who':<6} {'median/s':>12} {'min/s':>12} {'max/s':>12}"
    print(header)
    print("-" * len(header))
    for res in results:
        for who in ("raw", "flowd"):
            rates = res[f"{who}_jobs_per_s"]
            print(
                f"{res['scenario']:<8} {res['n']:>8} {who:<6} {statistics.median(rates):>12,.0f} "
                f"{min(rates):>12,.0f} {max(rates):>12,.0f}"
            )
        ratios = res["ratio_flowd_over_raw"]
        print(
            f"{res['scenario']:<8} {'':>8} {'ratio':<6} {res['ratio_median']:>12.3f} "
            f"{min(ratios):>12.3f} {max(ratios):>12.3f}   (flowd/raw, per repeat)"
        )
        print(f"{'':<8} {'':>8} {'':<6} per repeat: " + ", ".join(f"{r:.3f}" for r in ratios))
    print()


def server_info(client: redis.Redis) -> dict[str, Any]:
    info = client.info("server")
    return {"redis_version": info["redis_version"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Enqueue throughput: flowd Producer vs raw pipelined XADD."
    )
    parser.add_argument("--url", help="Redis to use (default: start a private redis-server)")
    parser.add_argument("-n", type=int, default=100_000, help="jobs per bulk run (100,000)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repeats (5)")
    parser.add_argument(
        "--single", action="store_true", help="also time one XADD per job vs Producer.enqueue"
    )
    parser.add_argument("--single-n", type=int, default=10_000, help="jobs per single run (10,000)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    args = parser.parse_args(argv)
    for name, flag in (("n", "-n"), ("repeat", "--repeat"), ("single_n", "--single-n")):
        if getattr(args, name) < 1:
            parser.error(f"{flag} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    url = args.url
    if url is None:
        from tests.redis_server import RedisServer

        server = RedisServer()
        server.start()
        url = server.url
    client = redis.Redis.from_url(url)
    try:
        meta = {
            **server_info(client),
            "url": url,
            "private_server": server is not None,
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
            "flowd": flowd.__version__,
        }
        print(
            f"Redis {meta['redis_version']} at {url} | Python {meta['python']} | "
            f"redis-py {meta['redis_py']} (hiredis: {meta['hiredis']}) | flowd {meta['flowd']}"
        )
        print(
            f"{args.repeat} interleaved repeats; raw = pipelined XADD, {RAW_PIPELINE} per pipeline"
        )
        print()
        scenarios = [Scenario("bulk", args.n, raw_bulk, flowd_bulk)]
        if args.single:
            scenarios.append(Scenario("single", args.single_n, raw_single, flowd_single))
        results = [run_scenario(client, s, args.repeat) for s in scenarios]
        print_table(results)
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
            print(f"wrote {args.json}")
    finally:
        client.close()
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
