"""Processing throughput: flowd's Queue against a raw redis-py consumer loop.

Run from the repository root:

    python benchmarks/bench_process.py                 # starts a private redis-server
    python benchmarks/bench_process.py --url redis://127.0.0.1:6379/15 --jobs 20000

The raw baseline is DESIGN.md's: one thread, XREADGROUP COUNT 100 on ``>``,
the job body for each message, then one XACK naming every id of the batch.
Every variant gets the same N pre-enqueued jobs on a fresh stream, in
interleaved repeats; the table shows median/min/max jobs/s and the median of
per-repeat ratios to the raw loop of the same repeat and body.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowd
from tests.redis_server import RedisServer


@dataclasses.dataclass
class Ping(flowd.Job):
    n: int
    payload: str = "x"


def _fill(client: redis.Redis, stream: str, jobs: int) -> None:
    fields = Ping(0).to_fields()
    with client.pipeline(transaction=False) as pipe:
        for i in range(jobs):
            pipe.xadd(stream, {**fields, "n": str(i)})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
    client.xgroup_create(stream, "g", id="0")


def _body(client: redis.Redis, name: str) -> Callable[[], None]:
    if name == "noop":
        return lambda: None
    if name == "incr":
        key = f"bench-counter-{uuid.uuid4().hex[:6]}"
        return lambda: client.incr(key)
    raise ValueError(name)


def raw_loop(
    client: redis.Redis,
    stream: str,
    jobs: int,
    body: Callable[[], None],
    count: int = 100,
    *,
    group: str = "g",
    consumer: str = "raw",
) -> float:
    """DESIGN.md's raw processing baseline (COUNT 100); other counts show the batch-size limit."""
    done = 0
    start = time.perf_counter()
    while done < jobs:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=1000)
        if not reply:
            continue
        entries = reply[0][1]
        for _entry in entries:
            body()
        client.xack(stream, group, *[entry[0] for entry in entries])
        done += len(entries)
    return jobs / (time.perf_counter() - start)


def raw_threads(
    client: redis.Redis,
    stream: str,
    jobs: int,
    body: Callable[[], None],
    threads: int = 8,
    *,
    group: str = "g",
) -> float:
    """``threads`` copies of the raw loop, each its own consumer, on a pre-filled stream.

    A thread stops once a read comes back empty: every entry has been delivered, and the
    other threads finish theirs. The time ends when the last thread has acked its batch.
    """
    done = [0] * threads

    def loop(index: int) -> None:
        consumer = f"raw-{index}"
        while True:
            reply = client.xreadgroup(group, consumer, {stream: ">"}, count=100)
            if not reply or not reply[0][1]:
                return
            entries = reply[0][1]
            for _entry in entries:
                body()
            client.xack(stream, group, *[entry[0] for entry in entries])
            done[index] += len(entries)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - start
    if sum(done) != jobs:
        raise RuntimeError(f"raw threads processed {sum(done)} of {jobs} jobs")
    return jobs / elapsed


def flowd_queue(
    client: redis.Redis, stream: str, jobs: int, body: Callable[[], None], concurrency: int
) -> float:
    def worker(task: flowd.Task[Ping]) -> None:
        body()

    queue = flowd.Queue(
        client, stream=stream, group="g", job=Ping, worker=worker, concurrency=concurrency
    )
    start = time.perf_counter()
    handle = queue.run()
    while handle.stats().processed < jobs:
        time.sleep(0.002)
    clean = handle.stop(timeout=30)
    elapsed = time.perf_counter() - start
    assert clean, "flowd did not stop cleanly"
    assert client.xpending(stream, "g")["pending"] == 0
    return jobs / elapsed


# flowd's reader never reads more messages than it has free permits, so one round trip
# carries at most `concurrency` messages; the COUNT 8 / 32 raw loops show that limit.
VARIANTS: dict[str, Callable[..., float]] = {
    "raw loop (1 thread)": raw_loop,
    "raw loop COUNT 8": lambda c, s, n, b: raw_loop(c, s, n, b, 8),
    "raw loop COUNT 32": lambda c, s, n, b: raw_loop(c, s, n, b, 32),
    "raw loop 8 threads": raw_threads,
    "flowd concurrency 8": lambda c, s, n, b: flowd_queue(c, s, n, b, 8),
    "flowd concurrency 32": lambda c, s, n, b: flowd_queue(c, s, n, b, 32),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis URL (default: start a private redis-server)")
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per no-op run")
    parser.add_argument("--incr-jobs", type=int, default=10_000, help="jobs per INCR run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    server = None
    if args.url is None:
        server = RedisServer()
        server.start()
    url = args.url or server.url  # type: ignore[union-attr]
    client = redis.Redis.from_url(url)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for body_name, jobs in (("noop", args.jobs), ("incr", args.incr_jobs)):
            runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for _ in range(args.repeat):
                for name, variant in VARIANTS.items():
                    stream = f"bench-{uuid.uuid4().hex[:8]}"
                    _fill(client, stream, jobs)
                    try:
                        runs[name].append(variant(client, stream, jobs, _body(client, body_name)))
                    finally:
                        client.delete(stream)
            results[body_name] = runs
    finally:
        client.close()
        if server is not None:
            server.close()
    _report(results, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _report(results: dict[str, dict[str, list[float]]], repeat: int) -> None:
    print(f"{'body':6} {'variant':24} {'median/s':>10} {'min/s':>10} {'max/s':>10} {'x raw':>7}")
    for body_name, runs in results.items():
        raw = runs["raw loop (1 thread)"]
        for name, values in runs.items():
            ratio = statistics.median(v / r for v, r in zip(values, raw, strict=True))
            print(
                f"{body_name:6} {name:24} {statistics.median(values):10.0f} "
                f"{min(values):10.0f} {max(values):10.0f} {ratio:7.2f}"
            )
    print(f"({repeat} interleaved repeats; ratio = median of per-repeat flowd/raw)")


if __name__ == "__main__":
    main()
