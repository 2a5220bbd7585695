"""Flow control's cost: no-op jobs on a queue with flow-control settings against none.

Run from the repository root::

    python benchmarks/bench_flow.py                     # 5 alternating rounds, 20,000 jobs
    python benchmarks/bench_flow.py --jobs 50000 --repeat 7
    FLOWD_REDIS_SERVER=/path/to/redis-6.2/redis-server python benchmarks/bench_flow.py

Every variant runs ``flowd.Queue(...).run()`` in this process at concurrency 8,
configured like bench_results.py's ``flowd c8`` (a Claimer, default housekeeping),
against one private redis-server emptied between runs. Each run gets a fresh stream of
``--jobs`` pre-enqueued no-op jobs; the clock stops when the group has read the last
entry and nothing is pending. The variants take turns in ``--repeat`` rounds (the
order rotates); each variant's ratio to ``plain`` is computed per round, then the
median is taken. The settings are far above what the queue can do (a rate limit of
10,000,000 starts a second), so what is measured is what the checks cost, not a limit
holding jobs back. The issue's bar: flow control set this way costs <= 15 % of no-op
throughput (ratio >= 0.85).

A variant is one entry of :data:`VARIANTS`: its name and the Queue keywords it adds.
Nothing is asserted about speed; a run fails only if a job is lost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import redis  # noqa: E402
from bench_app import BenchJob  # noqa: E402

import flowd  # noqa: E402
from benchmarks.compare.environment import environment  # noqa: E402
from benchmarks.compare.server import Context, private_server, unique  # noqa: E402
from benchmarks.compare.streams import fill_stream, flowd_finished  # noqa: E402

RUN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Variant:
    """A queue configuration: its name and the Queue keywords it adds to the plain one."""

    name: str
    options: Callable[[], dict[str, Any]]


def _key(job: BenchJob) -> int:
    """The concurrency key of the keyed variants: one of 1,000."""
    return job.n % 1000


#: The baseline comes first; every other variant is compared with it.
VARIANTS = [
    Variant("plain", dict),
    Variant("rate_limit", lambda: {"rate_limit": flowd.RateLimit(10**7, per=1.0)}),
    # A lease in Redis per job; 1,000 keys, so few jobs wait for theirs.
    Variant("concurrency_key", lambda: {"concurrency_key": _key, "max_per_key": 1}),
    # The case: both at once.
    Variant(
        "rate_limit+concurrency_key",
        lambda: {
            "rate_limit": flowd.RateLimit(10**7, per=1.0),
            "concurrency_key": _key,
            "max_per_key": 1,
        },
    ),
]


def one_run(client: redis.Redis, jobs: int, variant: Variant) -> float:
    """Jobs per second of one run of ``variant`` over a fresh stream of ``jobs`` jobs."""
    client.flushdb()
    stream = unique("bench-flow")
    last = fill_stream(client, stream, jobs, "bench-key", None, group=False)
    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=BenchJob,
        worker=lambda task: None,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=30.0, max_retries=3),
        **variant.options(),
    )
    start = time.perf_counter()
    handle = queue.run()
    try:
        deadline = start + RUN_TIMEOUT
        while handle.stats().processed < jobs:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{variant.name}: processed {handle.stats().processed}/{jobs}")
            time.sleep(0.002)
        while not flowd_finished(client, stream, last):
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    finally:
        clean = handle.stop(timeout=30)
    if not clean:
        raise RuntimeError(f"{variant.name}: the queue did not stop cleanly")
    if handle.stats().processed != jobs:
        raise RuntimeError(f"{variant.name}: {handle.stats().processed} processed, not {jobs}")
    return jobs / elapsed


def throughput(ctx: Context, jobs: int, repeat: int) -> None:
    client = ctx.client(0)
    for variant in VARIANTS:  # warm-up: connections, scripts, plan caches
        one_run(client, min(jobs, 2000), variant)
    rates: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for round_ in range(repeat):
        shift = round_ % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            rates[variant.name].append(one_run(client, jobs, variant))
    client.flushdb()

    plain = VARIANTS[0].name
    print(f"\nno-op jobs, {jobs:,} per run, {repeat} rotating rounds, concurrency 8")
    print(f"{'variant':32} {'median/s':>10} {'min/s':>10} {'max/s':>10}  each round")
    for name, values in rates.items():
        each = " ".join(f"{v:,.0f}" for v in values)
        print(
            f"{name:32} {statistics.median(values):10,.0f} {min(values):10,.0f} "
            f"{max(values):10,.0f}  {each}"
        )
    for variant in VARIANTS[1:]:
        ratios = [v / p for v, p in zip(rates[variant.name], rates[plain], strict=True)]
        print(
            f"{variant.name} / {plain}: median {statistics.median(ratios):.2f}x "
            f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)}; bar >= 0.85x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per run")
    parser.add_argument("--repeat", type=int, default=5, help="rounds")
    args = parser.parse_args()
    with private_server() as ctx:
        env = environment(ctx)
        load = ", ".join(f"{v:.2f}" for v in env["load_average_at_start"])
        print(
            f"redis-server {env['redis_server']}, Python {env['python']}, "
            f"redis-py {env['redis_py']}, hiredis {env['hiredis']}, flowd {env['flowd']}, "
            f"{env['cpu_count']} CPUs, load average {load}"
        )
        throughput(ctx, args.jobs, args.repeat)


if __name__ == "__main__":
    main()
