"""Scenario 2, processing, per body (no-op, one INCR, a 5 ms sleep).

Contenders: the raw loops of DESIGN.md (one thread; eight threads, each its own consumer),
flowd in this process (concurrency 8 and 32), ``flowd worker`` subprocesses (1 and 2
processes), rq SimpleWorker (burst), Dramatiq (1 process, 8 threads), Celery (threads
pool, 8). Every contender gets N jobs enqueued before its clock starts; in-process
contenders start the clock when they start, worker subprocesses at their start marker
(``process``), and the clock stops when the last job's effect is visible (``streams`` and
each adapter's completion check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench_bodies import BODIES

from benchmarks.compare.adapter_celery import celery_worker
from benchmarks.compare.adapter_dramatiq import dramatiq_worker
from benchmarks.compare.adapter_flowd import flowd_inprocess, flowd_worker
from benchmarks.compare.adapter_raw import raw_variant
from benchmarks.compare.adapter_rq import rq_worker
from benchmarks.compare.config import Config
from benchmarks.compare.results import Results
from benchmarks.compare.rounds import attempt, rotated
from benchmarks.compare.server import Context

#: The processing rows and bodies the targets name (--targets).
TARGET_PROCESSING = ("raw 1 thread", "flowd c8", "dramatiq 8 threads")
TARGET_BODIES = ("noop", "incr")


def processing_variants() -> list[tuple[str, str | None, Callable[..., Any], str | None]]:
    base = "raw 1 thread"
    return [
        (base, None, raw_variant(1), None),
        ("raw 8 threads", base, raw_variant(8), None),
        ("flowd c8", base, flowd_inprocess(8), None),
        ("flowd c32", base, flowd_inprocess(32), None),
        ("flowd worker c8", base, flowd_worker(8, 1), None),
        ("flowd worker c8 x2", base, flowd_worker(8, 2), None),
        ("flowd worker c32", base, flowd_worker(32, 1), None),
        ("flowd worker c32 x2", base, flowd_worker(32, 2), None),
        ("rq SimpleWorker", base, rq_worker, "rq"),
        ("dramatiq 8 threads", base, dramatiq_worker, "dramatiq"),
        ("celery threads 8", base, celery_worker, "celery"),
    ]


def run_processing(ctx: Context, cfg: Config, results: Results, repeat: int) -> None:
    variants = [v for v in processing_variants() if cfg.peers or v[3] is None]
    bodies = BODIES
    if cfg.targets:
        variants = [v for v in variants if v[0] in TARGET_PROCESSING]
        bodies = TARGET_BODIES
    for body in bodies:
        n = cfg.sleep_jobs if body == "sleep" else cfg.jobs
        for name, baseline, run, _peer in rotated(variants, repeat):
            attempt(
                results,
                "processing",
                body,
                name,
                "jobs/s",
                n,
                baseline,
                lambda run=run, body=body, n=n: run(ctx, body, n),
            )
