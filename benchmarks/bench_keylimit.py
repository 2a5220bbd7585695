"""Per-key concurrency: what ``concurrency_key`` costs a queue of no-op jobs.

Run from the repository root (about a minute with the defaults)::

    python benchmarks/bench_keylimit.py
    python benchmarks/bench_keylimit.py --jobs 20000 --repeat 5 --keys 1000
    FLOWD_REDIS_SERVER=/path/to/redis-6.2/redis-server python benchmarks/bench_keylimit.py

No-op jobs on ``flowd.Queue(...).run()`` in this process, concurrency 8, configured
like bench_results.py's ``flowd c8``, without and with
``concurrency_key=lambda job: job.n % KEYS, max_per_key=1`` (a lease in Redis per
job: acquired per read batch in one script, ended by the job's XACK). The two
take turns in ``--repeat`` rounds (the order alternates), each on a fresh stream of
``--jobs`` pre-enqueued jobs in one private redis-server (never an existing one),
emptied between runs; the clock stops when nothing is pending and the group has read
the last entry. The ratio is computed per round (with / without), then the median is
taken.

Nothing is asserted about speed; a run fails only if a job is lost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import redis  # noqa: E402
from bench_app import BenchJob  # noqa: E402
from bench_bodies import make_body  # noqa: E402

import flowd  # noqa: E402
from benchmarks.compare.environment import environment  # noqa: E402
from benchmarks.compare.server import Context, private_server, unique  # noqa: E402
from benchmarks.compare.streams import fill_stream, flowd_finished  # noqa: E402

RUN_TIMEOUT = 600.0


def keyed_queue(client: redis.Redis, stream: str, keys: int | None) -> flowd.Queue[BenchJob]:
    """The queue of bench_app.flowd_queue (concurrency 8), with a concurrency key if asked."""
    body = make_body("noop", client)

    def worker(task: flowd.Task[BenchJob]) -> None:
        job = task.job
        body(job.n, job.key)

    options: dict[str, Any] = {}
    if keys is not None:
        options = {"concurrency_key": lambda job: job.n % keys, "max_per_key": 1}
    return flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=BenchJob,
        worker=worker,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=30.0, max_retries=3),
        **options,
    )


def one_run(client: redis.Redis, jobs: int, keys: int | None) -> float:
    """Jobs per second of one run."""
    client.flushdb()
    stream = unique("bench-keylimit")
    last = fill_stream(client, stream, jobs, "bench-key", None, group=False)
    queue = keyed_queue(client, stream, keys)
    start = time.perf_counter()
    handle = queue.run()
    try:
        deadline = start + RUN_TIMEOUT
        while handle.stats().processed < jobs:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"processed {handle.stats().processed} of {jobs}")
            time.sleep(0.002)
        while not flowd_finished(client, stream, last):
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    finally:
        clean = handle.stop(timeout=30)
    if not clean:
        raise RuntimeError("the queue did not stop cleanly")
    return jobs / elapsed


def throughput(ctx: Context, jobs: int, repeat: int, keys: int) -> None:
    client = ctx.client(0)
    with_key = f"flowd c8 concurrency_key (n % {keys})"
    variants: dict[str, int | None] = {"flowd c8": None, with_key: keys}
    for value in variants.values():  # warm-up: connections, scripts, plan caches
        one_run(client, min(jobs, 2000), value)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(repeat):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            rates[name].append(one_run(client, jobs, variants[name]))
    client.flushdb()

    print(f"\nno-op jobs, {jobs:,} per run, {repeat} alternating rounds, concurrency 8")
    print(f"{'variant':38} {'median/s':>10} {'min/s':>10} {'max/s':>10}  each round")
    for name, values in rates.items():
        each = " ".join(f"{v:,.0f}" for v in values)
        print(
            f"{name:38} {statistics.median(values):10,.0f} {min(values):10,.0f} "
            f"{max(values):10,.0f}  {each}"
        )
    ratios = [w / wo for w, wo in zip(rates[with_key], rates["flowd c8"], strict=True)]
    print(
        f"with/without concurrency_key: median {statistics.median(ratios):.2f}x "
        f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)}; target >= 0.85x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per run")
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds")
    parser.add_argument("--keys", type=int, default=1000, help="distinct concurrency keys")
    args = parser.parse_args()
    with private_server() as ctx:
        env = environment(ctx)
        load = ", ".join(f"{v:.2f}" for v in env["load_average_at_start"])
        print(
            f"redis-server {env['redis_server']}, Python {env['python']}, "
            f"redis-py {env['redis_py']}, hiredis {env['hiredis']}, flowd {env['flowd']}, "
            f"{env['cpu_count']} CPUs, load average {load}"
        )
        throughput(ctx, args.jobs, args.repeat, args.keys)


if __name__ == "__main__":
    main()
