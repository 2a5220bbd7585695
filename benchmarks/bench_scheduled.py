"""A burst of scheduled jobs due at the same instant: how long moving them takes, and the
longest single script call, against raw pipelined XADD of the same jobs on the same server.

Run from the repository root::

    python benchmarks/bench_scheduled.py              # a private redis-server, 100,000 jobs
    python benchmarks/bench_scheduled.py -n 20000 --batch 100

Each repeat schedules ``-n`` jobs with ``enqueue_bulk(jobs, at=T)`` (T far enough ahead
that all are scheduled before it), waits for T, then times ``move_all_due`` (what a
queue's scheduler thread and ``drain()`` call) from one client. The server's SLOWLOG,
with ``slowlog-log-slower-than 0``, gives each script call's own duration inside Redis.
The baseline is DESIGN.md's raw enqueue: pipelines of 1,000 XADD, ``transaction=False``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for flowd (if not installed) and tests.redis_server

import redis  # noqa: E402

import flowd  # noqa: E402
from flowd._redis import scheduling as _scheduling  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


@dataclass
class Small(flowd.Job):
    """A small job of three fields."""

    to: str
    subject: str
    attempt: int = 0


def raw_xadd(client: redis.Redis, stream: str, n: int) -> float:
    fields = [{"to": f"user{i}@example.com", "subject": "hello", "attempt": "0"} for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, 1000):
        with client.pipeline(transaction=False) as pipe:
            for item in fields[i : i + 1000]:
                pipe.xadd(stream, item)  # type: ignore[arg-type]
            pipe.execute()
    return time.perf_counter() - started


def one_burst(
    client: redis.Redis, stream: str, n: int, batch: int
) -> tuple[float, int, list[float], list[float]]:
    """(seconds to move all, the longest command inside Redis in ms (latency monitor),
    sampled script durations inside Redis (SLOWLOG) and round trips, in ms)."""
    jobs = [Small(to=f"user{i}@example.com", subject="hello") for i in range(n)]
    producer = flowd.Producer(client, stream)
    lead = 5 + n // 5000  # seconds: scheduling must finish before the jobs are due
    at = datetime.fromtimestamp(client.time()[0] + lead, UTC)
    producer.enqueue_bulk(jobs, at=at)
    if client.zcard(_scheduling.scheduled_key(stream)) != n:
        raise SystemExit("scheduling took longer than the lead time; raise it")
    while datetime.now(UTC) <= at:
        time.sleep(0.01)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    client.config_set("latency-monitor-threshold", 1)
    client.latency_reset()
    started = time.perf_counter()
    moved, round_trips = 0, []
    while True:
        call_started = time.perf_counter()
        result = _scheduling.move_due(client, stream, batch=batch)
        round_trips.append(time.perf_counter() - call_started)
        moved += result.moved
        if not result.more:
            break
    elapsed = time.perf_counter() - started
    # The latency monitor keeps the worst "command" event of all calls. Redis 6.2 also
    # logs the commands a script runs, so the slow log keeps only the latest calls.
    latest = client.latency_latest()
    entries = client.slowlog_get(100_000)
    worst_ms = max((int(e[3]) for e in latest if e[0] in (b"command", "command")), default=0)
    client.config_set("slowlog-log-slower-than", 10_000)
    scripts = [
        e["duration"]
        for e in entries
        if e["command"].split(b" ", 1)[0].upper() in (b"EVAL", b"EVALSHA")
    ]
    if moved != n or client.xlen(stream) != n:
        raise SystemExit(f"moved {moved} of {n}")
    return elapsed, worst_ms, [d / 1000 for d in scripts], [t * 1000 for t in round_trips]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="jobs due at the same instant")
    parser.add_argument("--batch", type=int, default=_scheduling.MOVE_BATCH)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        version = ".".join(map(str, server.version()))
        print(f"python {sys.version.split()[0]}, redis {version}, n={args.n}, batch={args.batch}")
        ratios, moves, longest = [], [], []
        for r in range(args.repeat):
            raw = raw_xadd(client, f"bench-raw-{r}", args.n)
            elapsed, worst, calls, trips = one_burst(client, f"bench-sched-{r}", args.n, args.batch)
            client.delete(f"bench-raw-{r}", f"bench-sched-{r}")
            ratios.append(elapsed / raw)
            moves.append(elapsed)
            longest.append(worst)
            print(
                f"repeat {r}: moved {args.n} in {elapsed:.2f}s ({len(trips)} script calls; "
                f"inside Redis: median {statistics.median(calls):.1f} ms of {len(calls)} in the "
                f"slow log, longest command {worst} ms; longest round trip {max(trips):.1f} ms); "
                f"raw XADD of the same jobs {raw:.2f}s; "
                f"move/raw {elapsed / raw:.2f}"
            )
        print(
            f"median: move {statistics.median(moves):.2f}s, longest command in Redis "
            f"{statistics.median(longest):.0f} ms (max {max(longest)}), move/raw XADD "
            f"{statistics.median(ratios):.2f}"
        )
        client.close()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
