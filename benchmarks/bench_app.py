"""flowd's side of bench_compare.py: the job classes and the queue that ``flowd worker`` runs.

``python -m flowd worker bench_app:make_queue --url URL`` (with ``benchmarks/`` on
PYTHONPATH) builds its queue from the environment: $BENCH_STREAM, $BENCH_GROUP (default
``g``), $BENCH_BODY (noop, incr or sleep), $BENCH_CONCURRENCY (default 8) and
$BENCH_RESULT_TTL (seconds; unset: no results kept). The queue is configured like the
README's quick start: a Claimer, and the default housekeeping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import redis
from bench_bodies import Body, make_body

import flowd


@dataclass
class BenchJob(flowd.Job):
    """The job of every throughput run: the same two arguments every peer gets."""

    n: int
    key: str


@dataclass
class LatencyJob(flowd.Job):
    """A job stamped with its enqueue time (``time.time()``), for the latency runs."""

    n: int
    key: str
    t: float


def flowd_queue(
    client: Any,
    stream: str,
    body: Body,
    concurrency: int,
    group: str = "g",
    result_ttl: float | None = None,
    adaptive_concurrency: bool = True,
) -> flowd.Queue[BenchJob]:
    """The queue every flowd variant runs, in this process or under ``flowd worker``
    (``result_ttl``: keep each job's result, as bench_results.py measures;
    ``adaptive_concurrency=False``: a fixed thread count, the baselines of --targets)."""

    def worker(task: flowd.Task[BenchJob]) -> None:
        job = task.job
        body(job.n, job.key)

    return flowd.Queue(
        client,
        stream=stream,
        group=group,
        job=BenchJob,
        worker=worker,
        concurrency=concurrency,
        claimer=flowd.Claimer(min_idle_time=30.0, max_retries=3),
        result_ttl=result_ttl,
        adaptive_concurrency=adaptive_concurrency,
    )


def make_queue() -> flowd.Queue[BenchJob]:
    """The ``MODULE:ATTR`` target of ``flowd worker`` (its --url is in $FLOWD_REDIS_URL)."""
    client = redis.Redis.from_url(os.environ["FLOWD_REDIS_URL"])
    body = make_body(os.environ.get("BENCH_BODY", "noop"), client)
    ttl = os.environ.get("BENCH_RESULT_TTL")
    return flowd_queue(
        client,
        os.environ["BENCH_STREAM"],
        body,
        int(os.environ.get("BENCH_CONCURRENCY", "8")),
        os.environ.get("BENCH_GROUP", "g"),
        None if ttl is None else float(ttl),
    )
