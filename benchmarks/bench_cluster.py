"""Partitioned queues on Redis Cluster: P=1 vs P=3 on 3 masters, 2 worker processes.

Run from the repository root:

    python benchmarks/bench_cluster.py [--jobs 60000] [--repeat 3] [--processes 2]

It builds a private 3-master cluster on loopback, enqueues the same N jobs
for each variant, runs `flowd worker benchmarks.cluster_app:make_queue
--processes N` and times until every job's counter INCR is visible. P=1 puts
the whole queue on one master; P=3 spreads it over all three.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flowd  # noqa: E402
from benchmarks.cluster_app import Work  # noqa: E402
from flowd._redis.keys import derived_key  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402


def run_variant(cluster: RedisCluster, partitions: int, jobs: int, processes: int) -> float:
    client = cluster.client()
    stream = f"bench-{uuid.uuid4().hex[:6]}"
    producer = flowd.Producer(client, stream, partitions=partitions)
    producer.enqueue_bulk(Work(n) for n in range(jobs))
    counters = [derived_key(s, "done") for s in producer.streams]
    env = {
        **os.environ,
        "FLOWD_REDIS_URL": cluster.url.replace("redis://", "redis+cluster://"),
        "BENCH_STREAM": stream,
        "BENCH_PARTITIONS": str(partitions),
        "PYTHONPATH": str(ROOT),
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowd",
            "--log-level",
            "WARNING",
            "worker",
            "benchmarks.cluster_app:make_queue",
            "--processes",
            str(processes),
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        while sum(int(client.get(c) or 0) for c in counters) < jobs:
            if proc.poll() is not None:
                raise RuntimeError(f"the workers exited with {proc.returncode}")
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        client.delete(*producer.streams, *counters)
        client.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cluster = RedisCluster(3)
    results: dict[str, list[float]] = {"P=1": [], "P=3": []}
    try:
        cluster.start()
        for _ in range(args.repeat):
            for partitions in (1, 3):
                rate = run_variant(cluster, partitions, args.jobs, args.processes)
                results[f"P={partitions}"].append(rate)
    finally:
        cluster.close()
    print(
        f"3-master cluster, {args.processes} worker processes x concurrency 16, "
        f"{args.jobs} jobs (one INCR each), {args.repeat} interleaved repeats"
    )
    print(f"{'variant':8} {'median/s':>10} {'min/s':>10} {'max/s':>10} {'x P=1':>7}")
    base = results["P=1"]
    for name, values in results.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(
            f"{name:8} {statistics.median(values):10.0f} {min(values):10.0f} "
            f"{max(values):10.0f} {ratio:7.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
